"""A byte-level tokenizer for the tiny parity checkpoints, which ship none.

Ids 0-255 are the UTF-8 bytes; the family's special tokens keep the fixtures' ids (mask,
eos, bos, eot and the chat markers), so chat-templated prompts reach the model with the
right special ids. A random-weight model emits any id below its vocabulary: ids that are
neither a byte nor a special token decode to one printable ASCII character
(``chr(32 + id % 95)``) so outputs stay readable text.
"""

from __future__ import annotations

import re

from ..models.families import adapter_named
from ..models.spec import ModelSpec

_CHAT_MARKERS = {
    "llada": ("<|start_header_id|>", "<|end_header_id|>"),
    "dream": ("<|im_start|>", "<|im_end|>"),
}
_NAMES = {
    "llada": {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "mask": "<|mdm_mask|>", "eot": "<|eot_id|>"},
    "dream": {"bos": "<|beginoftext|>", "eos": "<|endoftext|>", "mask": "<|mask|>", "eot": "<|im_end|>"},
}


class ByteTokenizer:
    """The subset of the Hugging Face tokenizer interface the evaluator uses."""

    name_or_path = "dllm-accel/byte"
    padding_side = "left"

    def __init__(self, spec: ModelSpec) -> None:
        if spec.family not in _NAMES:
            raise ValueError(f"no byte tokenizer for family {spec.family!r} (accepted: {', '.join(_NAMES)})")
        self.family = spec.family
        names = _NAMES[spec.family]
        tokens = spec.tokens
        self.special: dict[str, int] = {names["eos"]: tokens.eos, names["mask"]: tokens.mask}
        if tokens.bos is not None:
            self.special[names["bos"]] = tokens.bos
        if tokens.eot is not None:
            self.special[names["eot"]] = tokens.eot
        if spec.family == "llada":
            self.special["<|start_header_id|>"] = tokens.eot - 2
            self.special["<|end_header_id|>"] = tokens.eot - 1
        else:
            self.special["<|im_start|>"] = tokens.eot - 1
        if min(self.special.values()) < 256 or max(self.special.values()) >= spec.vocab_size:
            raise ValueError(
                f"special ids {sorted(self.special.values())} do not fit a byte vocabulary of {spec.vocab_size}"
            )
        self.id_to_special = {v: k for k, v in self.special.items()}
        self.vocab_size = spec.vocab_size
        self.eos_token, self.eos_token_id = names["eos"], tokens.eos
        self.bos_token = names["bos"] if tokens.bos is not None else None
        self.bos_token_id = tokens.bos
        self.pad_token_id = tokens.pad
        self.mask_token_id = tokens.mask
        self._split = re.compile(
            "(" + "|".join(re.escape(s) for s in sorted(self.special, key=len, reverse=True)) + ")"
        )

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self.id_to_special)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self.special:
                ids.append(self.special[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out, pending = [], bytearray()
        for token in (int(t) for t in ids):
            if token < 256:
                pending.append(token)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            if token in self.id_to_special:
                out.append("" if skip_special_tokens else self.id_to_special[token])
            else:
                out.append(chr(32 + token % 95))
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False, **_: object
    ):
        """The family's official template (LLaDA Llama-3 style, Dream ChatML), as text or ids."""
        text = chat_text(self.family, messages, add_generation_prompt)
        return self.encode(text) if tokenize else text


def chat_text(family: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render a conversation with the family's chat template (one or more turns)."""
    adapter = adapter_named(family)
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1 and turns[0]["role"] == "user" and add_generation_prompt:
        return adapter.format_chat(turns[0]["content"], system)
    start, end = _CHAT_MARKERS[family]
    if family == "llada":
        text = "<|startoftext|>"
        for m in ([{"role": "system", "content": system}] if system is not None else []) + turns:
            text += f"{start}{m['role']}{end}\n\n{m['content'].strip()}<|eot_id|>"
        return text + f"{start}assistant{end}\n\n"
    text = f"{start}system\n{'You are a helpful assistant.' if system is None else system}{end}\n"
    for m in turns:
        text += f"{start}{m['role']}\n{m['content']}{end}\n"
    return text + (f"{start}assistant\n" if add_generation_prompt else "")


def build_tokenizer(choice: str | None, checkpoint: str, spec: ModelSpec):
    """``byte``: this tokenizer; a directory or hub id: that tokenizer; ``None``: the checkpoint's own."""
    if choice == "byte":
        return ByteTokenizer(spec)
    from ..models import load_tokenizer

    return load_tokenizer(choice or checkpoint)
