"""The one-line-per-run table printed after a run, and after a sweep for all its points.

Each row is named by its sweep point (``sparse_dllm keep_ratio=0.25``) and, where the sweep has
a vanilla point for the same model, task and shared settings, carries the speed-up against it.
Every job of a sweep leaves its summary in its Hydra job folder, so the table at the end of a
sweep is the same whether the points ran in this process or in submitit/SLURM jobs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

HEADER = (
    f"{'model':<20} {'point':<40} {'task':<18} {'accuracy':>9} {'tok/s':>9} {'speed-up':>8} "
    f"{'NFE/tok':>8} {'peak GiB':>9}"
)
JOB_SUMMARY = "summary.json"  # inside each Hydra job's output folder
log = logging.getLogger(__name__)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def point_label(summary: dict) -> str:
    return summary.get("point") or summary.get("preset") or summary["method"]


def tokens_per_s(summary: dict) -> float | None:
    return summary["measurement"]["all"]["tokens_per_s"]["all_positions"]


def vanilla_of(summaries: list[dict]) -> list[int | None]:
    """Per point, the index of the vanilla point of the same model and task whose overrides it shares."""
    out: list[int | None] = []
    for summary in summaries:
        mine = summary.get("overrides") or {}
        base = [
            i
            for i, s in enumerate(summaries)
            if s.get("preset", s["method"]) == "vanilla"
            and (s["model"], s["task"]) == (summary["model"], summary["task"])
            and all(mine.get(k) == v for k, v in (s.get("overrides") or {}).items())
        ]
        out.append(base[0] if base else None)
    return out


def speedups(summaries: list[dict]) -> list[float | None]:
    """Tokens/s over the vanilla point's (``vanilla_of``)."""
    out = []
    for summary, base in zip(summaries, vanilla_of(summaries), strict=True):
        ours, theirs = tokens_per_s(summary), tokens_per_s(summaries[base]) if base is not None else None
        out.append(ours / theirs if ours is not None and theirs else None)
    return out


def common_settings(summaries: list[dict]) -> dict[str, str]:
    """Overrides every point of a sweep shares: they tell no two rows apart, so the table states them once."""
    if len(summaries) < 2:
        return {}
    shared = dict((summaries[0].get("overrides") or {}).items())
    for summary in summaries[1:]:
        mine = summary.get("overrides") or {}
        shared = {k: v for k, v in shared.items() if mine.get(k) == v}
    return shared


def _without(label: str, shared: dict[str, str]) -> str:
    return " ".join(part for part in label.split(" ") if part.split("=", 1)[0] not in shared or "=" not in part)


def summary_row(summary: dict, speedup: float | None = None, shared: dict[str, str] | None = None) -> str:
    """Accuracy, tokens/s over all generated positions, speed-up, NFE per token and peak memory of one
    run (allocated on a GPU; on CPU the process's peak resident memory, marked ``r``)."""
    rates = summary["measurement"]["all"]
    memory = summary["measurement"]["peak_memory_gib"]
    peak = _fmt(memory["max"], ".2f")
    if memory["max"] is None and memory.get("rss_max") is not None:
        peak = _fmt(memory["rss_max"], ".2f") + "r"
    speed = "-" if speedup is None else f"{speedup:.2f}x"
    return (
        f"{summary['model']:<20} {_without(point_label(summary), shared or {}):<40} {summary['task']:<18} "
        f"{_fmt(summary['accuracy']['value']):>9} {_fmt(rates['tokens_per_s']['all_positions'], '.2f'):>9} "
        f"{speed:>8} {_fmt(rates['nfe_per_token']):>8} {peak:>9}"
    )


def summary_table(summaries: list[dict]) -> str:
    shared = common_settings(summaries)
    rows = [
        summary_row(s, x, shared) + f"  {s['run_dir']}" for s, x in zip(summaries, speedups(summaries), strict=True)
    ]
    common = ["every point: " + " ".join(f"{k}={v}" for k, v in shared.items())] if shared else []
    return "\n".join([*common, HEADER + "  results", *rows, *table_notes(summaries)])


def table_notes(summaries: list[dict]) -> list[str]:
    """What the sweep table's speed and CPU memory columns are, and where the per-method figures come from."""
    notes = [
        "tok/s and speed-up: one pass over each point's samples, the points timed one after another (a machine "
        "whose speed drifts moves them); `python -m dllm_accel.retime <sweep dir>` re-times every point interleaved"
    ]
    if any(s["measurement"]["peak_memory_gib"].get("rss_max") is not None for s in summaries):
        notes.append(
            "r: the process's peak resident memory while the point ran (CPU keeps no allocator statistics): "
            "weights, libraries and earlier points included, not the method's own; retime gives each method's "
            "live tensor bytes"
        )
    return notes


def write_job_summary(folder: str | Path, summary: dict) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(Path(folder) / JOB_SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")


def sweep_summaries(sweep_dir: str | Path) -> list[dict]:
    """Every job's summary in job order (``<sweep dir>/<job num>/summary.json``)."""
    paths = [p for p in Path(sweep_dir).glob(f"*/{JOB_SUMMARY}") if p.parent.name.isdigit()]
    return [json.loads(p.read_text()) for p in sorted(paths, key=lambda p: int(p.parent.name))]


class SummaryTable(Callback):
    """After a sweep, one table of every point (any launcher), mirrored to the sweep's W&B group."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        summaries = sweep_summaries(config.hydra.sweep.dir)
        if len(summaries) < 2:
            return
        print("\n" + summary_table(summaries), flush=True)
        from ..tracking import log_sweep

        log_sweep(config, summaries, speedups(summaries))
