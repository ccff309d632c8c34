"""KLASS, KL-adaptive stability sampling (shkim0116/KLASS, ``alg='klass'``).

A mask is ready when its top probability passes ``conf_threshold`` and the KL divergence of
its predictive distribution from the previous pass's, ``sum p (log(p + 1e-12) - log(q + 1e-12))``
in float64, stayed below ``kl_threshold`` for the last ``kl_history_length`` passes. Each step
commits every ready mask of the block (or one of them: ``unmask_strategy``); a row with none
falls back to its sampler's rule:

- LLaDA (``llada_klass.stable_confident_decode``): top probability ``> conf_threshold``;
  readiness only from the block's ``kl_history_length``-th step; fallback: the LLaDA block
  schedule's count of the most confident masks. Temperature adds Gumbel noise to the logits
  that every probability is then taken from, as there.
- Dream (``dream_klass.py`` ``_sample``): ``>= conf_threshold``; the history starts as zeros
  (so the first pass's KL against nothing, which is large, keeps every mask unready for
  ``kl_history_length`` passes); fallback: the one mask with the highest ``sample_tokens``
  confidence. Tokens are the argmax either way.

Both stop a block once it has no masks, else after its steps. A step's previous distribution
is the previous pass's at the same positions, when that pass computed them (block-only cached
passes do not compute the next block: its first KL is then taken against nothing, as at the
start). The official code is batch 1: at batch > 1 its Dream fallback picks one position over
the whole batch and skips the rows that were ready, and its LLaDA fallback may commit more than
a row's masks, overwriting decoded or prompt positions; here every row decides alone and only
masks are written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..canvas import Canvas, Commit
from ..policies import _window, gather_candidates, spread
from ..schedules import LinearBlockSchedule
from ..scoring import dream_sample_tokens, gumbel_max_logits
from ..settings import SettingsError
from . import DecodingRule, register_rule

UNMASK_STRATEGIES = ("all", "max_conf", "min_kl")
KL_EPS = 1e-12


@dataclass
class KlassConfig:
    conf_threshold: float = 0.9  # the official defaults; the paper's per-task values are in conf/method/klass_*
    kl_threshold: float = 0.01
    kl_history_length: int = 2
    unmask_strategy: str = "all"

    def __post_init__(self) -> None:
        for name in ("conf_threshold", "kl_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SettingsError(f"klass {name}={value!r} must be a finite number")
        h = self.kl_history_length
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise SettingsError(f"klass kl_history_length={h!r} must be an integer >= 1")
        if self.unmask_strategy not in UNMASK_STRATEGIES:
            raise SettingsError(
                f"unknown klass unmask_strategy {self.unmask_strategy!r} (accepted: {', '.join(UNMASK_STRATEGIES)})"
            )


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KLASS's float64 KL(p || q) over the last dimension (q = 0 where no previous pass)."""
    return (p * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS))).sum(dim=-1)


def _first_best(values: torch.Tensor, allowed: torch.Tensor, largest: bool) -> torch.Tensor:
    """[B, N] bool: each row's first allowed entry with the largest (or smallest) value."""
    fill = -torch.inf if largest else torch.inf
    masked = values.masked_fill(~allowed, fill)
    pick = masked.argmax(dim=1) if largest else masked.argmin(dim=1)
    return torch.zeros_like(allowed).scatter_(1, pick[:, None], True) & allowed


