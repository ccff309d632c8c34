"""The one-line-per-run table printed after a run, and after a sweep for all its points."""

from __future__ import annotations

from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

HEADER = f"{'model':<20} {'method':<30} {'task':<18} {'accuracy':>9} {'tok/s':>9} {'NFE/tok':>8} {'peak GiB':>9}"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def summary_row(summary: dict) -> str:
    """Accuracy, tokens/s over all generated positions, NFE per token and peak memory of one run
    (allocated on a GPU; on CPU the process's peak resident memory, marked ``r``), named by its
    method preset (``fast_dllm`` and ``fast_dllm_dual`` are one method)."""
    rates = summary["measurement"]["all"]
    memory = summary["measurement"]["peak_memory_gib"]
    peak = _fmt(memory["max"], ".2f")
    if memory["max"] is None and memory.get("rss_max") is not None:
        peak = _fmt(memory["rss_max"], ".2f") + "r"
    return (
        f"{summary['model']:<20} {summary.get('preset', summary['method']):<30} {summary['task']:<18} "
        f"{_fmt(summary['accuracy']['value']):>9} {_fmt(rates['tokens_per_s']['all_positions'], '.2f'):>9} "
        f"{_fmt(rates['nfe_per_token']):>8} {peak:>9}"
    )


def summary_table(summaries: list[dict]) -> str:
    rows = [summary_row(s) + f"  {s['run_dir']}" for s in summaries]
    return "\n".join([HEADER + "  results", *rows])


class SummaryTable(Callback):
    """After a sweep whose points ran in this process, one table of every point."""

    def __init__(self) -> None:
        self.summaries: list[dict] = []

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, dict):
            self.summaries.append(job_return.return_value)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if len(self.summaries) > 1:
            print("\n" + summary_table(self.summaries), flush=True)
