"""The ``dllm_accel`` lm-eval model: model_args, the Monte Carlo log-likelihood, and the real CLI end to end."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from dllm_accel import generate
from dllm_accel.eval.harness import method_preset, split_settings
from dllm_accel.eval.likelihood import (
    LikelihoodSettings,
    elbo_loglikelihood,
    encode_pair,
    greedy_reproduces,
    mask_draw,
)
from dllm_accel.eval.lm import DiffusionLM
from dllm_accel.eval.prompting import PromptFormat, encode
from dllm_accel.models import load_model, load_tokenizer
from dllm_accel.paths import REPO_ROOT
from dllm_accel.results import RunStore
from dllm_accel.synthetic_tasks import KEY_SYMBOLS, held_out_samples

TINY = REPO_ROOT / "checkpoints" / "tiny-llada"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@cache
def _tiny():
    return load_model(TINY, dtype="float32"), load_tokenizer(TINY)


def _passkey_choices(count: int) -> list[dict]:
    """Multiple choice over the tiny model's passkey: the key and three other symbols."""
    rows = []
    for sample in held_out_samples("passkey", count, 256):
        others = random.Random(sample.prompt).sample([c for c in KEY_SYMBOLS if c != sample.target], 3)
        choices = sorted([sample.target, *others])
        rows.append({"input": sample.prompt, "choices": choices, "label": choices.index(sample.target)})
    return rows


# ------------------------------------------------------------------ model_args
def test_model_args_route_to_method_sampler_and_likelihood():
    options, sampler, likelihood = split_settings(
        "sparse_dllm", {"keep_ratio": 0.25, "gen_length": 32, "mc_num": 8, "sampler.temperature": 0.5}
    )
    assert options == {"keep_ratio": 0.25}
    assert sampler == {"gen_length": 32, "temperature": 0.5}
    assert likelihood == {"mc_num": 8}
    # a name both know goes to the method unless sampler.<name> says otherwise (as in generate)
    assert split_settings("dyllm", {"threshold": 0.9})[0] == {"threshold": 0.9}
    assert split_settings("dyllm", {"sampler.threshold": 0.9})[1] == {"threshold": 0.9}
    with pytest.raises(ValueError, match="unknown model_arg 'keep_ration'.*accepted: .*keep_ratio"):
        split_settings("sparse_dllm", {"keep_ration": 0.25})


def test_method_is_a_preset_file_or_a_method_name():
    name, options, sampler = method_preset("fast_dllm_dual")
    assert (name, options["mode"], sampler["threshold"]) == ("fast_dllm", "dual", 0.9)
    assert method_preset("sparse_dllm")[0] == "sparse_dllm"
    assert method_preset("llada_8b_instruct_gsm8k")[0] == "dllm_cache"
    with pytest.raises(ValueError, match="unknown method 'sparse'.*accepted: .*sparse_dllm"):
        method_preset("sparse")


