"""Accuracy vs speed of every method on the tiny trained model (``checkpoints/tiny-llada``), on CPU.

    .venv/bin/python experiments/eval_tiny.py                       # presets x tasks + the passkey sweeps
    .venv/bin/python experiments/eval_tiny.py --samples 10 --no-sweeps --out /tmp/tiny
    .venv/bin/python experiments/eval_tiny.py --only dkv_cache --out results/tiny/caches

Every method preset in ``conf/method`` runs at its default settings on held-out samples of each
task (the preset's sampler overrides, in the task's generation window); the sweeps vary one
knob per method on the passkey task at two lengths and on the other tasks. Per row: exact-match accuracy, generated
positions per second (every position, EOS filler included, as Sparse-dLLM and dLLM-Cache count),
NFE per generated position, and peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on CPU,
which keeps no allocator statistics, the peak bytes of tensors alive during one generate call,
tracked op by op (weights and the prompt excluded; a kernel's internal scratch is not seen).

Writes ``<out>/tiny_eval.json`` (every row and the environment), ``tiny_eval.csv`` and
``tiny_eval.md``; ``--margins`` also writes the accuracy drop of each preset against vanilla on
the fixed CI sample, which tests/test_tiny_checkpoint.py reads.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dllm_accel.measure import LiveTensorPeak  # noqa: E402
from dllm_accel.methods import available_methods  # noqa: E402
from dllm_accel.models import load_model, load_tokenizer  # noqa: E402
from dllm_accel.train import TASKS, evaluate_samples, held_out_samples  # noqa: E402
from dllm_accel.train.evaluate import preset_settings, runnable_presets  # noqa: E402

CHECKPOINT = REPO / "checkpoints" / "tiny-llada"
# (preset, knob, values): one knob at a time, the preset's other settings kept (the knob must exist).
SWEEPS: list[tuple[str, str, list[Any]]] = [
    ("sparse_dllm", "keep_ratio", [0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
    ("dyllm", "threshold", [0.9, 0.99, 0.995]),
    ("fast_dllm", "threshold", [0.7, 0.8, 0.9, 0.95]),
    ("fast_dllm_dual", "threshold", [0.7, 0.9]),
    ("dllm_cache", "gen_interval_steps", [2, 7, 16]),
    ("dllm_cache", "prompt_interval_steps", [2, 10, 100]),
    ("dkv_cache", "refresh_interval", [1, 2, 4, 8, 16]),
    ("dkv_cache_greedy", "refresh_interval", [1, 2, 4, 8]),
    ("dkv_cache_greedy_window", "window_size", [1, 2, 4, 8]),
    # registered decoding rules: a knob of the rule's options is ``policy_options.<name>``
    ("wino", "policy_options.threshold", [0.3, 0.5, 0.6, 0.7, 0.9]),
    ("frechet", "policy_options.margin", [-0.5, 0.0, 0.25, 0.5]),
    ("frechet_prefix", "policy_options.margin", [0.0, 0.25]),
    ("klass", "policy_options.conf_threshold", [0.3, 0.6, 0.9]),
    ("klass", "policy_options.kl_threshold", [0.005, 0.015, 0.05, 0.2]),
    ("pc_sampler", "policy_options.lambd", [0.0, 0.25, 1.0]),
    ("eb_sampler", "policy_options.gamma", [0.001, 0.01, 0.1, 1.0]),
    ("d2_cache", "current_k", [2, 8, 32]),
    # Streaming-dLLM: the suffix window (0: the tail alone) and the threshold's slope alpha (0: fixed tau)
    ("streaming_dllm", "window_size", [0, 2, 8, 32]),
    ("streaming_dllm", "policy_options.alpha", [0.0, 0.3, 0.6]),
]


def with_knob(settings: dict, knob: str, value: Any) -> dict:
    """The settings with one knob changed; ``policy_options.<name>`` changes one option of the rule."""
    if knob.startswith("policy_options."):
        options = {**(settings.get("policy_options") or {}), knob.split(".", 1)[1]: value}
        return {**settings, "policy_options": options}
    return {**settings, knob: value}


def peak_memory_bytes(model, tokenizer, task_name: str, sample, method: str, settings: dict) -> int:
    """One extra generate call of the first sample, under the GPU's counters or the CPU tracker."""
    task = TASKS[task_name]
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
        base = torch.cuda.memory_allocated(model.device)
        evaluate_samples(model, tokenizer, task, [sample], method=method, **settings)
        return torch.cuda.max_memory_allocated(model.device) - base
    with LiveTensorPeak() as tracker:
        evaluate_samples(model, tokenizer, task, [sample], method=method, **settings)
    return tracker.peak


