"""DiffusionLM on the tiny checkpoints: batching, per-sample statuses, resume; long-context data."""

from __future__ import annotations

import re
from functools import cache

import pytest
import torch
import yaml
from lm_eval.api.instance import Instance

from dllm_accel.eval import lm as lm_module
from dllm_accel.eval import longctx
from dllm_accel.eval.byte_tokenizer import ByteTokenizer
from dllm_accel.eval.data import default_data_dir
from dllm_accel.eval.lm import DiffusionLM
from dllm_accel.eval.prompting import PromptFormat, encode, render_prompt
from dllm_accel.generation.rules import rule_class
from dllm_accel.methods import available_methods, method_class
from dllm_accel.models import load_model, load_tokenizer
from dllm_accel.paths import REPO_ROOT, fixtures_dir, tiny_checkpoint
from dllm_accel.results import RunStore

CONTEXTS = [
    "Question: 2+2?\nAnswer:",
    "Q: name a colour.",
    "Question: a much longer prompt about ducks that lay 16 eggs a day?\nAnswer:",
    "Hi",
]
SAMPLER = {"gen_length": 32, "steps": 32, "block_length": 8}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from threads, and on a shared 2-core host they oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@cache
def _model(family: str):
    return load_model(tiny_checkpoint(family), dtype=torch.float32)


def _requests(contexts=CONTEXTS, task: str = "t") -> list[Instance]:
    return [Instance("generate_until", {}, (c, {"until": []}), 0, (task, i, 1)) for i, c in enumerate(contexts)]


def _lm(family: str, method: str = "vanilla", **kwargs) -> DiffusionLM:
    model = _model(family)
    options = {"honour_padding_mask": True} if "honour_padding_mask" in _fields(method) else {}
    kwargs = {"sampler": SAMPLER, "progress": False} | kwargs
    return DiffusionLM(model, ByteTokenizer(model.spec), method, options=options, **kwargs)


def _fields(method: str) -> set[str]:
    return set(method_class(method).Config.__dataclass_fields__)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("method", available_methods())
def test_left_padded_batches_give_the_batch_1_answers(family, method):
    """Identical completions for every prompt imply identical accuracy under any scorer; a method that
    cannot promise that refuses padded batches in one line instead."""
    sampler = SAMPLER | _preset_decoding(method)
    try:
        single = _lm(family, method, batch_size=1, sampler=sampler).generate_until(_requests())
    except ValueError as err:  # the method (or its preset's rule) does not run on this family: nor batched
        with pytest.raises(ValueError, match=re.escape(str(err))):
            _lm(family, method, batch_size=3, sampler=sampler).generate_until(_requests())
        return
    if not method_class(method).supports_padding:
        with pytest.raises(ValueError, match=f"method '{method}' does not run left-padded batches"):
            _lm(family, method, batch_size=3, sampler=sampler).generate_until(_requests())
        return
    batched = _lm(family, method, batch_size=3, sampler=sampler).generate_until(_requests())
    rule = sampler.get("policy")
    if rule is not None and rule_class(rule).draws_per_batch:
        # its commits are random draws over the batch: the padded batch answers every prompt, and repeats
        again = _lm(family, method, batch_size=3, sampler=sampler).generate_until(_requests())
        assert batched == again and len(batched) == len(single)
        return
    assert batched == single


def _preset_decoding(method: str) -> dict:
    """The decoding rule a method's own preset names (a method may accept only its own rule)."""
    path = REPO_ROOT / "conf" / "method" / f"{method}.yaml"
    sampler = (yaml.safe_load(path.read_text()).get("sampler") or {}) if path.is_file() else {}
    return {k: v for k, v in sampler.items() if k in ("policy", "policy_options", "alg")}


def test_a_prompt_longer_than_the_context_is_a_sample_error(tmp_path):
    store = RunStore(tmp_path)
    contexts = ["short", "x" * 5000, "also short"]
    answers = _lm("llada", store=store).generate_until(_requests(contexts))
    statuses = {r["doc_id"]: r["status"] for r in store.records.values()}
    assert statuses == {0: "ok", 1: "error", 2: "ok"}
    assert answers[1] == "" and "prompt_too_long" in store.records["t/1/0"]["error"]
    assert "exceed the model's context of 4096" in store.records["t/1/0"]["error"]


