"""The real CLI on the tiny checkpoint: files written, W&B mirror, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dllm_accel.results import SAMPLES, SUMMARY, read_samples

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "complete",
    "run_dir",
    "config_hash",
    "model",
    "method",
    "task",
    "limit",
    "n_samples",
    "accuracy",
    "metrics",
    "n_shot",
    "measurement",
    "environment",
    "overhead",
}
RATE_KEYS = {"samples", "seconds", "tokens_per_s", "forwards_per_s", "tokens_per_forward", "nfe_per_token"}
ENVIRONMENT_KEYS = {"gpu", "driver", "cuda", "torch", "transformers", "lm_eval", "attention", "git", "dtype"}


def _cli(tmp: Path, *overrides: str, background: bool = False, multirun: bool = False):
    command = [
        sys.executable,
        "-m",
        "dllm_accel.run",
        *(["--multirun"] if multirun else []),
        "experiment=demo_tiny",
        f"results_root={tmp / 'results'}",
        f"hydra.run.dir={tmp / 'hydra'}",
        "print_summary=false",
        *overrides,
    ]
    env = os.environ | {"WANDB_SILENT": "true", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WANDB_API_KEY", None)
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _run_dir(tmp: Path) -> Path:
    (summary,) = list((tmp / "results").rglob(SUMMARY))
    return summary.parent


def _comparable(records: list[dict]) -> list[tuple]:
    return sorted(
        (r["key"], r["prompt_hash"], r["completion"], tuple(r["generated_ids"]), json.dumps(r["scores"]))
        for r in records
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 5-sample run, mirrored to W&B offline."""
    tmp = tmp_path_factory.mktemp("reference")
    _cli(tmp, "task.limit=5", "tracking=offline")
    return _run_dir(tmp)


@pytest.mark.slow
def test_tiny_run_writes_samples_and_summary(reference):
    summary = json.loads((reference / SUMMARY).read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["complete"] and summary["n_samples"] == 5
    assert summary["accuracy"]["metric"] == "exact_match,flexible-extract"
    assert isinstance(summary["accuracy"]["value"], float)
    measurement = summary["measurement"]
    assert RATE_KEYS <= set(measurement["all"]) and RATE_KEYS <= set(measurement["warm"])
    assert set(measurement["all"]["tokens_per_s"]) == {"all_positions", "non_eos", "answer", "before_eos"}
    assert measurement["all"]["tokens_per_s"]["all_positions"] > 0
    assert measurement["all"]["nfe_per_token"] == 1.0  # steps = gen_length
    assert measurement["warm"]["samples"] == 4  # the first call is reported apart
    assert {"p50", "p99"} == set(measurement["latency_s"])
    assert {"mean", "max", "reserved_max", "rss_max"} == set(measurement["peak_memory_gib"])
    if Path("/proc/self/clear_refs").exists():  # CPU: the process's resident high-water mark per call
        assert measurement["peak_memory_gib"]["max"] is None and measurement["peak_memory_gib"]["rss_max"] > 0.05
    assert ENVIRONMENT_KEYS <= set(summary["environment"])
    records = read_samples(reference)
    assert len(records) == 5
    for record in records:
        assert record["status"] == "ok"
        assert len(record["prompt_hash"]) == 64
        assert set(record["scores"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        assert record["tokens"]["all_positions"] == 16 and record["nfe"] == 16
    assert (reference / "config.yaml").is_file()


@pytest.mark.slow
def test_wandb_offline_files_appear(reference):
    runs = list((reference / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_samples(reference, tmp_path):
    process = _cli(tmp_path, "task.limit=5", "tracking=none", background=True)
    deadline = time.time() + 240
    samples = None
    while time.time() < deadline and process.poll() is None:
        found = list((tmp_path / "results").rglob(SAMPLES))
        if found and len(found[0].read_text().splitlines()) >= 2:
            samples = found[0]
            break
        time.sleep(0.05)
    assert samples is not None, "the run finished or failed before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = read_samples(samples.parent)
    assert 2 <= len(interrupted) < 5
    assert not (samples.parent / SUMMARY).exists()
    _cli(tmp_path, "task.limit=5", "tracking=none")
    resumed = read_samples(samples.parent)
    assert _comparable(resumed) == _comparable(read_samples(reference))
    kept = {r["key"]: r["process"] for r in interrupted}
    assert all(r["process"] == kept[r["key"]] for r in resumed if r["key"] in kept)  # skipped, not regenerated
    assert not (samples.parent / "wandb").exists()  # tracking=none writes nothing


@pytest.mark.slow
def test_a_multirun_sweep_gives_each_point_its_own_results_and_wandb_run(tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    _cli(tmp_path, "method=vanilla,fast_dllm", "task.limit=2", "tracking=offline", sweep, multirun=True)
    summaries = sorted((tmp_path / "results").rglob(SUMMARY))
    assert [json.loads(p.read_text())["method"] for p in summaries] == ["fast_dllm", "vanilla"]
    for path in summaries:
        assert len(list((path.parent / "wandb").glob("offline-run-*"))) == 1  # finished before the next point
    # the finished sweep re-timed interleaved: the recorded calls replay to the same ids, every point gets a row
    result = subprocess.run(
        [sys.executable, "-m", "dllm_accel.retime", str(tmp_path / "sweep"), "--repeats", "2", "--calls", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = {line.split()[1]: line for line in lines[[line.split()[0] for line in lines].index("model") + 1 :]}
    assert set(rows) == {"vanilla", "fast_dllm"} and "1.00x" in rows["vanilla"] and "FAILED" not in result.stdout
    assert "2 rounds" in result.stdout and "live MiB" in result.stdout


def test_retime_names_a_folder_that_is_no_sweep(tmp_path):
    from dllm_accel.retime import main

    assert main([str(tmp_path)]) == 2
