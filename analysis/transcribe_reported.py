"""Write ``results/reported/*.csv`` from the reported-number sections of the method specs.

The specs (``shared/specs``) carry the papers' tables as Markdown, transcribed from the
papers and the result images in the official repositories. This script turns those tables
into tidy rows once; the CSVs are committed and the analysis reads only them. Rerun it when
a spec's numbers change:

    python -m analysis.transcribe_reported [--specs DIR] [--out results/reported]
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Iterator
from pathlib import Path

from dllm_accel.paths import shared_dir

from .reported import ANY_TASK, COLUMNS, REPORTED_DIR, UNITS, setting_key

SPARSE_SPEC = "sparse-dllm-and-dyllm.md"
BASELINES_SPEC = "models-vanilla-dllmcache-fastdllm.md"

TASKS = {
    "mmlu": "mmlu",
    "arc-c": "arc_c",
    "piqa": "piqa",
    "gpqa": "gpqa",
    "gsm8k": "gsm8k",
    "math": "math",
    "humaneval": "humaneval",
    "mbpp": "mbpp",
    "mmlu-pro": "mmlu_pro",
    "bbh": "bbh",
    "avg": "avg",
}
METHODS = {
    "vanilla": "vanilla",
    "original": "vanilla",
    "llada": "vanilla",
    "dream": "vanilla",
    "dllm-cache": "dllm_cache",
    "dkv-cache": "dkv_cache",
    "fast-dllm": "fast_dllm",
    "sparse-dllm": "sparse_dllm",
    "dyllm": "dyllm",
    "fast-prefix": "fast_dllm_prefix",
    "fast-dual": "fast_dllm_dual",
    "+cache": "fast_dllm_prefix",
    "+parallel": "fast_dllm_parallel",
    "parallel": "fast_dllm_parallel",
    "+cache+parallel": "fast_dllm_prefix_parallel",
    "+prefixcache": "fast_dllm_prefix_parallel",
    "+dualcache": "fast_dllm_dual_parallel",
}
MODELS = {
    "llada-8b-instruct": "llada_8b_instruct",
    "llada-8b(-instruct)": "llada_8b_instruct",
    "llada instruct": "llada_8b_instruct",
    "llada base": "llada_8b_base",
    "llada-1.5": "llada_1_5",
    "dream-v0-7b-base": "dream_7b_base",
    "dream-v0-base-7b": "dream_7b_base",
    "dream base": "dream_7b_base",
    "dream-v0-7b-instruct": "dream_7b_instruct",
    "dream-7b(-instruct)": "dream_7b_instruct",
    "dream instruct": "dream_7b_instruct",
    "llada": "llada_8b_instruct",
    "dream": "dream_7b_instruct",
}
KILO = 1024  # "1k" on Sparse-dLLM's Fig. 5 axis is read as 1024 tokens (the paper does not say)

_NUMBER = r"-?\d+(?:\.\d+)?"
_RATIO = re.compile(rf"\(({_NUMBER})×\)")
_POINT = re.compile(rf"\(({_NUMBER}),\s*({_NUMBER})\)")


def lookup(table: dict[str, str], label: str) -> str:
    key = label.replace("*", "").strip().lower()
    if key not in table:
        raise KeyError(f"no canonical name for {label!r}; known: {sorted(table)}")
    return table[key]


def markdown_tables(text: str, anchor: str, count: int = 1) -> list[list[list[str]]]:
    """The first ``count`` Markdown tables after the line that starts with ``anchor``.

    Each table is a list of rows of stripped cells, header first, separator dropped.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(anchor)), None)
    if start is None:
        raise ValueError(f"no line starts with {anchor!r}")
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
            if len(tables) == count:
                break
        elif line.startswith("#") and tables:
            break
    if current and len(tables) < count:
        tables.append(current)
    if len(tables) < count:
        raise ValueError(f"expected {count} table(s) after {anchor!r}, found {len(tables)}")
    return tables


