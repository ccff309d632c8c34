"""Read the results store (``dllm_accel.results`` run directories) into pandas.

``load_runs`` gives one row per run directory, ``load_samples`` one row per sample. Every
throughput is recomputed from the samples' raw meter counts with ``dllm_accel.measure``'s
own ``summarize``, so a subset (one context length, one depth) is measured exactly as a
whole run is. A run whose samples are missing is still listed, with empty numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dllm_accel.generation.settings import block_size
from dllm_accel.measure import TOKEN_COUNTS, summarize
from dllm_accel.results import CONFIG, SUMMARY, read_samples

from .catalog import method_label, task_column

RUN_COLUMNS = [
    "run_dir",
    "experiment",
    "model",
    "method",
    "label",
    "task",
    "task_config",
    "shots",
    "seed",
    "batch_size",
    "gen_length",
    "steps",
    "block_length",
    "threshold",
    "tokens_per_step",
    "rope_scaling",
    "samples",
    "failed",
    "complete",
    "accuracy",
    "accuracy_se",
    "accuracy_metric",
    *(f"throughput_{k}" for k in TOKEN_COUNTS),
    "peak_memory_gib",
    "nfe_per_token",
    "gpu",
]


def run_dirs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` holding a run's ``config.yaml``, sorted."""
    return sorted(p.parent for p in Path(root).rglob(CONFIG))


def sampler_settings(config: dict) -> dict:
    """The sampler settings a run used: the task's, then the method's, then the run's last word."""
    merged: dict = {}
    for layer in (config.get("task", {}).get("sampler"), config.get("method", {}).get("sampler"), config.get("sampler")):
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    return merged


def run_identity(config: dict) -> dict:
    """The columns that name a run and its settings, from its resolved config."""
    method = config.get("method", {})
    options = method.get("options") or {}
    sampler = sampler_settings(config)
    gen_length = sampler.get("gen_length") or sampler.get("max_new_tokens")
    steps = sampler.get("steps") or gen_length
    threshold = options.get("threshold", sampler.get("threshold"))
    fixed_count = sampler.get("threshold") is None and sampler.get("factor") is None
    return {
        "experiment": config.get("experiment_name", "adhoc"),
        "model": config.get("model", {}).get("name"),
        "method": method.get("name"),
        "label": method_label(method.get("name"), options, sampler),
        "task": task_column(config.get("task", {}).get("name")),
        "task_config": config.get("task", {}).get("name"),
        "shots": config.get("task", {}).get("num_fewshot"),
        "seed": config.get("seed"),
        "batch_size": config.get("batch_size", 1),
        "gen_length": gen_length,
        "steps": steps,
        "block_length": block_size(sampler.get("block_length"), gen_length) if gen_length else sampler.get("block_length"),
        "threshold": threshold,
        "tokens_per_step": gen_length / steps if fixed_count and gen_length and steps else None,
        "rope_scaling": config.get("model", {}).get("rope_scaling", 1.0),
        **{f"opt_{k}": v for k, v in sorted(options.items()) if isinstance(v, (int, float, str, bool))},
    }


BOOTSTRAP_DRAWS = 1000


def bootstrap_rse(numerators: list[float], denominators: list[float], draws: int = BOOTSTRAP_DRAWS) -> float | None:
    """Relative standard error of sum(numerators) / sum(denominators), resampling the units (batches) with a
    seeded bootstrap; None below two units or with a zero total."""
    if len(numerators) < 2:
        return None
    top, bottom = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if not top.sum() or not bottom.sum():
        return None
    picks = np.random.default_rng(0).integers(0, len(top), (draws, len(top)))
    ratios = top[picks].sum(axis=1) / bottom[picks].sum(axis=1)
    return float(ratios.std(ddof=1) / (top.sum() / bottom.sum()))


def _batches(records: list[dict], warm_only: bool = True) -> list[list[dict]]:
    """Records grouped by generate call; the warm calls when there are any, as ``measured`` counts them."""
    chosen = ([r for r in records if not r["timing"]["first_call"]] or records) if warm_only else records
    groups: dict[tuple, list[dict]] = {}
    for r in chosen:
        groups.setdefault((r["process"], r["timing"]["batch_id"]), []).append(r)
    return list(groups.values())


