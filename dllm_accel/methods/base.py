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
from ..models.compiled import compiled_pass
from ..models.core import DiffusionTransformer
from ..models.spec import ModelSpec


@dataclass
class MethodConfig:
    """Settings of a method; subclasses add fields (documented where they are declared)."""


class ForwardStrategy(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    supports_cfg: ClassVar[bool] = False
    supports_padding: ClassVar[bool] = True  # False: refuse left-padded batches rather than answer differently
    # why the method cannot drive a block-causal model (LLaDA2), which decodes with its own sampler
    block_causal_reason: ClassVar[str] = (
        "it reuses what bidirectional full-sequence passes computed, and that reuse has not been "
        "adapted to block-causal attention, where the block-diffusion sampler's prefix cache is already exact"
    )

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def model_refusal(self, spec: ModelSpec) -> str | None:
        """Why this method, with its options, cannot run on models of ``spec`` (one line), or None.
        Checked before any forward; tests and the tiny-model evaluation ask it which presets fit a model."""
        return None

    def check(self, canvas: Canvas) -> None:
        """Reject sampler settings this method cannot honour, before any forward."""
        refusal = self.model_refusal(canvas.spec)
        if refusal is not None:
            raise ValueError(refusal)
        if canvas.settings.cfg_scale > 0 and not self.supports_cfg:
            raise ValueError(f"method {self.name!r} does not support cfg_scale > 0 (got {canvas.settings.cfg_scale})")
        if canvas.key_mask is not None and not self.supports_padding:
            raise ValueError(
                f"method {self.name!r} does not run left-padded batches (prompts of different lengths): use batch_size=1"
            )

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
        """Called once, when the output's statistics are first read (after any timed region):
        statistics kept on the device are read here, once."""


def scored_rows(canvas: Canvas, rows: slice) -> slice:
    """The rows of a pass over ``rows`` whose logits the step's policy reads (``Canvas.reads``)."""
    reads = canvas.reads
    start = rows.start if reads.start is None else max(rows.start, reads.start)
    stop = rows.stop if reads.stop is None else min(rows.stop, reads.stop)
    return slice(start, max(start, stop))


def pass_logits(
    model: DiffusionTransformer, hidden: torch.Tensor, rows: slice, canvas: Canvas, every_row: bool = False
) -> tuple[torch.Tensor, slice]:
    """Logits of the rows the policy reads, from the last hidden states [B, R, d] of a pass over
    ``rows``: final norm and head over those rows only, Dream's shift applied within the pass
    (``every_row``: all of them, for a strategy that reuses logits in later steps).
    Records ``rows`` as the pass's rows (the official samplers rank and draw noise over them)."""
    canvas.pass_rows = rows
    out = rows if every_row else scored_rows(canvas, rows)
    return model.logits_for(hidden, out.start - rows.start, out.stop - rows.start), out


def dense_pass(model: DiffusionTransformer, canvas: Canvas, every_row: bool = False) -> tuple[torch.Tensor, slice]:
    """One full-sequence pass, with LLaDA-style classifier-free guidance when asked for;
    logits of the rows the policy reads (``every_row``: of all rows).

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
    hidden = compiled_pass(trunk_pass)(model, x, positions, key_mask)
    canvas.nfe += 1
    logits, rows = pass_logits(model, hidden, slice(0, canvas.length), canvas, every_row)
    if cfg > 0:
        cond, uncond = logits.chunk(2)
        logits = uncond + (cfg + 1) * (cond - uncond)
    return logits, rows


def trunk_pass(
    model: DiffusionTransformer, x: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Last hidden states of every position (one graph when compiled; the head runs on the read rows after it)."""
    return model.trunk(x, positions=positions, key_mask=key_mask)
