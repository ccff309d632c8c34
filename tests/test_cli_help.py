"""``--help`` answers from conf/ at once, and a run with no arguments is the tiny trained model's."""

from __future__ import annotations

import subprocess
import sys

from dllm_accel.cli_help import defaults, options
from dllm_accel.paths import REPO_ROOT

HELP_THEN_REPORT_TORCH = """
import runpy, sys
sys.argv = ["dllm_accel.run", "--help"]
try:
    runpy.run_module("dllm_accel.run", run_name="__main__")
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


def test_help_lists_the_groups_without_importing_torch():
    done = subprocess.run([sys.executable, "-c", HELP_THEN_REPORT_TORCH], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert "torch imported: False" in done.stdout
    for group in ("model (", "method (", "task (", "experiment (", "hydra/launcher ("):
        assert group in done.stdout
    assert "fast_dllm_dual" in done.stdout and "dllm_cache_presets/..." in done.stdout


def test_no_arguments_means_the_tiny_trained_model_on_its_passkey_task():
    assert defaults() == {"model": "tiny_llada_trained", "method": "vanilla", "task": "tiny_passkey"}
    assert "tiny_llada_trained" in options("model") and "tiny_passkey" in options("task")
