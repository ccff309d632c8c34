"""Vanilla: the full sequence through the full model at every step (the official samplers)."""

from __future__ import annotations

import torch

from ..generation.canvas import Canvas
from ..models.core import DiffusionTransformer
from .base import ForwardStrategy, dense_logits
from .registry import register


@register
class Vanilla(ForwardStrategy):
    name = "vanilla"
    supports_cfg = True

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        return dense_logits(model, canvas), slice(0, canvas.length)
