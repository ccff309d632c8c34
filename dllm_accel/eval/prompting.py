"""Prompt conventions and answer post-processing, as each paper's evaluation wrapper did them."""

from __future__ import annotations

from dataclasses import dataclass, field

PROMPT_STYLES = ("auto", "plain", "chat", "multiturn")


@dataclass(frozen=True)
class PromptFormat:
    """See ``eval.schema.PromptCfg``; ``style`` is already resolved (never ``auto``)."""

    style: str = "plain"
    add_bos: bool = False
    system: str | None = None
    raw_for_humaneval: bool = False


@dataclass(frozen=True)
class DecodeFormat:
    """See ``eval.schema.DecodeCfg``."""

    cut_at_eos: bool = False
    skip_special_tokens: bool = True
    apply_until: bool = True
    extra_until: tuple[str, ...] = field(default_factory=tuple)
    strip: bool = False


def resolve_style(style: str, instruct: bool) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt.style {style!r} (accepted: {', '.join(PROMPT_STYLES)})")
    if style == "auto":
        return "chat" if instruct else "plain"
    return style


def render_prompt(context: str, tokenizer, fmt: PromptFormat, task_id: str | None = None) -> str:
    """The exact text the model's tokenizer receives.

    ``chat`` wraps the whole lm-eval context (few-shot examples included) as one user message;
    ``multiturn`` contexts come from lm-eval already templated; ``plain`` passes them through.
    """
    raw = fmt.raw_for_humaneval and str(task_id or "").startswith("HumanEval")
    if fmt.style == "chat" and not raw:
        messages = [] if fmt.system is None else [{"role": "system", "content": fmt.system}]
        messages.append({"role": "user", "content": context})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if fmt.add_bos and tokenizer.bos_token:
        return tokenizer.bos_token + context
    return context


def encode(tokenizer, text: str) -> list[int]:
    """Token ids with the tokenizer's default special-token handling, as the official wrappers call it."""
    return list(tokenizer(text)["input_ids"])


def cut_at_stops(text: str, stops: list[str] | tuple[str, ...]) -> str:
    """Everything before the earliest stop string (lm-eval's ``until``)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def finish(
    generated: list[int],
    tokenizer,
    fmt: DecodeFormat,
    until: list[str],
    eos: int,
    eot: int | None,
) -> tuple[str, list[int]]:
    """Answer text for lm-eval and the re-tokenized answer ids (Fast-dLLM's token count).

    The answer ids follow Fast-dLLM LLaDA: decode keeping special tokens, cut at ``until``,
    tokenize again.
    """
    ids = list(generated)
    if fmt.cut_at_eos:
        ends = [i for i, t in enumerate(ids) if t == eos or (eot is not None and t == eot)]
        ids = ids[: ends[0]] if ends else ids
    stops = list(until) + list(fmt.extra_until) if fmt.apply_until else list(fmt.extra_until)
    text = cut_at_stops(tokenizer.decode(ids, skip_special_tokens=fmt.skip_special_tokens), stops)
    if fmt.strip:
        text = text.strip()
    kept = cut_at_stops(tokenizer.decode(ids, skip_special_tokens=False), stops)
    return text, encode(tokenizer, kept)
