"""``generate``: the entry point users of the official samplers already know."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .generation import GenerationOutput, SamplerSettings, denoise
from .generation.block_diffusion import BlockDiffusionSettings, block_diffusion_generate
from .methods import ForwardStrategy, build_method
from .methods.registry import config_fields
from .models.core import DiffusionTransformer


def generate(
    model: DiffusionTransformer,
    input_ids: torch.Tensor | Mapping[str, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    method: str | ForwardStrategy = "vanilla",
    **settings: Any,
) -> GenerationOutput:
    """Generate with a method and the official sampler options.

    ``settings`` are sampler options under their official names (``steps``,
    ``gen_length``/``max_new_tokens``, ``block_length``, ``temperature``, ``cfg_scale``,
    ``remasking``, ``alg``, ...; see ``SamplerSettings``) and, when ``method`` is a name,
    that method's own config fields. A name that is both goes to the named method (DyLLM's
    saliency ``threshold`` versus the sampler's decoding one); to give it to the sampler,
    pass a built strategy as ``method``.

    ``input_ids`` may also be what a tokenizer returns (a ``BatchEncoding`` or any mapping with
    ``input_ids`` and optionally ``attention_mask``): recent transformers return one from
    ``apply_chat_template(..., return_tensors="pt")``.
    """
    input_ids, attention_mask = _unpack_inputs(input_ids, attention_mask)
    if model.spec.block_causal:
        return _block_causal_generate(model, input_ids, attention_mask, method, settings)
    sampler_names = SamplerSettings.names() - (config_fields(method) if isinstance(method, str) else set())
    sampler = {k: v for k, v in settings.items() if k in sampler_names}
    rest = {k: v for k, v in settings.items() if k not in sampler_names}
    if isinstance(method, str):
        strategy = build_method(method, **rest)
    else:
        if rest:
            raise ValueError(f"unknown setting {sorted(rest)[0]!r} (method options go into the strategy's config)")
        strategy = method
    if rest and not set(rest) <= config_fields(strategy.name):
        raise ValueError(f"unknown setting {sorted(rest)[0]!r}")
    return denoise(model, input_ids, attention_mask, strategy, SamplerSettings(**sampler))


def _unpack_inputs(
    input_ids: torch.Tensor | Mapping[str, torch.Tensor], attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise TypeError(f"input_ids is a mapping without an 'input_ids' entry (keys: {sorted(input_ids)})")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"input_ids must be a [batch, length] tensor or a tokenizer's output, got {type(input_ids).__name__}"
        )
    return input_ids, attention_mask


def _block_causal_generate(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    method: str | ForwardStrategy,
    settings: dict[str, Any],
) -> GenerationOutput:
    """LLaDA2.x: the family's block-diffusion sampler is what ``vanilla`` means; no other method runs."""
    strategy = build_method(method) if isinstance(method, str) else method
    if strategy.name != "vanilla":
        raise ValueError(
            f"method {strategy.name!r} cannot run on block-causal {model.spec.family}: {strategy.block_causal_reason}"
        )
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(
            f"{model.spec.family} block diffusion takes unpadded prompts of one length (the official sampler is batch-1); "
            "run prompts of different lengths separately"
        )
    return block_diffusion_generate(model, input_ids, BlockDiffusionSettings.from_options(dict(settings)))
