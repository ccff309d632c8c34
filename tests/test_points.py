"""Sweep points are named by what differs: the preset and the values the overrides set."""

from __future__ import annotations

from pathlib import Path

import pytest

from dllm_accel.points import Point


def test_overrides_that_differ_name_the_point():
    point = Point.from_overrides(
        "sparse_dllm",
        ["experiment=sweep_sparse_dllm", "method=sparse_dllm", "method.options.keep_ratio=0.25",
         "method.options.kernel_size=3", "results_root=/tmp/r", "tracking=none", "hydra.sweep.dir=/x", "task.limit=5"],
    )  # fmt: skip
    assert point.label == "sparse_dllm keep_ratio=0.25 kernel_size=3"
    assert point.overrides == {"keep_ratio": "0.25", "kernel_size": "3"}
    assert point.slug == "sparse_dllm-keep_ratio=0.25-kernel_size=3"


def test_threshold_decoding_under_the_vanilla_preset_is_visible():
    """'vanilla' rows that were really threshold decoding read as vanilla."""
    assert Point.from_overrides("vanilla", ["sampler.threshold=0.9", "task=gsm8k"]).label == "vanilla threshold=0.9"


def test_point_files_of_an_experiment_name_the_point_by_their_file():
    point = Point.from_overrides(
        "fast_dllm_parallel",
        ["experiment=fast_dllm_table2", "+experiment/fast_dllm_table2/methods=len256_fast_dllm_parallel",
         "+experiment/fast_dllm_table2/task=gsm8k", "model=dream_7b_base"],
    )  # fmt: skip
    assert point.label == "fast_dllm_parallel len256_fast_dllm_parallel"


def test_the_slug_is_one_safe_folder_name():
    point = Point("dllm_cache_presets/llada_8b_instruct_gsm8k", ("top_p=0.9 x",))
    assert "/" not in point.slug and " " not in point.slug


# ------------------------------------------------------------------ the end-of-sweep table
def _summary(point: str, preset: str, tok_s: float, overrides: dict | None = None, task: str = "gsm8k") -> dict:
    return {
        "model": "m", "task": task, "method": preset, "preset": preset, "point": point, "overrides": overrides or {},
        "accuracy": {"value": 0.5}, "run_dir": "/r/run",
        "measurement": {"all": {"tokens_per_s": {"all_positions": tok_s}, "nfe_per_token": 1.0},
                        "peak_memory_gib": {"max": None, "rss_max": None}},
    }  # fmt: skip


def test_the_sweep_table_names_points_and_divides_by_the_matching_vanilla():
    from dllm_accel.eval.report import speedups, summary_table

    rows = [
        _summary("vanilla gen_length=256", "vanilla", 10.0, {"gen_length": "256"}),
        _summary("vanilla gen_length=512", "vanilla", 5.0, {"gen_length": "512"}),
        _summary("sparse_dllm gen_length=512 keep_ratio=0.25", "sparse_dllm", 20.0, {"gen_length": "512", "keep_ratio": "0.25"}),
        _summary("sparse_dllm gen_length=512", "sparse_dllm", 7.0, {"gen_length": "512"}, task="humaneval"),
    ]  # fmt: skip
    assert speedups(rows) == [1.0, 1.0, 4.0, None]  # no vanilla on humaneval
    table = summary_table(rows)
    assert "sparse_dllm gen_length=512 keep_ratio=0.25" in table and "4.00x" in table
    # an override every point shares names none of them: stated once above the table
    shared = summary_table([_summary("vanilla n=10", "vanilla", 1.0, {"n": "10"}),
                            _summary("dllm_cache n=10", "dllm_cache", 2.0, {"n": "10"})])  # fmt: skip
    assert shared.startswith("every point: n=10\n") and "dllm_cache n=10" not in shared and "2.00x" in shared


def test_sweep_summaries_are_read_from_the_job_folders_in_job_order(tmp_path):
    from dllm_accel.eval.report import sweep_summaries, write_job_summary

    for num in (10, 2, 0):
        write_job_summary(tmp_path / str(num), {"job": num})
    (tmp_path / ".submitit").mkdir()
    assert [s["job"] for s in sweep_summaries(tmp_path)] == [0, 2, 10]


# ------------------------------------------------------------------ W&B and the results folder
class _FakeRun:
    def __init__(self, **init):
        self.init, self.summary, self.logged = init, {}, []

    def log(self, data):
        self.logged.append(data)

    def finish(self):
        pass


@pytest.mark.slow
def test_a_point_names_its_folder_and_wandb_run_and_records_resolved_settings(tmp_path, monkeypatch):
    import wandb

    from dllm_accel.run import evaluate
    from experiments.reproduce import compose_point

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **init: runs.append(_FakeRun(**init)) or runs[-1])
    cfg, point = compose_point(
        ["experiment=demo_tiny", "method=sparse_dllm", "method.options.keep_ratio=0.25", "task.limit=1",
         "tracking=offline", f"results_root={tmp_path}", "print_summary=false"]
    )  # fmt: skip
    summary = evaluate(cfg, point)
    assert summary["point"] == "sparse_dllm keep_ratio=0.25" and summary["overrides"] == {"keep_ratio": "0.25"}
    assert Path(summary["run_dir"]).parent.name.startswith("sparse_dllm-keep_ratio=0.25-")
    (run,) = runs
    task = summary["task"]
    assert run.init["name"] == f"sparse_dllm keep_ratio=0.25 | {summary['model']} | {task}"
    assert run.init["group"] == "demo_tiny"  # one run: the experiment; a multirun: the sweep
    assert {"sparse_dllm", "keep_ratio=0.25", "demo_tiny", task} <= set(run.init["tags"])
    config = run.init["config"]
    assert config["resolved"]["method"]["keep_ratio"] == 0.25 and config["resolved"]["method"]["kernel_size"] == 3
    assert config["resolved"]["sampler"]["steps"] == 16 and config["resolved"]["sampler"]["sampler"] == "llada"
    environment = config["environment"]
    assert environment["git"]["commit"] and environment["torch"] and "gpu" in environment


def test_a_sweep_logs_one_summary_run_in_its_group_with_speedups(tmp_path, monkeypatch):
    import wandb
    from omegaconf import OmegaConf

    from dllm_accel.eval.report import speedups
    from dllm_accel.tracking import log_sweep

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **init: runs.append(_FakeRun(**init)) or runs[-1])
    config = OmegaConf.create({"tracking": "offline", "wandb_project": "p", "experiment_name": "sweep_x",
                               "hydra": {"sweep": {"dir": str(tmp_path / "2026-12-03_09-00-00")}}})  # fmt: skip
    rows = [_summary("vanilla", "vanilla", 5.0), _summary("sparse_dllm keep_ratio=0.25", "sparse_dllm", 10.0)]
    log_sweep(config, rows, speedups(rows))
    (run,) = runs
    assert run.init["group"] == "sweep_x-2026-12-03_09-00-00" and run.init["job_type"] == "sweep"
    assert run.summary["speedup_vs_vanilla/m/gsm8k/sparse_dllm keep_ratio=0.25"] == 2.0
    assert "points" in run.logged[-1]


def test_smoke_points_do_not_claim_the_full_size_settings():
    from experiments.reproduce import smoke_point

    point = Point.from_overrides("fast_dllm_prefix", ["sampler.gen_length=512", "method.options.mode=dual"])
    assert smoke_point(point).label == "fast_dllm_prefix mode=dual smoke"
