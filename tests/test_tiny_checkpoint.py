"""The committed tiny trained model: it loads unchanged, solves its tasks, and methods keep its accuracy.

The regression sample is fixed: the first ``CI_SAMPLES`` held-out samples of each task.
``results/tiny/tiny_ci_accuracy.json`` records every preset's accuracy on exactly that sample,
measured by ``experiments/eval_tiny.py --margins``. The floors and margins below come from it:

- vanilla, per task: at least the recorded accuracy minus one sample, and above chance;
- each preset, per task: at most its recorded drop below vanilla plus one sample.

Generation is deterministic, so on the machine that recorded them the accuracies repeat
exactly; the one-sample slack absorbs a near-tie that another CPU's float rounding flips.

A preset without a recorded accuracy fails: measure it with ``eval_tiny.py --margins`` first.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from functools import cache

import pytest
import torch

from dllm_accel.eval.tiny_tasks import TINY_TASKS
from dllm_accel.models import load_model, load_spec, load_tokenizer
from dllm_accel.paths import REPO_ROOT
from dllm_accel.results import SUMMARY, read_samples
from dllm_accel.train import TASKS, TrainConfig, evaluate_samples, held_out_samples, tiny_spec
from dllm_accel.train.evaluate import preset_settings, runnable_presets

CHECKPOINT = REPO_ROOT / "checkpoints" / "tiny-llada"
RECORD = json.loads((REPO_ROOT / "results" / "tiny" / "tiny_ci_accuracy.json").read_text())
CI_SAMPLES = RECORD["samples_per_task"]
PRESETS = runnable_presets(load_spec(CHECKPOINT)[0])  # those that run on this (LLaDA-format) model


@cache
def tiny():
    return load_model(CHECKPOINT, dtype=torch.float32), load_tokenizer(CHECKPOINT)


@cache
def ci_samples(task: str):
    return held_out_samples(task, CI_SAMPLES)


@cache
def ci_accuracy(preset: str) -> dict[str, float]:
    model, tokenizer = tiny()
    entry = next(e for e in PRESETS if e["preset"] == preset)
    return {
        name: evaluate_samples(
            model, tokenizer, task, ci_samples(name), method=entry["name"], **preset_settings(entry, task)
        ).accuracy
        for name, task in TASKS.items()
    }


def test_checkpoint_is_llada_format_and_matches_its_record():
    config = json.loads((CHECKPOINT / "config.json").read_text())
    record = json.loads((CHECKPOINT / "train_config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    digest = hashlib.sha256((CHECKPOINT / "model.safetensors").read_bytes()).hexdigest()
    assert digest == record["weights_sha256"]
    spec, _, _ = load_spec(CHECKPOINT)
    assert spec == tiny_spec(TrainConfig(**record["train_config"]))
    stored = load_model(CHECKPOINT)
    assert stored.dtype == torch.bfloat16
    assert sum(p.numel() for p in stored.parameters()) == record["parameters"]


def test_tokenizer_ids_agree_with_the_model_config():
    model, tokenizer = tiny()
    tokens = model.spec.tokens
    assert tokenizer.mask_token_id == tokens.mask == 258
    assert tokenizer.eos_token_id == tokens.eos == tokenizer.pad_token_id == tokens.pad
    assert tokenizer.bos_token_id == tokens.bos
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == tokens.eot
    assert len(tokenizer) <= model.spec.vocab_size


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_vanilla_stays_above_its_floor(task):
    recorded = RECORD["accuracy"]["vanilla"][task]
    floor = max(recorded - 1 / CI_SAMPLES, 1 / CI_SAMPLES)
    accuracy = ci_accuracy("vanilla")[task]
    assert accuracy >= floor - 1e-9, f"{task}: vanilla {accuracy:.2f} < floor {floor:.2f} (recorded {recorded:.2f})"
    assert accuracy > TASKS[task].chance


@pytest.mark.slow
@pytest.mark.parametrize("preset", [e["preset"] for e in PRESETS if e["preset"] != "vanilla"])
def test_preset_stays_within_its_margin_of_vanilla(preset):
    assert preset in RECORD["accuracy"], f"no recorded CI accuracy for {preset!r}: run experiments/eval_tiny.py --margins"
    vanilla, recorded, measured = RECORD["accuracy"]["vanilla"], RECORD["accuracy"][preset], ci_accuracy(preset)
    for task in TASKS:
        margin = max(vanilla[task] - recorded[task], 0.0) + 1 / CI_SAMPLES
        drop = ci_accuracy("vanilla")[task] - measured[task]
        assert drop <= margin + 1e-9, f"{preset} on {task}: {drop:.2f} below vanilla, margin {margin:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("runner_task,method", [("tiny_passkey", "sparse_dllm"), ("tiny_arithmetic", "fast_dllm_dual")])
def test_runner_task_scores_what_the_generator_scores(tmp_path, runner_task, method):
    """``task=tiny_*`` under the runner: the same prompts, byte for byte, and the same hits as evaluate_samples."""
    results = tmp_path / "runs"
    command = [sys.executable, "-m", "dllm_accel.run", "experiment=tiny_trained", f"task={runner_task}",
               f"method={method}", "task.samples_per_cell=4", "tracking=none", f"results_root={results}",
               f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (summary_path,) = results.rglob(SUMMARY)
    records = read_samples(summary_path.parent)
    name = TINY_TASKS[runner_task]
    samples = held_out_samples(name, 4)
    assert [r["prompt_text"] for r in sorted(records, key=lambda r: r["doc_id"])] == [s.prompt for s in samples]
    model, tokenizer = tiny()
    entry = next(e for e in PRESETS if e["preset"] == method)
    direct = evaluate_samples(
        model, tokenizer, TASKS[name], samples, method=entry["name"], **preset_settings(entry, TASKS[name])
    )
    summary = json.loads(summary_path.read_text())
    assert (summary["preset"], summary["method"]) == (method, entry["name"])  # the table names the preset
    assert summary["accuracy"]["value"] == pytest.approx(direct.accuracy)
    assert [r["scores"]["score,none"] for r in sorted(records, key=lambda r: r["doc_id"])] == [
        float(TASKS[name].score(c, s)) for c, s in zip(direct.completions, samples, strict=True)
    ]