def run_row(
    model, tokenizer, preset: str, method: str, task_name: str, length, samples, settings, knob=None, section="presets"
) -> dict:
    row: dict[str, Any] = {"section": section, "preset": preset, "method": method, "task": task_name}
    row.update(length=length, knob=knob)
    row["settings"] = settings
    try:
        result = evaluate_samples(model, tokenizer, TASKS[task_name], samples, method=method, **settings)
        peak = peak_memory_bytes(model, tokenizer, task_name, samples[0], method, settings)
    except Exception as err:  # a method that cannot run this task is a row with its error, not a crash
        row.update(status="error", error=f"{type(err).__name__}: {err}")
        print(f"{preset:20s} {task_name:10s} {str(length):5s} FAILED {row['error']}", flush=True)
        return row
    row.update(
        status="ok",
        samples=result.total,
        accuracy=result.accuracy,
        positions_per_s=result.positions_per_second,
        median_positions_per_s=result.gen_positions / result.total / statistics.median(result.walls),
        nfe_per_position=result.nfe_per_position,
        seconds=result.seconds,
        peak_memory_bytes=peak,
        correct=[int(hit) for hit in result.hits],
    )
    print(
        f"{preset:20s} {task_name:10s} {str(length):5s} {knob or '':24s} acc={result.accuracy:6.1%} "
        f"{row['median_positions_per_s']:8.1f} pos/s nfe/pos={result.nfe_per_position:.3f} peak={peak / 2**20:7.2f} MiB",
        flush=True,
    )
    return row


def evaluate_all(model, tokenizer, args) -> list[dict]:
    presets = runnable_presets(model.spec)
    if args.only:
        presets = [e for e in presets if e["preset"] in args.only or e["preset"] == "vanilla"]
    rows = []
    for name in TASKS:
        for length in args.passkey_lengths[:1] if name == "passkey" else [None]:
            samples = held_out_samples(name, args.samples, length)
            for entry in presets:
                settings = preset_settings(entry, TASKS[name])
                rows.append(run_row(model, tokenizer, entry["preset"], entry["name"], name, length, samples, settings))
    if args.no_sweeps:
        return rows
    by_preset = {e["preset"]: e for e in presets}
    targets = [("passkey", length) for length in args.passkey_lengths] + [(name, None) for name in args.sweep_tasks]
    for name, length in targets:
        samples = held_out_samples(name, args.samples, length)
        vanilla = preset_settings({"name": "vanilla"}, TASKS[name])
        rows.append(run_row(model, tokenizer, "vanilla", "vanilla", name, length, samples, vanilla, section="sweeps"))
        for preset, knob, values in SWEEPS:
            if args.only and preset not in args.only:
                continue
            if preset not in by_preset:
                print(f"sweep {preset}: no such preset among {sorted(by_preset)}; skipped", flush=True)
                continue
            entry = by_preset[preset]
            for value in values:
                settings = with_knob(preset_settings(entry, TASKS[name]), knob, value)
                row = run_row(
                    model,
                    tokenizer,
                    preset,
                    entry["name"],
                    name,
                    length,
                    samples,
                    settings,
                    f"{knob}={value}",
                    "sweeps",
                )
                rows.append(row)
    return rows


