"""The runner under damage and hostility: one-line errors, kill -9 and resume, hostile stored completions."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_corpus import ATTACKS, bodies, indent
from hydra import compose, initialize_config_dir
from test_eval_sandbox import SECRET, Host, _sandbox_pids

from dllm_accel.errors import reported
from dllm_accel.eval.schema import CONF_DIR
from dllm_accel.paths import shared_dir
from dllm_accel.results import SAMPLES, SUMMARY, read_samples
from dllm_accel.run import evaluate

ROOT = Path(__file__).resolve().parents[1]
TINY = shared_dir() / "fixtures" / "llada-tiny"


def _cli_arguments(tmp: Path, *overrides: str) -> list[str]:
    """The runner's arguments for the tiny demo experiment with ``overrides``, writing under ``tmp``."""
    return [
        *(flag for flag in overrides if flag.startswith("-")),  # Hydra's flags go before the overrides
        "experiment=demo_tiny",
        f"results_root={tmp / 'results'}",
        f"hydra.run.dir={tmp / 'hydra'}",
        "tracking=none",
        "print_summary=false",
        *(override for override in overrides if not override.startswith("-")),
    ]


def _cli_env(env: dict | None = None) -> dict:
    return os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"} | (env or {})


def _cli(tmp: Path, *overrides: str, env: dict | None = None, background: bool = False):
    command = [sys.executable, "-m", "dllm_accel.run", *_cli_arguments(tmp, *overrides)]
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=_cli_env(env), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=ROOT, env=_cli_env(env), capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------ bad input: one line each
def _checkpoint(tmp: Path, damage: str) -> Path:
    target = tmp / damage
    shutil.copytree(TINY, target)
    weights = target / "model.safetensors"
    config = target / "config.json"
    if damage == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage_safetensors":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "config_wrong_types":
        values = json.loads(config.read_text())
        key = "n_layers" if "n_layers" in values else "num_hidden_layers"
        config.write_text(json.dumps(values | {key: "two"}))
    elif damage == "config_not_json":
        config.write_text("{'d_model': 64,")
    elif damage == "config_missing":
        config.unlink()
    return target


BAD_VALUES = {
    "task.limit=0": "task.limit=0",
    "cpu_threads=-1": "cpu_threads=-1",
    "measure.generation_timeout_s=-1": "measure.generation_timeout_s=-1",
    "measure.warmup=-2": "measure.warmup=-2",
    "batch_size=0": "batch_size=0",
    "code_timeout_s=0": "code_timeout_s=0",
    "code_workers=0": "code_workers=0",
    "model.rope_scaling=0": "model.rope_scaling=0",
    "model.dtype=float8": "float8",
    "model.device=tpu": "model.device='tpu'",
    "seed=-1": "seed=-1",
    "task.num_fewshot=-1": "task.num_fewshot=-1",
    "code_isolation=sometimes": "code_isolation='sometimes'",
    "tracking=sometimes": "sometimes",
    "humaneval_postprocess=mine": "mine",
    "prompt.style=poem": "poem",
    "data_dir=/nonexistent/data": "/nonexistent/data",
    "model.path=/nonexistent/ckpt": "/nonexistent/ckpt",
    "sampler.gen_length=7": "gen_length",
    "sampler.steps=-3": "steps",
    "sampler.temperature=-1": "temperature",
    "sampler.remasking=sometimes": "sometimes",
    "method.options.keep_ratio=2": "keep_ratio",
}
BAD_CHECKPOINTS = {
    "truncated_safetensors": "model.safetensors: not a readable safetensors file",
    "garbage_safetensors": "model.safetensors: not a readable safetensors file",
    "config_wrong_types": "expected a non-negative integer",
    "config_not_json": "config.json: not valid JSON",
    "config_missing": "missing config.json",
}


