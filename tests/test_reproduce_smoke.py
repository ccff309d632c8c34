"""`make reproduce SCOPE=smoke`, the whole of it: every table's methods on the tiny checkpoints on CPU.

The slowest test of the suite (every table experiment runs), so it has a file of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dllm_accel.paths import REPO_ROOT
from dllm_accel.results import SUMMARY
from experiments import reproduce

SCRIPT = REPO_ROOT / "experiments" / "reproduce.py"


@pytest.mark.heavy
@pytest.mark.slow
def test_smoke_scope_runs_every_table_and_writes_every_table_and_figure(tmp_path):
    results = tmp_path / "smoke" / "runs"
    run = subprocess.run([sys.executable, str(SCRIPT), "--scope", "smoke", "--results", str(results)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    tables, figures = tmp_path / "smoke" / "tables", tmp_path / "smoke" / "figures"
    for name in reproduce.TABLES:
        text = (tables / f"{name}.md").read_text()
        assert reproduce.SMOKE_BANNER in text, name
        assert (tables / f"{name}.tex").is_file() and (tables / f"{name}.csv").is_file()
    names = {p.name for p in figures.iterdir()}
    for prefix in ("pareto_", "length_sparse_dllm_fig5_", "heatmap_longctx_", "recompute_"):
        assert any(n.startswith(prefix) and n.endswith(".png") for n in names), prefix
        assert any(n.startswith(prefix) and n.endswith(".pdf") for n in names), prefix
    summaries = [json.loads(p.read_text()) for p in results.rglob(SUMMARY)]
    assert summaries and all(s["complete"] for s in summaries)
    rerun = subprocess.run([sys.executable, str(SCRIPT), "--scope", "smoke", "--results", str(results), "--table",
                            "fast_dllm_table1", "--skip-analysis"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0 and "4 points, 0 ran, 4 already done, 0 failed" in rerun.stderr


def test_the_smoke_scope_covers_every_paper_table():
    """What the slow test walks: every paper table of the catalog, plus the two non-paper experiments."""
    from analysis.catalog import PAPER_TABLES

    assert set(reproduce.TABLES) == {t.experiment for t in PAPER_TABLES} | {"longctx", "batch_size"}
    assert all(reproduce.experiment_file(name).is_file() for name in reproduce.TABLES)
