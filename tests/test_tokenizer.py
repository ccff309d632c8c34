"""Tokenizers load from checkpoint files without remote code; chat templates match the official ones."""

from __future__ import annotations

import json
import shutil

import jinja2
import pytest

from dllm_accel.models import CheckpointError, adapter_named, load_tokenizer
from dllm_accel.paths import fixtures_dir

TOKENIZERS = fixtures_dir() / "tokenizers"


@pytest.fixture(scope="module")
def dream_tokenizer():
    return load_tokenizer(TOKENIZERS / "dream")


def test_dream_tokenizer_is_qwen2_bpe_with_the_official_ids(dream_tokenizer):
    # transformers 5 folds Qwen2TokenizerFast into Qwen2Tokenizer (tokenizers backend)
    assert type(dream_tokenizer).__name__.startswith("Qwen2Tokenizer") and dream_tokenizer.is_fast
    assert len(dream_tokenizer) == 151667
    ids = dream_tokenizer.convert_tokens_to_ids(["<|mask|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>"])
    assert ids == [151666, 151643, 151644, 151645, 151665]
    text = "Question: what is 12 * 7?\nAnswer:"
    assert dream_tokenizer.decode(dream_tokenizer(text)["input_ids"]) == text


def test_dream_chat_template_matches_the_hub_template(dream_tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    hub = dream_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert hub == adapter_named("dream").format_chat("What is 2+2?", None)
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    hub = dream_tokenizer.apply_chat_template(with_system, add_generation_prompt=True, tokenize=False)
    assert hub == adapter_named("dream").format_chat("What is 2+2?", "Be brief.")


def _render_llada(messages):
    config = json.loads((TOKENIZERS / "llada" / "tokenizer_config.json").read_text())
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])
    return template.render(messages=messages, bos_token=config["bos_token"], add_generation_prompt=True)


def test_llada_chat_template_matches_the_hub_template():
    expected = (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert _render_llada([{"role": "user", "content": "  What is 2+2? "}]) == expected
    assert adapter_named("llada").format_chat("  What is 2+2? ", None) == expected


def test_llada_special_ids_in_tokenizer_config():
    decoder = json.loads((TOKENIZERS / "llada" / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    ids = {entry["content"]: int(i) for i, entry in decoder.items()}
    assert ids["<|mdm_mask|>"] == 126336
    assert ids["<|endoftext|>"] == 126081
    assert ids["<|eot_id|>"] == 126348
    assert ids["<|startoftext|>"] == 126080


def test_llada_without_tokenizer_json_says_so(tmp_path):
    shutil.copytree(TOKENIZERS / "llada", tmp_path / "llada")
    with pytest.raises(CheckpointError, match="needs tokenizer.json"):
        load_tokenizer(tmp_path / "llada")


def test_checkpoint_without_tokenizer_says_so():
    with pytest.raises(CheckpointError, match="no tokenizer_config.json"):
        load_tokenizer(fixtures_dir() / "llada-tiny")
