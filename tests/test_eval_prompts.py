"""Rendered prompts and token counts against strings derived from the official templates."""

from __future__ import annotations

import json
from functools import cache

import lm_eval
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from dllm_accel.eval.byte_tokenizer import ByteTokenizer, chat_text
from dllm_accel.eval.data import default_data_dir, materialize_tasks, read_jsonl
from dllm_accel.eval.gsm8k import SHOTS_1DCE88, SHOTS_17D0DC, oc_17d0dc_answer
from dllm_accel.eval.prompting import DecodeFormat, PromptFormat, encode, finish, render_prompt
from dllm_accel.models import load_spec, load_tokenizer
from dllm_accel.paths import fixtures_dir, tiny_checkpoint
from dllm_accel.results import prompt_hash

DATA = default_data_dir()
TOKENIZERS = fixtures_dir() / "tokenizers"
QUESTION = "What is 2+2?"
DREAM_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLADA_CHAT = (
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# tokenizers/README.md: lm-eval-style 5-shot GSM8K (first 5 train rows) under the Dream tokenizer
DREAM_COUNTS = {0: (726, 745), 1: (688, 707), 2: (719, 738), 3: (697, 716), 4: (773, 792)}


class CapturingLM(LM):
    def __init__(self, chat_tokenizer=None) -> None:
        super().__init__()
        self.contexts: dict[int, str] = {}
        self.chat_tokenizer = chat_tokenizer

    def generate_until(self, requests):
        for request in requests:
            self.contexts[request.doc_id] = request.args[0]
        return ["" for _ in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    @property
    def tokenizer_name(self) -> str:
        return "dream"

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return self.chat_tokenizer.apply_chat_template(
            chat_history, add_generation_prompt=add_generation_prompt, tokenize=False
        )


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    tasks = TaskManager(
        include_path=str(materialize_tasks(tmp_path_factory.mktemp("tasks"), DATA)), include_defaults=False
    )

    def run(task: str, limit: int = 1, lm: CapturingLM | None = None, **kwargs) -> dict[int, str]:
        lm = lm or CapturingLM()
        lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=tasks, bootstrap_iters=0, **kwargs)
        return lm.contexts

    return run


@cache
def _rows(split: str) -> list[dict]:
    return read_jsonl(DATA / "gsm8k" / f"{split}.jsonl.gz")


@cache
def dream_tokenizer():
    return load_tokenizer(TOKENIZERS / "dream")


def test_gsm8k_5shot_prompt_is_lm_evals_format_over_train_rows(contexts):
    context = contexts("dllm_gsm8k")[0]
    *shots, query = context.split("\n\nQuestion: ")
    assert query == _rows("test")[0]["question"] + "\nAnswer:"
    assert len(shots) == 5
    train = {f"{r['question']}\nAnswer: {r['answer']}" for r in _rows("train")}
    assert shots[0].startswith("Question: ")
    assert {shots[0].removeprefix("Question: "), *shots[1:]} <= train


def test_opencompass_1dce88_prompt_matches_its_template(contexts):
    shots = "".join(
        f"Question: {_rows('train')[i]['question']}\nAnswer: {_rows('train')[i]['answer']}\n\n" for i in SHOTS_1DCE88
    )
    expected = shots + f"Question: {_rows('test')[0]['question']}\nAnswer:"
    assert contexts("dllm_gsm8k_oc_1dce88")[0] == expected
    assert expected.startswith("Question: Jen and Tyler are gymnasts practicing flips.")


def test_opencompass_17d0dc_prompt_joins_the_rounds_without_separator(contexts):
    rounds = [
        f"Question: {_rows('train')[i]['question']}\nLet's think step by step\nAnswer:"
        + oc_17d0dc_answer(_rows("train")[i]["answer"])
        for i in SHOTS_17D0DC
    ]
    expected = "".join(rounds) + f"Question: {_rows('test')[0]['question']}\nLet's think step by step\nAnswer:"
    assert contexts("dllm_gsm8k_oc_17d0dc")[0] == expected


def test_dream_instruct_chat_template():
    chat = PromptFormat(style="chat")
    assert render_prompt(QUESTION, dream_tokenizer(), chat) == DREAM_CHAT
    assert chat_text("dream", [{"role": "user", "content": QUESTION}]) == DREAM_CHAT


def test_llada_instruct_chat_template_from_its_tokenizer_config():
    config = json.loads((TOKENIZERS / "llada" / "tokenizer_config.json").read_text())
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    official = environment.from_string(config["chat_template"]).render(
        messages=[{"role": "user", "content": QUESTION}], bos_token=config["bos_token"], add_generation_prompt=True
    )
    assert official == LLADA_CHAT
    assert chat_text("llada", [{"role": "user", "content": QUESTION}]) == LLADA_CHAT
    byte = ByteTokenizer(load_spec(tiny_checkpoint("llada"))[0])
    assert render_prompt(QUESTION, byte, PromptFormat(style="chat")) == LLADA_CHAT


@pytest.mark.parametrize("row", sorted(DREAM_COUNTS))
def test_dream_token_counts_plain_and_chat(row):
    shots = "\n\n".join(f"Question: {r['question']}\nAnswer: {r['answer']}" for r in _rows("train")[:5])
    context = shots + f"\n\nQuestion: {_rows('test')[row]['question']}\nAnswer:"
    tokenizer = dream_tokenizer()
    plain = len(encode(tokenizer, render_prompt(context, tokenizer, PromptFormat(style="plain"))))
    chat = len(encode(tokenizer, render_prompt(context, tokenizer, PromptFormat(style="chat"))))
    assert (plain, chat) == DREAM_COUNTS[row]


def test_multiturn_few_shot_becomes_chat_turns(contexts):
    tokenizer = dream_tokenizer()
    context = contexts(
        "dllm_gsm8k", lm=CapturingLM(tokenizer), apply_chat_template=True, fewshot_as_multiturn=True, num_fewshot=2
    )[0]
    assert context.count("<|im_start|>user\n") == 3 and context.count("<|im_start|>assistant\n") == 3
    assert context.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQuestion: "
    )
    assert context.endswith(f"Question: {_rows('test')[0]['question']}\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


def test_add_bos_and_the_humaneval_exception():
    tokenizer = dream_tokenizer()
    assert render_prompt("def f():", tokenizer, PromptFormat(style="plain", add_bos=True)) == "<|beginoftext|>def f():"
    dyllm = PromptFormat(style="chat", raw_for_humaneval=True)
    assert render_prompt("def f():", tokenizer, dyllm, task_id="HumanEval/3") == "def f():"
    assert render_prompt("def f():", tokenizer, dyllm, task_id="Mbpp/3").startswith("<|im_start|>system")


def test_prompt_hash_sees_a_whitespace_change():
    assert prompt_hash("Question: 1\nAnswer:") != prompt_hash("Question: 1\nAnswer: ")
    assert prompt_hash("Question: 1\nAnswer:") == prompt_hash("Question: 1\nAnswer:")


def test_byte_tokenizer_round_trip_and_special_ids():
    llada = ByteTokenizer(load_spec(tiny_checkpoint("llada"))[0])
    ids = llada.encode("<|startoftext|>héllo<|eot_id|>")
    assert ids[0] == 1664 and ids[-1] == 1932 and all(i < 256 for i in ids[1:-1])
    assert llada.decode(ids) == "<|startoftext|>héllo<|eot_id|>"
    assert llada.decode(ids, skip_special_tokens=True) == "héllo"
    assert llada.decode([300, 1000]) == chr(32 + 300 % 95) + chr(32 + 1000 % 95)
    dream = ByteTokenizer(load_spec(tiny_checkpoint("dream"))[0])
    assert dream.encode("<|im_start|><|im_end|><|mask|><|endoftext|>") == [1628, 1629, 1650, 1627]


def test_answers_are_cut_as_the_papers_cut_them():
    dream = ByteTokenizer(load_spec(tiny_checkpoint("dream"))[0])
    generated = dream.encode("x = 1\nQuestion: y") + [1627] + dream.encode("tail")
    lm_eval_style = finish(generated, dream, DecodeFormat(), ["Question:"], eos=1627, eot=1629)
    assert lm_eval_style[0] == "x = 1\n"
    dream_official = finish(generated, dream, DecodeFormat(cut_at_eos=True, apply_until=False), [], eos=1627, eot=1629)
    assert dream_official[0] == "x = 1\nQuestion: y"
    kept = finish(dream.encode("a") + [1627, 1627], dream, DecodeFormat(), [], eos=1627, eot=1629)
    assert kept[0] == "a" and kept[1] == dream.encode("a") + [1627, 1627]
