"""A byte-level tokenizer with LLaDA's special-token roles, for the tiny trained model.

Every byte is one token (ids 0-255), so any text round-trips and lengths are counted in
characters for ASCII. The special tokens keep LLaDA's names and order after the bytes, so
the LLaDA adapter finds bos, eos, eot and the mask exactly as it does for the 8B model.
"""

from __future__ import annotations

import json
from pathlib import Path

BYTE_VOCAB = 256
SPECIAL_TOKENS = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mdm_mask|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
SPECIAL_IDS = {token: BYTE_VOCAB + i for i, token in enumerate(SPECIAL_TOKENS)}
BOS_ID = SPECIAL_IDS["<|startoftext|>"]
EOS_ID = SPECIAL_IDS["<|endoftext|>"]
MASK_ID = SPECIAL_IDS["<|mdm_mask|>"]
EOT_ID = SPECIAL_IDS["<|eot_id|>"]
TOKENIZER_SIZE = BYTE_VOCAB + len(SPECIAL_TOKENS)
# The embedding is padded to a multiple of 8, as LLaDA pads 126349 tokens to 126464 rows.
EMBEDDING_SIZE = -(-TOKENIZER_SIZE // 8) * 8

# LLaDA-8B-Instruct's template, so chat-formatted prompts tokenize as they would for the 8B model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)


def byte_symbols() -> list[str]:
    """The printable character standing for each byte (GPT-2's byte-level alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(BYTE_VOCAB):
        if b not in symbols:
            symbols[b] = chr(BYTE_VOCAB + extra)
            extra += 1
    return [symbols[b] for b in range(BYTE_VOCAB)]


def build_core_tokenizer():
    """The ``tokenizers`` object: bytes as ids 0-255, then LLaDA's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(byte_symbols())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    return core


def _token_entry(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def tokenizer_config() -> dict:
    """tokenizer_config.json in the schema of LLaDA-8B-Instruct's hub file (any transformers reads it)."""
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _token_entry(t) for t, i in SPECIAL_IDS.items()},
        "bos_token": "<|startoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "mask_token": "<|mdm_mask|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_tokens_map() -> dict:
    roles = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}
    roles["pad_token"] = "<|endoftext|>"
    return {role: {k: v for k, v in _token_entry(t).items() if k != "special"} for role, t in roles.items()}


def save_tokenizer(directory: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (byte-stable)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_core_tokenizer().save(str(directory / "tokenizer.json"), pretty=True)
    for name, content in (
        ("tokenizer_config.json", tokenizer_config()),
        ("special_tokens_map.json", special_tokens_map()),
    ):
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
