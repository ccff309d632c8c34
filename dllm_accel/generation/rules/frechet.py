"""Fast-dLLM++ Frechet profile decoding (Ringo-Star/FastdLLM_plusplus, ``frechet_margin``).

A drop-in for Fast-dLLM's threshold/factor rule. With the candidates' confidences sorted,
c_1 >= ... >= c_n, the score of committing the top n is the Frechet lower bound on their joint
correctness minus the competing-event upper bound,

    G_n = (c_1 + ... + c_n - (n - 1)) - (1 - c_n),

and a step commits the top ``count(G_n > margin)`` candidates, at least one (G_n does not grow
with n, so the count is the largest passing prefix). LLaDA ranks Fast-dLLM's candidates (masks
from the first computed row up to the block end, float64 probabilities with
``confidence_dtype: float64``); Dream ranks the block's masks by their max probability in the
logits' dtype, after the block's first position is committed at the refresh pass (the official
rule lives only in Fast-dLLM's cached Dream sampler; without a cache the same block rule is used).
A block ends when it has no masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..canvas import Canvas, Commit
from ..parallel import score_range
from ..policies import ranked_rows
from ..settings import SettingsError
from . import ParallelRule, register_rule


@dataclass
class FrechetConfig:
    # delta: the paper's global default 0.25 (f = 1 - delta maps to Fast-dLLM's factor); the official code
    # takes any number, and a negative one commits more per step
    margin: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin):
            raise SettingsError(f"frechet margin={self.margin!r} must be a finite number")


def frechet_index(confidence: torch.Tensor, candidates: torch.Tensor, margin: float) -> torch.Tensor:
    """[B, R] bool: each row's top ``count(G_n > margin)`` candidates (at least one when any)."""
    values, order = torch.sort(confidence, dim=1, descending=True)
    cols = torch.arange(values.shape[1], device=values.device).expand_as(values)
    valid = cols < candidates.sum(dim=1, keepdim=True)
    lower = torch.cumsum(torch.where(valid, values, torch.zeros_like(values)), dim=1) - cols.to(values.dtype)
    score = torch.where(valid, lower - (1.0 - values), torch.full_like(values, -torch.inf))
    score[:, 0] = torch.inf
    count = (score > margin).sum(dim=1, keepdim=True)
    chosen = torch.zeros_like(candidates).scatter(1, order, cols < count)
    return chosen & candidates


def _commit(x0: torch.Tensor, confidence: torch.Tensor, candidates: torch.Tensor, rows: slice, margin: float) -> Commit:
    """Rank over the rows the strategy computed, as the official code ranks its forward's rows."""
    index = torch.zeros_like(candidates)
    index[:, rows] = frechet_index(confidence[:, rows], candidates[:, rows], margin)
    return Commit(index=index, tokens=x0, confidence=confidence)


@register_rule
class FrechetPolicy(ParallelRule):
    """Frechet profile decoding; see the module docstring."""

    name = "frechet"
    Config = FrechetConfig

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        ranked = ranked_rows(canvas, rows)
        if not self.dream:
            return _commit(*self.scores(logits, rows, canvas), ranked, self.config.margin)
        # the official code samples every mask of the pass (RNG order), then ranks the block's
        x0, confidence, candidates = score_range(
            logits, rows, canvas, canvas.block_start, rows.stop or canvas.length, "maskgit_plus"
        )
        in_block = torch.zeros_like(candidates)
        in_block[:, canvas.block_slice] = True
        confidence = confidence.masked_fill(~in_block, -torch.inf)
        return _commit(x0, confidence, candidates & in_block, ranked, self.config.margin)
