"""Random remasking with the order drawn once per block (dKV-Cache-Greedy, horseee/dKV-Cache
``generation_utils/llada_dkv_cache_greedy.py``).

At a block's start one ``torch.rand((B, L))`` (the official draw, from torch's global generator)
ranks the block's positions, highest first; step i commits the next ``n_i`` of that order, ``n_i``
from LLaDA's per-block schedule, with the pass's argmax (Gumbel-max above temperature 0) tokens.
Each step's positions are known before its pass, which dKV-Cache-Greedy uses to compute only them
and their neighbours (``methods/dkv_cache_greedy.py``). In law this is LLaDA's ``remasking='random'``,
which redraws every step (a fresh uniform ranking of the masks left is the same random order); the
official random stream differs. Above temperature 0 the Gumbel noise is drawn as the official code
draws it: over every row the pass computed, a contiguous range or, when the strategy names them
(``Canvas.pass_positions``), scattered positions. LLaDA only, as the official code. No host read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..canvas import Canvas, Commit
from ..policies import _window, noise_positions, noise_rows
from ..scoring import gumbel_max_logits, gumbel_max_over
from . import DecodingRule, register_rule


@dataclass
class RandomOrderConfig:
    """No options: the order is random and the counts are LLaDA's schedule."""


@register_rule
class RandomOrderPolicy(DecodingRule):
    """Random order per block; see the module docstring."""

    name = "random_order"
    Config = RandomOrderConfig
    samplers: ClassVar[tuple[str, ...]] = ("llada",)
    draws_per_batch: ClassVar[bool] = True

    def begin_block(self, canvas: Canvas) -> None:
        s = canvas.settings
        per_step, extra = divmod(s.block_length, s.steps_per_block)
        counts = [per_step + (step < extra) for step in range(s.steps_per_block)]
        self.bounds = [sum(counts[:step]) for step in range(s.steps_per_block + 1)]
        scores = torch.rand(canvas.x.shape, device=canvas.x.device)
        scores[:, canvas.block_end :] = -torch.inf
        scores[:, : canvas.block_start] = -torch.inf
        # [B, block_length] positions in commit order (the official unstable sort over the whole row)
        self.order = torch.sort(scores, descending=True).indices[:, : s.block_length]

    def positions(self, step: int) -> torch.Tensor:
        """[B, n] positions block step ``step`` commits (empty past the block's last step)."""
        if step >= len(self.bounds) - 1:
            return self.order[:, :0]
        return self.order[:, self.bounds[step] : self.bounds[step + 1]]

    def reads(self, canvas: Canvas) -> slice:
        return canvas.block_slice

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_step >= canvas.settings.steps_per_block

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s, block = canvas.settings, canvas.block_slice
        window = _window(rows, canvas)
        if s.logits_eos_inf:
            logits[..., canvas.spec.tokens.eos] = -torch.inf
        scattered = noise_positions(canvas, canvas.block_start)
        if scattered is not None:
            noisy = gumbel_max_over(logits[:, window], scattered, s.temperature)
        else:
            total, first = noise_rows(canvas, rows)
            noisy = gumbel_max_logits(logits[:, window], s.temperature, s.gumbel_variant, (total, first + window.start))
        tokens = canvas.x.clone()
        tokens[:, block] = noisy.argmax(dim=-1)
        index = torch.zeros_like(canvas.x, dtype=torch.bool).scatter_(1, self.positions(canvas.block_step), True)
        return Commit(index=index & canvas.masked(), tokens=tokens)