def value_and_ratio(cell: str) -> tuple[float | None, float | None]:
    """``'21.43 (2.3×)'`` -> (21.43, 2.3); ``'1.0×'`` -> (None, 1.0); ``'–'`` -> (None, None)."""
    ratio = _RATIO.search(cell)
    rest = _RATIO.sub("", cell).strip()
    if rest.endswith("×"):
        return None, float(rest[:-1])
    value = float(rest) if re.fullmatch(_NUMBER, rest) else None
    return value, float(ratio.group(1)) if ratio else None


def row(paper, table, model, method, task, metric, value, *, setting="", definition="", gpu="", note="") -> dict:
    return {
        "paper": paper,
        "table": table,
        "model": model,
        "method": method,
        "task": task,
        "setting": setting,
        "metric": metric,
        "value": "" if value is None else value,
        "unit": UNITS[metric],
        "throughput_definition": definition if metric in ("throughput", "speedup") else "",
        "gpu": gpu,
        "note": note,
    }


SPARSE_NOTES = {
    "mmlu": "OpenCompass mmlu_gen_79e572, 5-shot",
    "arc_c": "OpenCompass ARC_c_gen",
    "piqa": "OpenCompass piqa_gen",
    "gpqa": "GPQA diamond, 5-shot",
    "gsm8k": "OpenCompass GSM8K, 4-shot",
    "math": "OpenCompass MATH, 4-shot",
    "humaneval": "0-shot, gen 512, steps 512",
    "avg": "mean accuracy; speed and memory ratios as printed",
}


def sparse_dllm_tables(text: str) -> Iterator[dict]:
    anchors = {
        "1a": "### Table 1a",
        "1b": "### Table 1b",
        "2a": "### Table 2a",
        "2b": "### Table 2b",
    }
    metric_of = {"acc": ("accuracy", None), "tps": ("throughput", "speedup"), "mem": ("peak_memory", "memory_ratio")}
    for table, anchor in anchors.items():
        model = lookup(MODELS, re.sub(r"^.*— ", "", next(line for line in text.splitlines() if line.startswith(anchor))))
        header, *body = markdown_tables(text, anchor)[0]
        tasks = [lookup(TASKS, h) for h in header[1:]]
        for cells in body:
            label, kind = cells[0].replace("*", "").rsplit(" ", 1)
            method = lookup(METHODS, label)
            metric, ratio_metric = metric_of[kind.lower()]
            for task, cell in zip(tasks, cells[1:], strict=True):
                value, ratio = value_and_ratio(cell)
                note = SPARSE_NOTES[task] + ("" if method == "sparse_dllm" else "; baseline settings not published")
                common = dict(definition="all_positions", gpu="unstated (Fig. 5: RTX 4090 48GB)", note=note)
                if value is not None:
                    yield row("sparse_dllm", table, model, method, task, metric, value, **common)
                if ratio is not None:
                    yield row("sparse_dllm", table, model, method, task, ratio_metric or metric, ratio, **common)


def sparse_dllm_fig5(text: str) -> Iterator[dict]:
    header, *body = markdown_tables(text, "### Fig. 5")[0]
    lengths = [int(h.rstrip("k")) * KILO for h in header[1:]]
    for cells in body:
        family, kind, label = cells[0].split(" ", 2)
        metric = "throughput" if kind == "TPS" else "peak_memory"
        for length, cell in zip(lengths, cells[1:], strict=True):
            value, _ = value_and_ratio(cell)
            yield row(
                "sparse_dllm",
                "fig5",
                lookup(MODELS, family),
                lookup(METHODS, label),
                ANY_TASK,
                metric,
                value,
                setting=setting_key(seq_len=length),
                definition="all_positions",
                gpu="RTX 4090 48GB",
                note="read off the plot (±0.5); prompts not published: any prompt of the length; gen 256, steps 256, "
                "block 32, batch 1"
                + ("; OOM" if value is None else ""),
            )


