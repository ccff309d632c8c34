"""W&B mirror of the results store. It never decides whether a run succeeds.

``auto`` logs online when an API key is configured and offline otherwise; ``none`` writes
nothing. Every W&B call is guarded: a failure is reported once and mirroring stops.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

MODES = ("auto", "online", "offline", "none")
log = logging.getLogger(__name__)


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown tracking mode {mode!r} (accepted: {', '.join(MODES)})")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return "offline" if os.environ["WANDB_MODE"] == "offline" else "none"
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class Tracker:
    """One W&B run per results directory; its files live in ``<run dir>/wandb``."""

    def __init__(
        self,
        mode: str,
        project: str,
        run_dir: Path,
        name: str,
        config: dict,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str = "eval",
    ) -> None:
        self.mode = resolve_mode(mode)
        self.run = None
        if self.mode == "none":
            return
        init = {"project": project, "name": name, "group": group, "dir": str(run_dir), "config": config}
        # W&B caps a tag at 64 characters
        init |= {"tags": [str(t)[:64] for t in tags or []], "job_type": job_type}
        self._guard("start", lambda: self._start(init))

    def _start(self, init: dict) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(**init, mode=self.mode, reinit="finish_previous")

    def _guard(self, what: str, action) -> Any:
        try:
            return action()
        except Exception as err:  # W&B trouble must never fail an evaluation
            warnings.warn(f"W&B {what} failed, mirroring stops for this run: {err}", stacklevel=2)
            self.run = None
            return None

    def log_summary(self, flat: dict[str, float]) -> None:
        if self.run is None:
            return

        def write():
            for key, value in flat.items():
                self.run.summary[key] = value
            self.run.log(flat)

        self._guard("log", write)

    def log_samples(self, records: list[dict]) -> None:
        if self.run is None or not records:
            return

        def write():
            import wandb

            columns = ["key", "status", "completion", "scores", "nfe", "all_positions", "latency_s"]
            rows = [
                [
                    r["key"],
                    r["status"],
                    r.get("completion", ""),
                    str(r.get("scores")),
                    r.get("nfe"),
                    (r.get("tokens") or {}).get("all_positions"),
                    (r.get("timing") or {}).get("wall_s"),
                ]
                for r in records
            ]
            self.run.log({"samples": wandb.Table(columns=columns, data=rows)})

        self._guard("samples table", write)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.run is None:
            return

        def write():
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=rows)})

        self._guard("table", write)

    def finish(self) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish()
        except Exception as err:  # same rule: report, never raise
            warnings.warn(f"W&B finish failed: {err}", stacklevel=2)


def sweep_group(experiment: str, sweep_dir: str | Path | None) -> str:
    """One W&B group per sweep (``<experiment>-<sweep folder>``); a single run groups by experiment."""
    return f"{experiment}-{Path(sweep_dir).name}" if sweep_dir else experiment


def log_sweep(config: Any, summaries: list[dict], speedups: list[float | None]) -> None:
    """A summary run in the sweep's group: every point's accuracy, tokens/s and speed-up vs vanilla."""
    mode = resolve_mode(config.get("tracking", "none"))
    if mode == "none":
        return
    sweep_dir = Path(config.hydra.sweep.dir)
    group = sweep_group(config.get("experiment_name", "adhoc"), sweep_dir)
    tracker = Tracker(
        mode, config.get("wandb_project", "dllm-accel"), sweep_dir, name=f"{group} summary", config={},
        group=group, tags=["sweep-summary"], job_type="sweep",
    )  # fmt: skip
    rows = [
        [s.get("point") or s["method"], s["model"], s["task"], (s.get("accuracy") or {}).get("value"),
         s["measurement"]["all"]["tokens_per_s"]["all_positions"], speedup]
        for s, speedup in zip(summaries, speedups, strict=True)
    ]  # fmt: skip
    tracker.log_summary(
        {f"speedup_vs_vanilla/{row[1]}/{row[2]}/{row[0]}": row[5] for row in rows if row[5] is not None}
    )
    tracker.log_table("points", ["point", "model", "task", "accuracy", "tokens_per_s", "speedup_vs_vanilla"], rows)
    tracker.finish()