@register_rule
class KlassPolicy(DecodingRule):
    """KLASS; see the module docstring."""

    name = "klass"
    Config = KlassConfig

    def __init__(self, config: KlassConfig, canvas: Canvas, strategy: object) -> None:
        super().__init__(config, canvas, strategy)
        self.llada = canvas.settings.sampler == "llada"
        self.schedule = LinearBlockSchedule()
        self.previous: tuple[int, torch.Tensor] | None = None  # (first position, float64 probabilities)

    def begin_block(self, canvas: Canvas) -> None:
        self.schedule.begin_block(canvas)
        b, n = canvas.x.shape[0], canvas.settings.block_length
        self.history = torch.zeros(b, n, self.config.kl_history_length, dtype=torch.float64, device=canvas.x.device)

    def block_finished(self, canvas: Canvas) -> bool:
        if canvas.block_step >= canvas.settings.steps_per_block:
            return True
        return canvas.block_done()

    def _previous(self, start: int, probs: torch.Tensor) -> torch.Tensor:
        """The previous pass's probabilities at ``start ...``, zeros where it did not compute them."""
        q = torch.zeros_like(probs)
        if self.previous is not None:
            first, kept = self.previous
            lo, hi = max(start, first), min(start + probs.shape[1], first + kept.shape[1])
            if lo < hi:
                q[:, lo - start : hi - start] = kept[:, lo - first : hi - first]
        return q

    def _probabilities(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 probabilities of the block and of the rows after it up to one block further (kept
        for the next block's first KL), and the block's argmax tokens."""
        s, first = canvas.settings, rows.start or 0
        stop = min(canvas.block_end + s.block_length, rows.stop or canvas.length)
        window = logits[:, canvas.block_start - first : stop - first]
        if self.llada and s.temperature > 0:  # noise over every computed row (the official draw), then kept rows
            window = gumbel_max_logits(logits, s.temperature)[:, canvas.block_start - first : stop - first]
        probs = F.softmax(window.to(torch.float64), dim=-1)
        if self.llada:
            tokens = probs[:, : s.block_length].argmax(dim=-1)
        else:  # Dream: argmax of the model-dtype softmax over the masks
            tokens = torch.softmax(window[:, : s.block_length], dim=-1).argmax(dim=-1)
        return probs, tokens

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        c, s = self.config, canvas.settings
        block, n = canvas.block_slice, s.block_length
        probs, x0 = self._probabilities(logits, rows, canvas)
        kl = kl_divergence(probs[:, :n], self._previous(canvas.block_start, probs[:, :n]))
        self.previous = (canvas.block_start, probs)
        self.history = torch.cat([self.history[..., 1:], kl[..., None]], dim=-1)
        confidence = probs[:, :n].gather(-1, x0[..., None]).squeeze(-1)
        masked = canvas.block_masked()
        stable = (self.history < c.kl_threshold).all(dim=-1)
        if self.llada:
            passes = confidence > c.conf_threshold
            if canvas.block_step < c.kl_history_length - 1:
                stable = torch.zeros_like(stable)
        else:
            passes = confidence >= c.conf_threshold
        ready = stable & passes & masked
        if c.unmask_strategy == "max_conf":
            ready = _first_best(confidence, ready, largest=True)
        elif c.unmask_strategy == "min_kl":
            ready = _first_best(kl, ready, largest=False)
        fallback = self._fallback(logits, rows, canvas, confidence, masked)
        chosen = torch.where(ready.any(dim=1, keepdim=True), ready, fallback)
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        index[:, block] = chosen
        tokens = canvas.x.clone()
        tokens[:, block] = x0
        return Commit(index=index, tokens=tokens)

    def _fallback(
        self, logits: torch.Tensor, rows: slice, canvas: Canvas, confidence: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        s = canvas.settings
        if self.llada:  # the schedule's count of the most confident masks
            order = torch.sort(confidence.masked_fill(~masked, -torch.inf), dim=1, descending=True, stable=True)
            rank = torch.empty_like(order.indices).scatter_(
                1, order.indices, torch.arange(masked.shape[1], device=masked.device).expand_as(order.indices)
            )
            return (rank < self.schedule.count(canvas)) & masked  # one count for every row (a host int)
        # Dream: the mask with the highest sample_tokens confidence (drawn over the masks, RNG order)
        # (gathered with the mask count of the step's one read, not by boolean indexing)
        candidates, flat = gather_candidates(logits[:, _window(rows, canvas)], masked, sum(canvas.masks_left()))
        sampled, _ = dream_sample_tokens(candidates, s.temperature, s.top_p, s.top_k)
        return _first_best(spread(flat, sampled, masked.shape, -torch.inf), masked, largest=True)