DYLLM_BLOCKS = "block 8 (gsm8k), 16 (math), 32 (mbpp), 64/32 (mmlu_pro LLaDA/Dream)"


def dyllm_table(text: str) -> Iterator[dict]:
    for header, *body in markdown_tables(text, "## B.10 Reported numbers", count=2):
        model = lookup(MODELS, header[0])
        columns = []
        for label in header[1:]:
            name, _, tau = label.partition(" τ=")
            columns.append((lookup(METHODS, name), setting_key(threshold=float(tau)) if tau else ""))
        for cells in body:
            task = lookup(TASKS, cells[0])
            for (method, setting), cell in zip(columns, cells[1:], strict=True):
                accuracy, throughput, speedup = _triple(cell)
                note = "lm-eval, gen 256, steps 256, " + DYLLM_BLOCKS
                if model == "llada_8b_instruct" and task == "mbpp":
                    note += "; throughput likely the 2 tokens/step point (spec B.10 inconsistency)"
                common = dict(setting=setting, definition="before_eos", gpu="unstated", note=note)
                yield row("dyllm", "result_table", model, method, task, "accuracy", accuracy, **common)
                yield row("dyllm", "result_table", model, method, task, "throughput", throughput, **common)
                if speedup is not None:
                    yield row("dyllm", "result_table", model, method, task, "speedup", speedup, **common)


def dyllm_curves(text: str) -> Iterator[dict]:
    header, *body = markdown_tables(text, "### Accuracy against throughput with more tokens per step")[0]
    methods = [lookup(METHODS, h) for h in header[1:]]
    for cells in body:
        family, task = cells[0].split("-", 1)
        model = lookup(MODELS, family)
        tau = 0.99 if model.startswith("llada") else 0.995
        for method, cell in zip(methods, cells[1:], strict=True):
            points = _POINT.findall(cell)
            for per_step, (throughput, accuracy) in zip((1, 2, 4), points, strict=True):
                setting = setting_key(tokens_per_step=per_step, threshold=tau if method == "dyllm" else None)
                common = dict(
                    setting=setting,
                    definition="before_eos",
                    gpu="unstated",
                    note="read off the plot (±3 tok/s, ±0.5 acc); tokens per step 1/2/4 inferred (steps 256/128/64)",
                )
                yield row("dyllm", "curves", model, method, lookup(TASKS, task), "throughput", float(throughput), **common)
                yield row("dyllm", "curves", model, method, lookup(TASKS, task), "accuracy", float(accuracy), **common)


def _triple(cell: str) -> tuple[float, float, float | None]:
    """``'77.79 / 11.47 (1.00×)'`` -> (77.79, 11.47, 1.0); the ratio may be absent."""
    accuracy, rest = (part.strip() for part in cell.split("/"))
    throughput, ratio = value_and_ratio(rest)
    return float(accuracy), throughput, ratio


FAST_NOTE = "lm-eval, block 32, parallel threshold 0.9, batch 1"
# Fast-dLLM counts LLaDA answer tokens after `until` minus EOS, and Dream generated tokens minus EOS
FAST_COUNT = {"llada_8b_instruct": "answer", "dream_7b_base": "non_eos"}