def _one_line_error(overrides: list[str], tmp: Path, capsys) -> str:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo_tiny", f"results_root={tmp}", "tracking=none", *overrides])
    with pytest.raises(SystemExit) as exit_info, reported(False):
        evaluate(cfg)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_every_bad_value_is_one_line_naming_it(override, tmp_path, capsys):
    extra = ["method=sparse_dllm"] if override.startswith("method.options") else []
    line = _one_line_error([*extra, override], tmp_path, capsys)
    assert BAD_VALUES[override] in line, line
    assert not any((tmp_path).rglob(SAMPLES))  # rejected before anything was generated


@pytest.mark.parametrize("damage", sorted(BAD_CHECKPOINTS))
def test_every_bad_checkpoint_is_one_line_naming_the_file(damage, tmp_path, capsys):
    directory = _checkpoint(tmp_path, damage)
    line = _one_line_error([f"model.path={directory}", "model.tokenizer=byte"], tmp_path, capsys)
    assert BAD_CHECKPOINTS[damage] in line and str(directory) in line, line


@pytest.mark.slow
def test_the_cli_prints_one_line_and_the_debug_switch_the_traceback(tmp_path):
    quiet = _cli(tmp_path, "task.limit=0")
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.startswith("error: ")] == [
        "error: task.limit=0 is out of range (accepted: >= 1 or null) (traceback: DLLM_ACCEL_DEBUG=1 or debug=true)"
    ]
    loud = _cli(tmp_path, "task.limit=0", env={"DLLM_ACCEL_DEBUG": "1", "HYDRA_FULL_ERROR": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr


# what Hydra itself rejects (or would silently ignore), through the real CLI: the override, then what it names
HYDRA_BAD = {
    "batch_size=abc": ("batch_size=abc", "must be an integer (got 'abc')"),
    "++batch_size=abc": ("++batch_size=abc", "must be an integer"),
    "task.limit=x": ("task.limit=x", "an integer or null"),
    "cpu_threads=1.5": ("cpu_threads=1.5", "an integer or null"),
    "method=nope": ("method=nope", "accepted: certainty_prior", "vanilla"),
    "method=fast_dlm": ("method=fast_dlm", "did you mean fast_dllm?"),
    "method=dllm_cache_presets/nope": ("dllm_cache_presets/nope", "dllm_cache_presets/llada_8b_base_bbh"),
    "experiment=nope": ("experiment=nope", "demo_tiny"),
    "hydra/launcher=nope": ("hydra/launcher=nope", "submitit_local"),
    "nosuchkey=1": ("nosuchkey=1", "no key 'nosuchkey'", "batch_size"),
    "+nosuchkey=1": ("+nosuchkey=1", "no key 'nosuchkey'"),
    "sampler.nosuch=1": ("sampler.nosuch=1", "gen_length"),
    "+experiment/fast_dllm_table2/methodz=x": ("methodz", "did you mean experiment/fast_dllm_table2/methods?"),
    "batch_size=[1": ("batch_size=[1", "key=value"),
    "method=vanilla,fast_dllm": ("method=vanilla,fast_dllm", "--multirun"),
    "-m method=vanilla,nope": ("method=vanilla,nope", "no option 'nope'"),
    "-m method=vanilla,fast_dllm method.options.threshold=0.9": ("method.options.threshold=0.9", "no key 'threshold'"),
    "model=null": ("model=null", "takes one of its options", "llada_8b_instruct"),
    "task.lengths=5": ("task.lengths=5", "must be a list"),
    "sampler=abc": ("sampler=abc", "sampler.<name>=...", "gen_length"),
    "retry_failed=maybe": ("retry_failed=maybe", "true or false"),
}


def test_a_small_multirun_is_composed_job_by_job_a_large_one_value_by_value():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dllm_accel.overrides import _jobs

    parse = OverridesParser.create().parse_overrides
    small = list(_jobs(parse(["method=vanilla,fast_dllm", "seed=1,2", "batch_size=3"]), multirun=True))
    assert sorted(small) == sorted([m, s, "batch_size=3"] for m in ("method=vanilla", "method=fast_dllm")
                                   for s in ("seed=1", "seed=2"))
    large = list(_jobs(parse(["seed=range(0,10)", "batch_size=range(1,5)"]), multirun=True))
    assert len(large) == 1 + 9 + 3 and ["seed=9", "batch_size=1"] in large and ["seed=9", "batch_size=4"] not in large


# A fresh interpreter per case would cost an import of torch each (seconds): the first of each kind runs as
# its own `python -m dllm_accel.run` (import-time noise would show there), and every case runs as
# `python -m dllm_accel.run` would inside one interpreter (runpy re-executes the module as __main__).
HYDRA_BAD_SUBPROCESS = {"batch_size=abc", "method=fast_dlm", "-m method=vanilla,nope"}

_EVERY_CASE_AS_MAIN = """
import contextlib, io, json, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["dllm_accel.run", *argv]
    err, code = io.StringIO(), None
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("dllm_accel.run", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code
    results.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


def _assert_one_line(arguments: str, returncode: int | None, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2 and "Traceback" not in stderr, (arguments, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("DLLM_ACCEL_DEBUG=1 or debug=true)")
    assert all(part in lines[0] for part in HYDRA_BAD[arguments]), lines[0]


@pytest.mark.parametrize(
    "arguments",
    [a if a == "batch_size=abc" else pytest.param(a, marks=pytest.mark.slow) for a in sorted(HYDRA_BAD_SUBPROCESS)],
)
def test_a_bad_override_is_one_line_through_the_cli(arguments, tmp_path):
    done = _cli(tmp_path, *arguments.split())
    _assert_one_line(arguments, done.returncode, done.stderr)
    assert not (tmp_path / "results").exists() and not (tmp_path / "hydra").exists()  # nothing ran


@pytest.mark.slow
def test_every_bad_override_is_one_line_through_the_module_entry_point(tmp_path):
    cases = sorted(HYDRA_BAD)
    argv = [_cli_arguments(tmp_path, *arguments.split()) for arguments in cases]
    done = subprocess.run([sys.executable, "-c", _EVERY_CASE_AS_MAIN, json.dumps(argv)], cwd=ROOT, env=_cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for arguments, result in zip(cases, results, strict=True):
        _assert_one_line(arguments, result["code"], result["stderr"])
    assert not (tmp_path / "results").exists() and not (tmp_path / "hydra").exists()  # nothing ran


@pytest.mark.slow
def test_the_debug_switch_shows_hydras_own_error():
    for switch, env in (("debug=true", {}), ("task.limit=3", {"DLLM_ACCEL_DEBUG": "1"})):
        done = _cli(Path("/nonexistent"), "batch_size=abc", switch, env=env)
        assert done.returncode != 0 and "Traceback" in done.stderr
        assert "ConfigCompositionException: Error merging override batch_size=abc" in done.stderr


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_reported(tmp_path):
    window = ["sampler.gen_length=4096", "sampler.block_length=4096", "sampler.steps=16"]
    result = _cli(tmp_path, "task=humaneval", "task.limit=2", *window)
    assert result.returncode == 0, result.stderr[-2000:]
    (summary_path,) = (tmp_path / "results").rglob(SUMMARY)
    summary = json.loads(summary_path.read_text())
    assert summary["failures"]["count"] == 2
    (reason,) = summary["failures"]["reasons"]
    assert reason.startswith("prompt longer than the model's context (") and reason.endswith(" tokens)")
    assert f"warning: 2/2 samples: {reason}" in result.stderr


# ------------------------------------------------------------------ kill -9 and resume
def _comparable(records: list[dict]) -> list[tuple]:
    return sorted((r["key"], r["prompt_hash"], r["completion"], tuple(r.get("generated_ids") or ())) for r in records)


def _summary_view(run: Path) -> dict:
    summary = json.loads((run / SUMMARY).read_text())
    return {k: summary[k] for k in ("complete", "n_samples", "accuracy", "metrics", "failures")}


# (batch size, temperature, kills): ten kills in all, one test per configuration so that workers share them
CONFIGS = [(1, 0.0, 3), (4, 1.0, 3), (4, 0.0, 2), (1, 1.0, 2)]


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize(("batch", "temperature", "attempts"), CONFIGS)
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, batch, temperature, attempts):
    rng = random.Random(f"16-{batch}-{temperature}")
    limit = 8
    kills = 0
    settings = ["task=gsm8k", f"task.limit={limit}", f"batch_size={batch}", f"sampler.temperature={temperature}"]
    reference = _cli(tmp_path / "ref", *settings)
    assert reference.returncode == 0, reference.stderr[-2000:]
    (ref_summary,) = (tmp_path / "ref" / "results").rglob(SUMMARY)
    expected = _comparable(read_samples(ref_summary.parent))
    for attempt in range(attempts):
        work = tmp_path / f"kill{attempt}"
        process = _cli(work, *settings, background=True)
        target = rng.randrange(0, limit)  # stored lines to wait for, then a random extra delay
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            found = list((work / "results").rglob(SAMPLES))
            if found and len(found[0].read_bytes().splitlines()) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += process.returncode == -signal.SIGKILL
        resumed = _cli(work, *settings)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        (summary,) = (work / "results").rglob(SUMMARY)
        assert _comparable(read_samples(summary.parent)) == expected, (batch, temperature, target)
        assert _summary_view(summary.parent) == _summary_view(ref_summary.parent)
    assert kills >= attempts - 1  # most kills landed before the run could finish on its own


@pytest.mark.heavy
@pytest.mark.slow
def test_a_group_stored_in_part_is_generated_whole_and_completes_identically(tmp_path):
    """A kill between the lines of one group's write (or a quarantined line) leaves a group in part."""
    settings = ["task=gsm8k", "task.limit=8", "batch_size=4", "sampler.temperature=1.0"]
    assert _cli(tmp_path / "ref", *settings).returncode == 0
    (ref_summary,) = (tmp_path / "ref" / "results").rglob(SUMMARY)
    work = tmp_path / "part"
    shutil.copytree(tmp_path / "ref", work)
    (summary,) = (work / "results").rglob(SUMMARY)
    summary.unlink()
    records = read_samples(summary.parent)
    kept = [r for r in records if r["doc_id"] not in (1, 6, 7)]  # both groups in part
    (summary.parent / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in kept))
    resumed = _cli(work, *settings)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _comparable(read_samples(summary.parent)) == _comparable(read_samples(ref_summary.parent))
    assert _summary_view(summary.parent) == _summary_view(ref_summary.parent)


# ------------------------------------------------------------------ hostile completions through the CLI
@pytest.mark.heavy
@pytest.mark.slow
def test_hostile_stored_completions_score_zero_through_the_cli_and_touch_nothing(tmp_path):
    host = Host(tmp_path)
    try:
        settings = ["task=humaneval", f"task.limit={len(ATTACKS)}", "code_timeout_s=3", "code_workers=4"]
        first = _cli(tmp_path, *settings)
        assert first.returncode == 0, first.stderr[-2000:]
        (summary_path,) = (tmp_path / "results").rglob(SUMMARY)
        run = summary_path.parent
        records = read_samples(run)
        attacks = list(bodies(host.paths()).values())
        for record, attack in zip(sorted(records, key=lambda r: r["doc_id"]), attacks, strict=True):
            record.update(status="ok", completion=indent(attack), error=None)
        (run / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in records))
        summary_path.unlink()
        hostile = _cli(tmp_path, *settings, env={"WANDB_API_KEY": SECRET}, background=True)
        assert hostile.wait(timeout=600) == 0
        summary = json.loads(summary_path.read_text())
        assert summary["n_samples"] == len(ATTACKS) and summary["accuracy"]["value"] == 0.0
        time.sleep(9)  # longer than the forked survivor's sleep
        assert host.effects() == []
        assert _sandbox_pids(hostile.pid) == set()
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes() or path.name == "secret.txt", path
    finally:
        host.close()