def throughput_rse(records: list[dict], count: str, draws: int = BOOTSTRAP_DRAWS) -> float | None:
    """Relative standard error of tokens/s (total tokens over total time of the batches ``measured``
    uses), by a seeded bootstrap over batches; None below two batches."""
    batches = _batches(records)
    tokens = [sum(r["tokens"][count] for r in batch) for batch in batches]
    return bootstrap_rse(tokens, [float(batch[0]["timing"]["wall_s"]) for batch in batches], draws)


def tokens_per_step_rse(records: list[dict], draws: int = BOOTSTRAP_DRAWS) -> float | None:
    """Relative standard error of tokens per step (generated positions over forward evaluations, the inverse
    of ``nfe_per_token``), by a seeded bootstrap over the batches ``measured`` uses."""
    batches = _batches(records)
    positions = [sum(r["tokens"]["all_positions"] for r in batch) for batch in batches]
    return bootstrap_rse(positions, [sum(r["nfe"] for r in batch) for batch in batches], draws)


def peak_memory_rse(records: list[dict], draws: int = BOOTSTRAP_DRAWS) -> float | None:
    """Relative standard error of the mean peak memory over generate calls (every call, as ``summarize``
    averages them), by a seeded bootstrap over calls; None where no call had allocator statistics."""
    peaks = [batch[0]["timing"].get("peak_allocated_bytes") for batch in _batches(records, warm_only=False)]
    peaks = [float(p) for p in peaks if p is not None]
    return bootstrap_rse(peaks, [1.0] * len(peaks), draws)


def measured(records: list[dict]) -> dict:
    """Throughput under every token count (warm batches when there are any), memory and NFE/token, with
    bootstrap relative standard errors (``_rse``) of throughput, peak memory and tokens per step."""
    ok = [r for r in records if r.get("status") == "ok" and "timing" in r]
    if not ok:
        return {}
    summary = summarize(ok)
    rates = summary["warm"] if summary["warm"]["samples"] else summary["all"]
    out = {f"throughput_{k}": v for k, v in rates["tokens_per_s"].items()}
    out.update({f"throughput_{k}_rse": throughput_rse(ok, k) for k in TOKEN_COUNTS})
    out["peak_memory_gib"] = summary["peak_memory_gib"]["mean"]
    out["peak_memory_gib_rse"] = peak_memory_rse(ok)
    out["nfe_per_token"] = rates["nfe_per_token"]
    out["tokens_per_step_rse"] = tokens_per_step_rse(ok)
    out.update({f"stat_{k}": v for k, v in summary["method_stats"].items()})
    return {k: math.nan if v is None else float(v) for k, v in out.items()}  # unmeasured (no CUDA): NaN


def primary_score(scores: dict | None, metric: str | None) -> float | None:
    """A sample's score under the run's accuracy metric (the first numeric score if unnamed)."""
    if not scores:
        return None
    if metric is not None and metric in scores:
        return float(scores[metric])
    numeric = [v for v in scores.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(numeric[0]) if numeric else None


def accuracy_of(summary: dict | None, records: list[dict]) -> tuple[float | None, str | None]:
    """Accuracy in percent and the metric it is, from the summary, else the samples' mean score."""
    block = (summary or {}).get("accuracy")
    if isinstance(block, dict) and block.get("value") is not None:
        return 100 * float(block["value"]), block.get("metric")
    if isinstance(block, (int, float)):
        return 100 * float(block), None
    metric = (summary or {}).get("accuracy", {}).get("metric") if isinstance((summary or {}).get("accuracy"), dict) else None
    scores = [primary_score(r.get("scores"), metric) for r in records if r.get("status") == "ok"]
    scores = [s for s in scores if s is not None]
    return (100 * sum(scores) / len(scores), None) if scores else (None, None)


def accuracy_se(summary: dict | None, records: list[dict]) -> float | None:
    """Standard error of the accuracy in points: the sample standard deviation of the per-sample scores
    over sqrt(n), lm-eval's ``mean_stderr`` (None below two scored samples)."""
    block = (summary or {}).get("accuracy")
    metric = block.get("metric") if isinstance(block, dict) else None
    scores = [primary_score(r.get("scores"), metric) for r in records if r.get("status") == "ok"]
    scores = [s for s in scores if s is not None]
    if len(scores) < 2:
        return None
    mean = sum(scores) / len(scores)
    variance = sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)
    return 100 * math.sqrt(variance / len(scores))


