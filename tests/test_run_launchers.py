"""Scale-out paths on CPU: torchrun data parallelism (gloo) and a submitit-local sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dllm_accel.results import SUMMARY, read_samples

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], tmp: Path) -> subprocess.CompletedProcess:
    command += ["experiment=demo_tiny", f"results_root={tmp / 'results'}", "tracking=none", "print_summary=false"]
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_torchrun_data_parallel_ranks_share_one_run(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dllm_accel.run",
        f"hydra.run.dir={tmp_path / 'h'}",
    ]
    _run(command + ["task.limit=4"], tmp_path)
    (summary_path,) = list((tmp_path / "results").rglob(SUMMARY))
    records = read_samples(summary_path.parent)
    assert [r["doc_id"] for r in records] == [0, 1, 2, 3] and all(r["scores"] for r in records)
    assert len({r["process"] for r in records}) == 2  # each rank generated its shard
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] and summary["measurement"]["all"]["samples"] == 4


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_point_in_its_own_process(tmp_path):
    command = [sys.executable, "-m", "dllm_accel.run", "--multirun", "hydra/launcher=local_procs"]
    done = _run(command + ["method=vanilla,fast_dllm_dual", "task.limit=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                tmp_path)
    # the points ran in other processes, and the sweep still ends with their table (speed-up vs vanilla)
    table = done.stdout[done.stdout.index("speed-up") :]
    assert "fast_dllm_dual" in table and "vanilla" in table and "1.00x" in table
    summaries = sorted((tmp_path / "results").rglob(SUMMARY))
    assert [json.loads(p.read_text())["preset"] for p in summaries] == ["fast_dllm_dual", "vanilla"]
    processes = {read_samples(p.parent)[0]["process"].split("-")[0] for p in summaries}
    assert len(processes) == 2 and str(os.getpid()) not in processes


def test_the_launcher_configs_name_submitits_launchers():
    """The slow tests above run local_procs; slurm_1gpu is the same launcher on SLURM, one GPU per point."""
    import yaml

    folder = ROOT / "conf" / "hydra" / "launcher"
    local, slurm = (yaml.safe_load((folder / f"{n}.yaml").read_text()) for n in ("local_procs", "slurm_1gpu"))
    assert local["defaults"] == ["submitit_local"] and slurm["defaults"] == ["submitit_slurm"]
    assert slurm["gpus_per_node"] == 1 and slurm["tasks_per_node"] == 1
