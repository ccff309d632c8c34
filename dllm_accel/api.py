"""``generate``: the entry point users of the official samplers already know."""

from __future__ import annotations

from typing import Any

import torch

from .generation import GenerationOutput, SamplerSettings, denoise
from .methods import ForwardStrategy, build_method
from .methods.registry import config_fields
from .models.core import DiffusionTransformer


def generate(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
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
    """
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