def read_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / CONFIG).read_text()) or {}


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per run directory under ``root``: ``RUN_COLUMNS``, then ``opt_*`` (method options) and
    ``stat_*`` (the method's own statistics, e.g. its recompute fraction)."""
    rows = []
    for run_dir in run_dirs(root):
        records = read_samples(run_dir)
        summary_path = run_dir / SUMMARY
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        accuracy, metric = accuracy_of(summary, records)
        environment = (summary or {}).get("environment") or {}
        rows.append(
            {
                "run_dir": str(run_dir),
                **run_identity(read_config(run_dir)),
                "samples": sum(r.get("status") == "ok" for r in records),
                "failed": sum(r.get("status") not in (None, "ok") for r in records),
                "complete": summary is not None,
                "accuracy": accuracy,
                "accuracy_se": accuracy_se(summary, records),
                "accuracy_metric": metric,
                "gpu": environment.get("gpu") or environment.get("device"),
                **measured(records),
            }
        )
    frame = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    extra = sorted(c for c in frame.columns if c not in RUN_COLUMNS)
    return frame[RUN_COLUMNS + extra]


SAMPLE_FIELDS = ("target_len", "depth", "prompt_tokens")
SAMPLE_COLUMNS = ["run_dir", "model", "label", "task", "rope_scaling", "doc_id", "status", "score", *SAMPLE_FIELDS,
                  "record"]


def load_samples(root: str | Path) -> pd.DataFrame:
    """One row per sample: the run's identity, status, score (the task's primary metric, %), and
    the long-context coordinates the runner keeps in ``doc_meta``.

    ``record`` keeps the raw record so a subset can be measured with :func:`measured`.
    """
    rows = []
    for run_dir in run_dirs(root):
        config = read_config(run_dir)
        identity = run_identity(config)
        metric = config.get("task", {}).get("primary_metric")
        generated = generated_docs(run_dir)
        for record in read_samples(run_dir):
            doc = record.get("doc_meta") or _nth(generated, record.get("doc_id"))
            score = primary_score(record.get("scores"), metric)
            rows.append(
                {
                    "run_dir": str(run_dir),
                    **identity,
                    "doc_id": record.get("doc_id"),
                    "status": record.get("status"),
                    "score": None if score is None else 100 * score,
                    **{f: record.get(f, doc.get(f)) for f in SAMPLE_FIELDS},
                    "record": record,
                }
            )
    frame = pd.DataFrame(rows)
    return frame if rows else pd.DataFrame(columns=SAMPLE_COLUMNS)


def generated_docs(run_dir: Path) -> list[dict]:
    """The long-context documents the runner generated for this run (``lm_eval_tasks/<task>.jsonl``),
    in document order: where ``target_len`` and ``depth`` come from when a record has no ``doc_meta``."""
    for path in sorted((run_dir / "lm_eval_tasks").glob("*.jsonl")):
        docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if docs and "target_len" in docs[0]:
            return [{k: d.get(k) for k in SAMPLE_FIELDS} for d in docs]
    return []


def _nth(docs: list[dict], index: object) -> dict:
    return docs[index] if isinstance(index, int) and 0 <= index < len(docs) else {}


def measure_groups(samples: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """``measured`` per group of samples (e.g. per run and context length)."""
    rows = []
    for key, group in samples.groupby(by, dropna=False, sort=True):
        values = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, values, strict=True)), **measured(list(group["record"]))})
    return pd.DataFrame(rows)
