"""``make reproduce``: experiment expansion, the smoke scope end to end, and the two ways to scale out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from analysis.catalog import PAPER_TABLES
from dllm_accel.generation.settings import SamplerSettings
from dllm_accel.methods import build_method
from dllm_accel.models import load_spec
from dllm_accel.paths import REPO_ROOT, tiny_checkpoint
from dllm_accel.results import SUMMARY
from dllm_accel.run import sampler_settings
from experiments import reproduce

SCRIPT = REPO_ROOT / "experiments" / "reproduce.py"
EXPERIMENTS = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml") if p.stem != "demo_tiny")


def check_point(config: dict) -> None:
    """The method builds from its options and the sampler settings resolve (on the tiny spec of the family)."""
    build_method(config["method"]["name"], **(config["method"].get("options") or {}))
    family = "dream" if config["model"]["name"].startswith(("dream", "diffucoder")) else "llada"
    spec, _, _ = load_spec(str(tiny_checkpoint(family)))
    SamplerSettings(**sampler_settings(config)).resolve(spec, prompt_length=0)


@pytest.mark.slow
def test_every_table_has_an_experiment_and_every_experiment_expands():
    assert {t.experiment for t in PAPER_TABLES} <= set(reproduce.TABLES) <= set(EXPERIMENTS)
    with reproduce.hydra_session():
        for name in EXPERIMENTS:
            jobs = reproduce.expand(name, reproduce.sweep_params(name), [])
            assert len(jobs) >= 2 and len({tuple(j) for j in jobs}) == len(jobs), name
            for job in (jobs[0], jobs[-1]):
                config = OmegaConf.to_container(reproduce.compose(job), resolve=True)
                assert config["experiment_name"] == name
                check_point(config)


def test_paper_settings_reach_the_composed_points():
    with reproduce.hydra_session():
        dyllm = reproduce.compose(["experiment=dyllm_table", "model=dream_7b_instruct",
                                   "+experiment/dyllm_table/task=math", "+experiment/dyllm_methods=dyllm_tau_09975"])
        assert (dyllm.task.name, dyllm.task.num_fewshot, dyllm.sampler.block_length) == ("minerva_math", 4, 16)
        assert dyllm.method.options.threshold == 0.9975 and dyllm.prompt.style == "chat"
        dream = OmegaConf.to_container(reproduce.compose(
            ["experiment=fast_dllm_table2", "+experiment/fast_dllm_table2/task=gsm8k",
             "+experiment/fast_dllm_table2/methods=len512_fast_dllm_parallel"]), resolve=True)
        merged = sampler_settings(dream)
        assert (merged["gen_length"], merged["steps"], merged["block_length"], merged["threshold"], merged["alg"]) == (
            512, 16, 512, 0.9, "confidence_threshold")
        sparse = reproduce.compose(["experiment=sparse_dllm_table1", "+experiment/sparse_dllm_table1/task=humaneval",
                                    "+experiment/sparse_dllm_methods=fast_dllm"])
        assert (sparse.sampler.gen_length, sparse.sampler.steps, sparse.method.options.mode) == (512, 512, "dual")
        assert sparse.method.sampler.threshold is None and sparse.seed == 2025


def test_smoke_subset_keeps_every_method_and_first_values():
    jobs = [["experiment=x", f"model={m}", f"+experiment/x_methods={k}", f"sampler.steps={s}"]
            for m in ("a", "b") for k in ("p", "q", "r") for s in (256, 128, 64)]
    chosen = reproduce.smoke_subset("x", jobs)
    assert [j[2].split("=")[1] for j in chosen] == ["p", "q", "r"]
    assert {j[1] for j in chosen} == {"model=a"} and {j[3] for j in chosen} == {"sampler.steps=256"}
    curves = reproduce.smoke_subset("dyllm_curves", jobs)  # keeps two step counts
    assert {j[3] for j in curves} == {"sampler.steps=256", "sampler.steps=128"} and len(curves) == 6


@pytest.mark.parametrize(
    "job,expected",
    [
        (["experiment=dyllm_curves", "+experiment/dyllm_table/task=gsm8k", "+experiment/dyllm_methods=dyllm_tau_0990",
          "sampler.steps=64"], (16, 4, 8)),
        (["experiment=fast_dllm_table2", "+experiment/fast_dllm_table2/task=gsm8k",
          "+experiment/fast_dllm_table2/methods=len256_fast_dllm"], (16, 2, 8)),
        (["experiment=fast_dllm_table2", "+experiment/fast_dllm_table2/task=gsm8k",
          "+experiment/fast_dllm_table2/methods=len256_vanilla"], (16, 16, 16)),
    ],
)
def test_shrink_keeps_tokens_per_step_and_whole_steps_per_block(job, expected):
    with reproduce.hydra_session():
        cfg = reproduce.shrink(reproduce.compose(job))
    config = OmegaConf.to_container(cfg, resolve=True)
    merged = sampler_settings(config)
    assert (merged.get("gen_length") or merged.get("max_new_tokens"), merged["steps"], merged["block_length"]) == expected
    assert config["model"]["path"] == str(tiny_checkpoint(config["model"]["name"].split("_")[0]))
    assert config["task"]["limit"] == reproduce.SMOKE_LIMIT and config["task"]["num_fewshot"] == 0
    check_point(config)


def _tiny_run(results: Path, extra: list[str], launcher: list[str]) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "dllm_accel.run", "experiment=demo_tiny", "task=gsm8k", "task.limit=4", "tracking=none",
               f"results_root={results}", f"hydra.run.dir={results.parent / 'hydra'}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


def _root_cause(run: subprocess.CompletedProcess) -> str:
    """torchrun's own report ends stderr; a rank's traceback comes before it."""
    start = run.stderr.find("Traceback")
    return run.stderr[start : start + 6000] if start >= 0 else run.stderr[-6000:]


def _samples(results: Path) -> list[dict]:
    (path,) = results.rglob("samples.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.heavy
@pytest.mark.slow
def test_torchrun_two_ranks_give_the_same_answers_as_one_process(tmp_path):
    one = _tiny_run(tmp_path / "one" / "runs", [], [sys.executable])
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = _tiny_run(tmp_path / "two" / "runs", [], torchrun)
    assert two.returncode == 0, _root_cause(two)
    single, sharded = _samples(tmp_path / "one" / "runs"), _samples(tmp_path / "two" / "runs")
    assert len({r["process"] for r in sharded}) == 2  # both ranks generated
    by_doc = {r["doc_id"]: (r["completion"], r["scores"]) for r in single}
    assert {r["doc_id"]: (r["completion"], r["scores"]) for r in sharded} == by_doc
    (a,), (b,) = ([json.loads(p.read_text()) for p in (tmp_path / d / "runs").rglob(SUMMARY)] for d in ("one", "two"))
    assert a["accuracy"] == b["accuracy"] and b["n_samples"] == 4


@pytest.mark.slow
def test_launcher_runs_each_experiment_as_one_hydra_multirun(tmp_path, monkeypatch):
    """``--launcher`` hands the experiment to Hydra (tests/test_run_launchers.py runs that path for real)."""
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    reproduce.main(["--table", "fast_dllm_table1", "--table", "dyllm_table", "--launcher", "slurm_1gpu", "--results",
                    str(tmp_path / "runs"), "--skip-analysis", "task.limit=8"])
    assert [c[0][2:] for c in calls] == [
        ["dllm_accel.run", "-m", f"experiment={name}", "hydra/launcher=slurm_1gpu", f"results_root={tmp_path / 'runs'}",
         "task.limit=8"] for name in ("fast_dllm_table1", "dyllm_table")
    ]
    assert all(kwargs["check"] for _, kwargs in calls)
    with pytest.raises(SystemExit, match="smoke scope"):
        reproduce.main(["--scope", "smoke", "--launcher", "slurm_1gpu"])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["fast_dllm_table1", "fast_dllm_table2", "sparse_dllm_table1"])
def test_an_added_method_runs_at_every_point_of_the_first_method(experiment):
    with reproduce.hydra_session():
        jobs = reproduce.expand(experiment, reproduce.sweep_params(experiment), [])
        first = set(reproduce.baseline_overrides(jobs))
        extended = reproduce.with_added_methods(jobs, ["fast_dllm_dual"])
        added = extended[len(jobs):]
        assert extended[: len(jobs)] == jobs
        assert len(added) == sum(first <= set(job) for job in jobs) >= 1
        for job in added:
            assert job[-1] == "method=fast_dllm_dual"
            config = OmegaConf.to_container(reproduce.compose(job), resolve=True)
            assert config["method"]["name"] == "fast_dllm"
            assert config["method"]["options"]["mode"] == "dual"


def test_an_unknown_added_method_is_one_line():
    with pytest.raises(SystemExit, match=r"--add-method 'nope': no conf/method/nope.yaml \(accepted: .*vanilla"):
        reproduce.check_added_methods(["nope"])


def test_make_refuses_a_hydra_override_it_would_drop():
    done = subprocess.run(["make", "-n", "reproduce", "TABLE=fast_dllm_table1", "--", "method=vanilla"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert done.returncode != 0 and 'write ARGS="method=vanilla"' in done.stderr
    done = subprocess.run(["make", "-n", "reproduce", "TABLE=fast_dllm_table1", "METHOD=dllm_cache", "ARGS=task.limit=2"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "--add-method dllm_cache task.limit=2 --table fast_dllm_table1" in done.stdout


@pytest.mark.parametrize(("override", "named"), [("task.limit=abc", "an integer or null"), ("method=nope", "vanilla")])
def test_a_bad_extra_override_is_one_line_before_any_point_runs(override, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--scope", "smoke", "--table", "fast_dllm_table1", "--results", str(tmp_path), override])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {override}: ") and named in lines[0]
    assert not any(tmp_path.iterdir())