def fast_dllm_tables(text: str) -> Iterator[dict]:
    for table, anchor in (("1", "**Table 1: LLaDA-8B-Instruct**"), ("2", "**Table 2: Dream-v0-Base-7B:**")):
        model = "llada_8b_instruct" if table == "1" else "dream_7b_base"
        header, *body = markdown_tables(text, anchor)[0]
        methods = [lookup(METHODS, h) for h in header[2:]]
        task = None
        for cells in body:
            task = lookup(TASKS, cells[0].split(" ")[0]) if cells[0] else task
            shots = re.search(r"(\d+)-shot", cells[0])
            note = FAST_NOTE + (f", {shots.group(1)}-shot" if shots else "")
            for method, cell in zip(methods, cells[2:], strict=True):
                setting = setting_key(gen_length=int(cells[1]))
                yield from _fast_cell(table, model, method, task, setting, cell, note, FAST_COUNT[model])
    header, *body = markdown_tables(text, "**Tables 3 and 4: LLaDA GSM8K**")[0]
    methods = [lookup(METHODS, h) for h in header[1:]]
    for cells in body:
        shots, length = re.fullmatch(r"(\d+)-shot, len (\d+)", cells[0]).groups()
        setting = setting_key(gen_length=int(length), shots=int(shots))
        for method, cell in zip(methods, cells[1:], strict=True):
            yield from _fast_cell("3-4", "llada_8b_instruct", method, "gsm8k", setting, cell, FAST_NOTE, "answer")


def _fast_cell(
    table: str, model: str, method: str, task: str, setting: str, cell: str, note: str, definition: str
) -> Iterator[dict]:
    accuracy, throughput, speedup = _triple(cell)
    common = dict(setting=setting, definition=definition, gpu="A100 80GB", note=note)
    yield row("fast_dllm", table, model, method, task, "accuracy", accuracy, **common)
    yield row("fast_dllm", table, model, method, task, "throughput", throughput, **common)
    if speedup is not None:
        yield row("fast_dllm", table, model, method, task, "speedup", speedup, **common)


def fast_dllm_fig5(text: str) -> Iterator[dict]:
    line = next(line for line in text.splitlines() if line.startswith("**Figure 5 (GSM8K 5-shot):**"))
    taus_text, counts_text = re.search(r"τ = ([\d., and]+) is ([\d., and]+)\.", line).groups()
    taus = [float(x) for x in re.findall(_NUMBER, taus_text)]
    counts = [float(x) for x in re.findall(_NUMBER, counts_text)]
    for tau, count in zip(taus, counts, strict=True):
        yield row(
            "fast_dllm",
            "fig5",
            "llada_8b_instruct",
            "fast_dllm_parallel",
            "gsm8k",
            "tokens_per_step",
            count,
            setting=setting_key(threshold=tau),
            gpu="A100 80GB",
            note="average tokens per step, GSM8K 5-shot",
        )


def dllm_cache_radar(text: str) -> Iterator[dict]:
    header, *body = markdown_tables(text, "### 5.9 Reported numbers (dLLM-Cache)")[0]
    for model_label, speedups in body:
        for part in speedups.split(","):
            task, value = part.strip().rsplit(" ", 1)
            yield row(
                "dllm_cache",
                "radar",
                lookup(MODELS, model_label),
                "dllm_cache",
                lookup(TASKS, task),
                "speedup",
                float(value),
                definition="all_positions",
                gpu="unstated",
                note="README radar figure; accuracy reported as roughly unchanged; settings of scripts/run_*.sh",
            )


def transcribe(specs: Path) -> dict[str, list[dict]]:
    """Rows per output file, from the two method specs in ``specs``."""
    sparse = (specs / SPARSE_SPEC).read_text(encoding="utf-8")
    baselines = (specs / BASELINES_SPEC).read_text(encoding="utf-8")
    return {
        "sparse_dllm.csv": [*sparse_dllm_tables(sparse), *sparse_dllm_fig5(sparse)],
        "dyllm.csv": [*dyllm_table(sparse), *dyllm_curves(sparse)],
        "fast_dllm.csv": [*fast_dllm_tables(baselines), *fast_dllm_fig5(baselines)],
        "dllm_cache.csv": list(dllm_cache_radar(baselines)),
    }


def write(rows: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, records in rows.items():
        with open(out / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, default=shared_dir() / "specs")
    parser.add_argument("--out", type=Path, default=REPORTED_DIR)
    args = parser.parse_args(argv)
    rows = transcribe(args.specs)
    write(rows, args.out)
    for name, records in rows.items():
        print(f"{args.out / name}: {len(records)} rows")


if __name__ == "__main__":
    main()
