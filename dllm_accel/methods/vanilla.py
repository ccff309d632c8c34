"""Vanilla: the full sequence through the full model at every step (the official samplers)."""

from __future__ import annotations

import torch

from ..generation.canvas import Canvas
from ..models.core import DiffusionTransformer
from .base import ForwardStrategy, dense_pass
from .registry import register
from .verification import verification_logits


@register
class Vanilla(ForwardStrategy):
    name = "vanilla"
    supports_cfg = True

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.verifying = False
        self.verified: torch.Tensor | None = None

    def request_verification(self) -> None:
        """WINO: from now on each pass also computes the block's leave-one-out logits (``verified``)."""
        self.verifying = True

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        if self.verifying:
            logits, self.verified = verification_logits(model, canvas)
            return logits, slice(0, canvas.length)
        return dense_pass(model, canvas)
