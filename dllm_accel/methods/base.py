"""The contract every compute-reuse method implements.

A method decides, per step, which rows (and, inside the model, which layers and tokens)
to recompute and what to reuse; the loop and the decoding policy do the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..generation.canvas import Canvas, Commit
from ..generation.policies import DecodingPolicy
from ..models.core import DiffusionTransformer


@dataclass
class MethodConfig:
    """Settings of a method; subclasses add fields (documented where they are declared)."""


class ForwardStrategy(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    supports_cfg: ClassVar[bool] = False
    # why the method cannot drive a block-causal model (LLaDA2), which decodes with its own sampler
    block_causal_reason: ClassVar[str] = (
        "it reuses what bidirectional full-sequence passes computed, and that reuse has not been "
        "adapted to block-causal attention, where the block-diffusion sampler's prefix cache is already exact"
    )

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def check(self, canvas: Canvas) -> None:
        """Reject sampler settings this method cannot honour, before any forward."""
        if canvas.settings.cfg_scale > 0 and not self.supports_cfg:
            raise ValueError(f"method {self.name!r} does not support cfg_scale > 0 (got {canvas.settings.cfg_scale})")

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        """The policy the loop decodes with; a method whose passes cannot score some
        positions (e.g. Dream's shifted first block row in block-only passes) wraps it."""
        return policy

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        """Called once before the first block (allocate caches here)."""

    def begin_block(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        """Called when a new block starts."""

    @abstractmethod
    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        """Logits [B, R, V] for a contiguous range of positions (``rows``), shift applied."""

    def after_commit(self, canvas: Canvas, commit: Commit) -> None:
        """Called after the loop wrote a commit into ``canvas.x``."""

    def finish(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        """Called once after the last step: statistics kept on the device are read here, once."""


def dense_logits(model: DiffusionTransformer, canvas: Canvas) -> torch.Tensor:
    """One full-sequence pass, with LLaDA-style classifier-free guidance when asked for.

    Guidance batches ``[x; x with every prompt position masked]`` and combines
    ``un + (cfg + 1) * (cond - un)``, as the official ``generate.py``.
    """
    x = canvas.x
    key_mask = canvas.key_mask
    positions = canvas.positions
    cfg = canvas.settings.cfg_scale
    if cfg > 0:
        unconditional = x.masked_fill(canvas.prompt_index, canvas.mask_id)
        x = torch.cat([x, unconditional])
        key_mask = None if key_mask is None else torch.cat([key_mask, key_mask])
        positions = positions if positions.dim() == 1 else torch.cat([positions, positions])
    logits, _ = model(x, positions=positions, key_mask=key_mask)
    canvas.nfe += 1
    if cfg > 0:
        cond, uncond = logits.chunk(2)
        logits = uncond + (cfg + 1) * (cond - uncond)
    return model.shift_logits(logits)
