"""`make reproduce SCOPE=smoke` leaves the git tree clean, and figures are byte-reproducible."""

from __future__ import annotations

import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.figures import _write  # noqa: E402
from dllm_accel.paths import REPO_ROOT  # noqa: E402
from experiments.reproduce import SCOPES  # noqa: E402


def test_the_smoke_scope_writes_only_into_ignored_folders():
    """It rewrote ~50 tracked files (the committed snapshot) on every run."""
    scope = SCOPES["smoke"]
    for folder in (scope.results, scope.analysis / "tables", scope.analysis / "figures"):
        probe = folder / "x.md"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=REPO_ROOT)
        assert ignored.returncode == 0, f"{probe} is not git-ignored"


def test_the_same_figure_twice_gives_identical_files(tmp_path):
    """PDF creation dates made every redraw a diff."""
    contents = []
    for run in ("a", "b"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        paths = _write(fig, tmp_path / run, "f")
        contents.append([p.read_bytes() for p in paths])
    assert contents[0] == contents[1]