def write_tables(rows: list[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny_eval.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    columns = ["section", "preset", "method", "knob", "task", "length", "status", "samples", "accuracy"]
    columns += [
        "positions_per_s",
        "median_positions_per_s",
        "nfe_per_position",
        "peak_memory_bytes",
        "seconds",
        "error",
    ]
    with open(out / "tiny_eval.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"Tiny LLaDA ({meta['checkpoint']}), {meta['samples']} held-out samples per row, {meta['device']},"
        f" torch {meta['torch']}, {meta['threads']} threads, {meta['date']}.",
        "positions/s: every generated position (EOS filler included) over the median per-sample wall time;"
        " speed-up: against vanilla on the same task and length; peak: see experiments/eval_tiny.py.",
    ]
    passkey = _passkey_by_length([r for r in rows if r["section"] == "sweeps" and r["task"] == "passkey"])
    if passkey:
        lines += ["", "### Passkey at two lengths (the README's table)", "", *passkey]
    for section, title in (("presets", "Every preset at its defaults"), ("sweeps", "Sweeps: one knob per method")):
        chosen = [r for r in rows if r["section"] == section]
        if chosen:
            lines += ["", f"### {title}", "", *_markdown_table(chosen)]
    (out / "tiny_eval.md").write_text("\n".join(lines) + "\n")


def _passkey_by_length(rows: list[dict]) -> list[str]:
    """One line per method setting: accuracy and speed-up against vanilla at each passkey length."""
    lengths = sorted({r["length"] for r in rows})
    if len(lengths) < 2:
        return []
    settings = list(dict.fromkeys((r["preset"], r["knob"]) for r in rows))
    cell = {(r["preset"], r["knob"], r["length"]): r for r in rows if r["status"] == "ok"}
    head = " | ".join(f"accuracy @{n} | speed-up @{n}" for n in lengths)
    lines = [f"| preset | setting | {head} | NFE/position |", "|---|---|" + "---|---|" * len(lengths) + "---|"]
    for preset, knob in settings:
        cells = []
        for n in lengths:
            row, base = cell.get((preset, knob, n)), cell.get(("vanilla", None, n))
            if row is None or base is None:
                cells += ["error", "-"]
                continue
            cells += [f"{row['accuracy']:.0%}", f"{row['median_positions_per_s'] / base['median_positions_per_s']:.2f}x"]
        nfe = cell.get((preset, knob, lengths[0]))
        lines.append(
            f"| {preset} | {knob or 'default'} | {' | '.join(cells)} | {nfe['nfe_per_position']:.3f} |"
            if nfe
            else f"| {preset} | {knob or 'default'} | {' | '.join(cells)} | - |"
        )
    return lines


def _markdown_table(rows: list[dict]) -> list[str]:
    vanilla = {(r["task"], r["length"]): r for r in rows if r["preset"] == "vanilla" and r["status"] == "ok"}
    lines = [
        "| preset | setting | task | length | accuracy | positions/s | speed-up | NFE/position | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        length = r["length"] or "-"
        if r["status"] != "ok":
            lines.append(
                f"| {r['preset']} | {r['knob'] or 'default'} | {r['task']} | {length} | error: {r['error'][:80]} |||||"
            )
            continue
        base = vanilla.get((r["task"], r["length"]))
        speedup = r["median_positions_per_s"] / base["median_positions_per_s"] if base else float("nan")
        lines.append(
            f"| {r['preset']} | {r['knob'] or 'default'} | {r['task']} | {length} | {r['accuracy']:.0%} |"
            f" {r['median_positions_per_s']:.0f} | {speedup:.2f}x | {r['nfe_per_position']:.3f} |"
            f" {r['peak_memory_bytes'] / 2**20:.2f} |"
        )
    return lines


def measure_margins(model, tokenizer, ci_samples: int, out: Path) -> None:
    """Each preset's accuracy on the fixed CI sample (tests/test_tiny_checkpoint.py) next to vanilla's.

    Measured on one thread, as the test runs, so that reductions split the same way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    table: dict[str, dict[str, float]] = {}
    for entry in runnable_presets(model.spec):
        table[entry["preset"]] = {}
        for name in TASKS:
            samples = held_out_samples(name, ci_samples)
            result = evaluate_samples(
                model, tokenizer, TASKS[name], samples, method=entry["name"], **preset_settings(entry, TASKS[name])
            )
            table[entry["preset"]][name] = result.accuracy
        print(entry["preset"], table[entry["preset"]], flush=True)
    torch.set_num_threads(threads)
    (out / "tiny_ci_accuracy.json").write_text(
        json.dumps({"samples_per_task": ci_samples, "accuracy": table}, indent=1) + "\n"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tiny")
    parser.add_argument("--samples", type=int, default=50, help="held-out samples per task and row")
    parser.add_argument("--passkey-lengths", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--no-sweeps", action="store_true", help="only the presets at their defaults")
    parser.add_argument(
        "--sweep-tasks", nargs="*", default=["copy", "arithmetic"], help="tasks swept besides passkey at both lengths"
    )
    parser.add_argument(
        "--margins", type=int, default=0, metavar="N", help="also record per-preset accuracy on N CI samples"
    )
    parser.add_argument("--only", nargs="*", default=[], help="only these presets (and vanilla) and their sweeps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, dtype=torch.float32, device=args.device)
    tokenizer = load_tokenizer(args.checkpoint)
    warm = held_out_samples("copy", 1)
    evaluate_samples(model, tokenizer, TASKS["copy"], warm)  # warm-up, not timed
    meta = {
        "checkpoint": str(
            args.checkpoint.relative_to(REPO) if args.checkpoint.is_relative_to(REPO) else args.checkpoint
        ),
        "samples": args.samples,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "methods": available_methods(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if args.margins:
        measure_margins(model, tokenizer, args.margins, args.out)
    rows = evaluate_all(model, tokenizer, args)
    write_tables(rows, args.out, meta)


if __name__ == "__main__":
    main()
