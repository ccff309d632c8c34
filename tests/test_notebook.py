"""The walkthrough notebook runs top to bottom on smoke results and shows the new method it adds."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from dllm_accel.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_runs_on_smoke_results(tmp_path, monkeypatch):
    results = tmp_path / "smoke" / "runs"
    smoke = [sys.executable, str(REPO_ROOT / "experiments" / "reproduce.py"), "--scope", "smoke", "--table",
             "fast_dllm_table1", "--results", str(results), "--skip-analysis"]
    done = subprocess.run(smoke, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.setenv("DLLM_ACCEL_RESULTS", str(results))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    assert f"results store: {results}" in text
    assert "stale_logits" in text and "ours only" in text
    assert any(p.parent.parent.name.startswith("stale_logits-") for p in results.rglob("summary.json"))
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the front before and after the new method


def test_every_code_cell_of_the_walkthrough_parses():
    """The slow test executes the notebook; this one only reads it: valid, every code cell Python."""
    import ast

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(ast.parse(source) for source in code)
    assert any("DLLM_ACCEL_RESULTS" in source for source in code)
