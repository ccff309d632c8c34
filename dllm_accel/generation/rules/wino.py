"""WINO, wide-in narrow-out revokable decoding (Feng-Hong/WINO-DLLM ``decoding_wino``).

Each step (one pass with the block's leave-one-out verification rows, see
``methods/verification.py``), per row:

- wide in: commit every mask of the block whose float64 probability of its argmax token is
  above ``threshold``; more than ``clamp(int(0.7 * masks), 5, 20)`` of them: only that many
  most confident; none: the most confident one;
- narrow out: when this step committed more than one, re-mask the tokens decoded at earlier
  steps of this block whose verification probability (the hidden-position prediction, float64)
  is below ``threshold_back``; when that is at least as many as the previous step committed
  (30 at a block's start), only the previous count minus one lowest.

A block ends when it has no masks; ``steps`` does not bound it. Re-masking writes the mask id
back through the commit. The official code is LLaDA only and batch 1 (its counts and top-k run
over the flattened batch); here every row decides alone, which is the same at batch 1. No host
read in the pass; one per step, the block's end test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..canvas import Canvas, Commit
from ..scoring import gumbel_max_logits
from ..settings import SettingsError
from . import DecodingRule, register_rule

# the official bounds on a step's commits, and the re-mask budget at a block's start
ACCEPT_SHARE, ACCEPT_MIN, ACCEPT_MAX, FIRST_LAST_ACCEPT = 0.7, 5, 20, 30


@dataclass
class WinoConfig:
    threshold: float = 0.6  # wide-in tau (the paper's GSM8K/MATH setting; its demo uses 0.5)
    threshold_back: float = 0.9  # narrow-out tau

    def __post_init__(self) -> None:
        for name in ("threshold", "threshold_back"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SettingsError(f"wino {name}={value!r} must be a finite number")


def _rank(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Each entry's place in its row's order (0 = first; ties keep position order)."""
    order = torch.sort(values, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    return rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))


@register_rule
class WinoPolicy(DecodingRule):
    """WINO; see the module docstring."""

    name = "wino"
    Config = WinoConfig
    samplers = ("llada",)
    strategies = ("vanilla",)
    strategies_reason = (
        "it verifies decoded tokens with leave-one-out rows that attend to every layer's keys of the whole "
        "sequence in the same pass, which only the vanilla pass computes"
    )

    def __init__(self, config: WinoConfig, canvas: Canvas, strategy: object) -> None:
        super().__init__(config, canvas, strategy)
        if canvas.settings.cfg_scale > 0:
            raise ValueError(f"policy 'wino' has no classifier-free guidance (cfg_scale={canvas.settings.cfg_scale})")
        self.strategy = strategy

    def begin_block(self, canvas: Canvas) -> None:
        self.strategy.request_verification()
        self.decoded = ~canvas.block_masked()
        self.last_accept = torch.full((canvas.x.shape[0],), FIRST_LAST_ACCEPT, device=canvas.x.device)

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s, block = canvas.settings, canvas.block_slice
        verified = self.strategy.verified
        noisy = logits
        if s.temperature > 0:  # noise over the pass's rows, appended ones included, as drawn officially
            noisy = gumbel_max_logits(torch.cat([logits, verified], dim=1), s.temperature)[:, : canvas.length]
        x0 = noisy[:, block].argmax(dim=-1)
        masked = canvas.block_masked()
        probs = F.softmax(logits[:, block].to(torch.float64), dim=-1)
        confidence = probs.gather(-1, x0[..., None]).squeeze(-1).masked_fill(~masked, -torch.inf)
        current = canvas.x[:, block]
        back = F.softmax(verified.to(torch.float64), dim=-1).gather(-1, current[..., None]).squeeze(-1)
        back = back.masked_fill(~self.decoded, torch.inf)

        limit = (masked.sum(dim=1, keepdim=True) * ACCEPT_SHARE).long().clamp(ACCEPT_MIN, ACCEPT_MAX)
        above = confidence > self.config.threshold
        n_above = above.sum(dim=1, keepdim=True)
        rank = _rank(confidence, descending=True)
        wide = torch.where(n_above > limit, rank < limit, torch.where(n_above == 0, rank < 1, above)) & masked
        accepted = wide.sum(dim=1)

        low = back < self.config.threshold_back
        budget = (self.last_accept - 1)[:, None]
        capped = low.sum(dim=1, keepdim=True) >= self.last_accept[:, None]
        narrow = torch.where(capped, _rank(back, descending=False) < budget, low) & (accepted > 1)[:, None]

        self.decoded = (self.decoded | wide) & ~narrow
        self.last_accept = accepted
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        index[:, block] = wide | narrow
        tokens = canvas.x.clone()
        tokens[:, block] = torch.where(narrow, torch.full_like(x0, canvas.mask_id), x0)
        return Commit(index=index, tokens=tokens, confidence=None)