def test_the_lm_eval_cli_reports_a_bad_model_arg_in_one_line(monkeypatch, capsys):
    import lm_eval.__main__

    import dllm_accel.lm_eval

    monkeypatch.delenv("DLLM_ACCEL_DEBUG", raising=False)
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: method_preset("nope"))
    with pytest.raises(SystemExit) as exit_info:
        dllm_accel.lm_eval.main()
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: unknown method 'nope' (accepted: ") and "fast_dllm_dual" in lines[0]


def test_likelihood_settings_reject_a_batch_that_does_not_divide():
    with pytest.raises(ValueError, match="mc_num=10 must be a multiple of mc_batch_size=4"):
        LikelihoodSettings(mc_num=10, mc_batch_size=4)


# ------------------------------------------------------------------ the estimator
def test_mask_counts_are_stratified_over_one_to_L():
    torch.manual_seed(0)
    masked, ratio = mask_draw(8, 16, torch.device("cpu"))
    counts = masked.sum(dim=1)
    assert torch.equal(counts.float() / 16, ratio)
    assert counts.min() >= 1 and counts.max() <= 16
    # one uniform start, then steps of L / rows = 2 (wrapped): all distinct, evenly spread
    assert sorted(counts.tolist()) == sorted({int(c) for c in counts.tolist()}) and len(set(counts.tolist())) == 8


def test_a_one_token_continuation_is_its_exact_log_probability():
    """With L = 1 every draw masks the one token with weight 1: the estimate is exact."""
    model, tok = _tiny()
    prefix, target = encode(tok, "Copy: abc\nAnswer: "), encode(tok, "a")
    seq = torch.tensor([prefix + [model.spec.tokens.mask]])
    exact = torch.log_softmax(model(seq)[0][0, -1].float(), -1)[target[0]].item()
    estimate = elbo_loglikelihood(model, prefix, target, LikelihoodSettings(mc_num=4, mc_batch_size=2))
    assert estimate == pytest.approx(exact, abs=1e-5)


def test_encode_pair_moves_trailing_spaces_into_the_continuation():
    _, tok = _tiny()
    prefix, target = encode_pair(tok, "Answer: ", "42")
    assert tok.decode(prefix) == "Answer:" and tok.decode(target) == " 42"


def test_greedy_check_agrees_with_one_token_per_step_decoding():
    model, tok = _tiny()
    prompt = encode(tok, held_out_samples("copy", 1)[0].prompt)
    out = generate(model, torch.tensor([prompt]), gen_length=8, steps=8, block_length=8)
    decoded = out.sequences[0, len(prompt) :].tolist()
    assert greedy_reproduces(model, prompt, decoded)
    wrong = decoded[:-1] + [(decoded[-1] + 1) % 200]
    assert not greedy_reproduces(model, prompt, wrong)


def test_loglikelihood_ranks_the_passkey_and_resumes_from_the_store(tmp_path):
    model, tok = _tiny()
    row = _passkey_choices(1)[0]
    requests = [
        Instance("loglikelihood", {}, (row["input"], " " + c), i, ("mc", 0, 1)) for i, c in enumerate(row["choices"])
    ]
    store = RunStore(tmp_path)
    settings = LikelihoodSettings(mc_num=4, mc_batch_size=4)
    lm = DiffusionLM(model, tok, "vanilla", store=store, progress=False, likelihood=settings, prompt=PromptFormat())
    scores = lm.loglikelihood(requests)
    assert max(range(4), key=lambda i: scores[i][0]) == row["label"]
    assert all(greedy is False for _, greedy in scores)  # is_check_greedy off
    assert len(store.records) == 4 and all(r["kind"] == "loglikelihood" for r in store.records.values())
    again = DiffusionLM(model, tok, "vanilla", store=RunStore(tmp_path), progress=False, likelihood=settings)
    again._score_continuation = None  # any recomputation would fail
    assert again.loglikelihood(requests) == scores


def test_without_a_length_each_request_gets_its_max_gen_toks():
    model, tok = _tiny()
    lm = DiffusionLM(model, tok, "vanilla", progress=False)
    sample = held_out_samples("copy", 1)[0]
    requests = [
        Instance("generate_until", {}, (sample.prompt, {"until": [], "max_gen_toks": length}), 0, ("t", i, 1))
        for i, length in enumerate((32, 8))
    ]
    long, short = lm.generate_until(requests)
    assert long == sample.answer and short == sample.answer[:8]


# ------------------------------------------------------------------ the real CLI
def _write_tasks(folder: Path, docs: int) -> None:
    copies = [{"input": s.prompt, "target": s.target} for s in held_out_samples("copy", docs)]
    (folder / "copy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in copies))
    (folder / "passkey.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _passkey_choices(docs)))
    common = "test_split: test\ndoc_to_text: '{{input}}'\nmetadata: {version: 1.0}\n"
    (folder / "tiny_copy_gen.yaml").write_text(
        f"task: tiny_copy_gen\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {folder / 'copy.jsonl'}}}}}\n"
        "output_type: generate_until\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs: {until: [], max_gen_toks: 32}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n" + common
    )
    (folder / "tiny_passkey_mc.yaml").write_text(
        f"task: tiny_passkey_mc\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {folder / 'passkey.jsonl'}}}}}\n"
        "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\n" + common
    )


@pytest.mark.slow
def test_the_lm_eval_cli_runs_a_generation_and_a_multiple_choice_task(tmp_path):
    """`python -m dllm_accel.lm_eval` is lm-eval's own CLI; a method preset with sampler overrides."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write_tasks(tasks, docs=3)
    model_args = (
        f"pretrained={TINY},method=fast_dllm_dual,threshold=0.9,gen_length=32,steps=32,block_length=8,"
        "mc_num=4,mc_batch_size=4,dtype=float32"
    )
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        sys.executable, "-m", "dllm_accel.lm_eval", "--model", "dllm_accel", "--model_args", model_args,
        "--tasks", "tiny_copy_gen,tiny_passkey_mc", "--include_path", str(tasks),
        "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny_passkey_mc" in done.stdout and "exact_match" in done.stdout  # lm-eval's own table
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["tiny_copy_gen"]["exact_match,none"] == 1.0
    assert results["results"]["tiny_passkey_mc"]["acc,none"] == 1.0
    config = results["config"]
    assert config["method"] == "fast_dllm" and config["method_options"]["mode"] == "dual"
    assert config["sampler"]["threshold"] == 0.9 and config["likelihood"]["mc_num"] == 4