def test_out_of_memory_and_timeouts_are_sample_statuses(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "oom")

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(lm_module, "generate", exhausted)
    assert _lm("dream", store=store).generate_until(_requests(CONTEXTS[:2])) == ["", ""]
    assert {r["status"] for r in store.records.values()} == {"oom"}
    monkeypatch.undo()
    slow = RunStore(tmp_path / "slow")
    _lm("llada", store=slow, generation_timeout_s=0.001, sampler={"gen_length": 256, "steps": 256}).generate_until(
        _requests(CONTEXTS[:1])
    )
    assert slow.records["t/0/0"]["status"] == "timeout"


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")],
)
def test_a_cpu_out_of_memory_is_a_sample_status_and_retried_on_request(tmp_path, monkeypatch, error):
    store = RunStore(tmp_path)

    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(lm_module, "generate", exhausted)
    assert _lm("llada", store=store).generate_until(_requests(CONTEXTS[:2])) == ["", ""]
    assert {r["status"] for r in store.records.values()} == {"oom"}
    monkeypatch.undo()
    kept = RunStore(tmp_path)
    _lm("llada", store=kept).generate_until(_requests(CONTEXTS[:2]))
    assert {r["status"] for r in RunStore(tmp_path).records.values()} == {"oom"}  # stored failures stand
    _lm("llada", store=RunStore(tmp_path, retry_failed=True)).generate_until(_requests(CONTEXTS[:2]))
    assert {r["status"] for r in RunStore(tmp_path).records.values()} == {"ok"}


def test_finished_samples_are_answered_from_the_store(tmp_path, monkeypatch):
    first = _lm("llada", store=RunStore(tmp_path)).generate_until(_requests())

    def never(*args, **kwargs):
        raise AssertionError("a finished sample was generated again")

    monkeypatch.setattr(lm_module, "generate", never)
    assert _lm("llada", store=RunStore(tmp_path)).generate_until(_requests()) == first


def test_model_info_and_single_process_collectives():
    lm = _lm("llada")
    info = lm.get_model_info()
    assert info["method"] == "vanilla" and info["sampler"]["gen_length"] == 32 and info["batch_size"] == 1
    assert lm.rank == 0 and lm.world_size == 1
    assert lm.all_gather(torch.tensor([3])).tolist() == [[3]] and lm.gather_object("x") == ["x"]
    assert lm.loglikelihood([]) == []  # multiple choice: tests/test_lm_eval_model.py
    with pytest.raises(NotImplementedError, match="no left-to-right factorisation"):
        lm.loglikelihood_rolling([])


def test_unknown_method_and_bad_batch_size_are_refused():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        _lm("llada", "nope")
    with pytest.raises(ValueError, match="batch_size=0"):
        _lm("llada", batch_size=0)


# ------------------------------------------------------------------ synthetic long context
@cache
def _dream_tokenizer():
    return load_tokenizer(fixtures_dir() / "tokenizers" / "dream")


def _samples(task: str, tokenizer, fmt: PromptFormat, length: int = 512, depths=(0.0, 0.5, 1.0), haystack="noise"):
    units = longctx.haystack_units(haystack, default_data_dir())
    return longctx.build_samples(
        task,
        [length],
        list(depths),
        1,
        seed=7,
        units=units,
        count_tokens=lambda text: len(encode(tokenizer, render_prompt(text, tokenizer, fmt))),
        gen_length=32,
    )


@pytest.mark.parametrize("task", longctx.TASKS)
def test_long_context_samples_fill_the_budget_in_the_models_own_tokens(task):
    tokenizer, chat = _dream_tokenizer(), PromptFormat(style="chat")
    samples = _samples(task, tokenizer, chat)
    assert samples == _samples(task, tokenizer, chat)  # a pure function of its inputs
    for sample in samples:
        total = len(encode(tokenizer, render_prompt(sample["input"], tokenizer, chat)))
        assert total == sample["prompt_tokens"] and 512 - 32 - 25 < total <= 512 - 32
        assert all(answer in sample["input"] or task == "variable_tracking" for answer in sample["answers"])
    assert len({s["uid"] for s in samples}) == len(samples)


def test_passkey_depth_places_the_needle():
    tokenizer = ByteTokenizer(_model("llada").spec)
    shallow, deep = _samples("passkey", tokenizer, PromptFormat(style="plain"), length=2048, depths=(0.0, 1.0))
    key = shallow["answers"][0]
    assert shallow["input"].index(f"The pass key is {key}") < 300
    assert deep["input"].index(f"The pass key is {deep['answers'][0]}") > len(deep["input"]) - 400


def test_variable_tracking_chain_is_in_order_and_natural_haystacks_work():
    (sample,) = _samples(
        "variable_tracking", _dream_tokenizer(), PromptFormat(style="plain"), depths=(0.5,), haystack="gsm8k"
    )
    names = sample["answers"]
    positions = [sample["input"].index(f"VAR {name} =") for name in names]
    assert positions == sorted(positions) and len(set(names)) == 5
