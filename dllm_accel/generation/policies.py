"""Decoding policies: which masked positions a step commits, and to which tokens.

Policies are independent of the forward strategy: they see logits for the rows the
strategy computed (already aligned with the positions they fill) and the canvas.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .canvas import Canvas, Commit
from .dyllm_sampler import dyllm_sample, ranked_commit
from .schedules import ConstantSchedule, LinearBlockSchedule, Schedule, TimestepSchedule
from .scoring import dream_sample_tokens, llada_propose


class DecodingPolicy(ABC):
    def begin_block(self, canvas: Canvas) -> None:
        """Called once when a block starts."""

    @abstractmethod
    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        """Commit for this step from logits [B, rows, V]."""

    @abstractmethod
    def block_finished(self, canvas: Canvas) -> bool:
        """True when the loop moves on to the next block."""


def _window(rows: slice, canvas: Canvas) -> slice:
    start = rows.start or 0
    if start > canvas.block_start or (rows.stop or canvas.length) < canvas.block_end:
        raise ValueError(f"strategy computed rows {rows} that do not cover block {canvas.block_slice}")
    return slice(canvas.block_start - start, canvas.block_end - start)


def _scatter_block(canvas: Canvas, values: torch.Tensor, fill: float | int) -> torch.Tensor:
    """A full-length [B, L] tensor holding ``values`` on the current block, ``fill`` elsewhere."""
    full = torch.full(canvas.x.shape, fill, dtype=values.dtype, device=values.device)
    full[:, canvas.block_slice] = values
    return full


def top_k_commit(
    confidence: torch.Tensor, x0: torch.Tensor, counts: torch.Tensor, canvas: Canvas, rows: slice | None = None
) -> Commit:
    """Per row, the ``counts[b]`` most confident candidates (confidence -inf elsewhere).

    ``rows`` ranks only the positions a strategy computed, as the official samplers rank
    over their model input: ``torch.topk`` breaks exact ties by the ranked length.
    """
    index = torch.zeros_like(canvas.x, dtype=torch.bool)
    rows = slice(0, canvas.length) if rows is None else rows
    offset = rows.start or 0
    for b, k in enumerate(counts.tolist()):
        if k > 0:
            index[b, offset + torch.topk(confidence[b, rows], k).indices] = True
    # a count above a row's candidates must not overwrite decoded tokens with masks
    return Commit(index=index & canvas.masked(), tokens=x0)


class ConfidencePolicy(DecodingPolicy):
    """Commit the most confident candidates, as many as a schedule says.

    ``sampler='llada'``: Gumbel-max tokens and low_confidence / random scores
    (``generate.py``). ``sampler='dream'``: ``sample_tokens`` with maskgit_plus /
    topk_margin / entropy scores, and ``alg_temp`` sampling of positions.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def begin_block(self, canvas: Canvas) -> None:
        self.schedule.begin_block(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        return self.schedule.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, confidence = self.propose(logits, rows, canvas)
        counts = self.schedule.count(canvas)
        s = canvas.settings
        if s.sampler == "dream" and s.alg_temp:
            return self._sample_positions(confidence, x0, int(counts[0]), canvas, rows)
        return top_k_commit(confidence, x0, counts, canvas, rows)

    def propose(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-length x0 and confidence; confidence is -inf off the current block's masks."""
        window = _window(rows, canvas)
        s = canvas.settings
        masked = canvas.block_masked()
        if s.sampler == "llada":
            x0, conf = llada_propose(logits, window, s, canvas.spec)
        else:
            x0 = torch.full_like(masked, s.mask_id, dtype=torch.long)
            conf = torch.full(masked.shape, -torch.inf, dtype=logits.dtype, device=logits.device)
            c, tokens = dream_sample_tokens(logits[:, window][masked], s.temperature, s.top_p, s.top_k, s.alg)
            x0[masked], conf[masked] = tokens, c.to(conf.dtype)
        conf = torch.where(masked, conf, torch.tensor(-torch.inf, dtype=conf.dtype, device=conf.device))
        return _scatter_block(canvas, x0, canvas.mask_id), _scatter_block(canvas, conf, -torch.inf)

    @staticmethod
    def _sample_positions(
        confidence: torch.Tensor, x0: torch.Tensor, n: int, canvas: Canvas, rows: slice | None = None
    ) -> Commit:
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        rows = slice(0, canvas.length) if rows is None else rows
        if n > 0:
            probs = torch.softmax(confidence[:, rows] / canvas.settings.alg_temp, dim=-1)
            index[:, rows] = index[:, rows].scatter(1, torch.multinomial(probs, num_samples=n), True)
        return Commit(index=index & canvas.masked(), tokens=x0)


class OriginPolicy(DecodingPolicy):
    """Dream ``origin``: every mask is committed independently with probability 1 - s/t."""

    def __init__(self) -> None:
        self.schedule = TimestepSchedule()

    def begin_block(self, canvas: Canvas) -> None:
        self.schedule.begin_block(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        return self.schedule.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s = canvas.settings
        masked = canvas.block_masked()
        p = self.schedule.transfer_probability(canvas)
        chosen = torch.rand(int(masked.sum()), device=masked.device) < p
        tokens = torch.full((chosen.shape[0],), s.mask_id, dtype=torch.long, device=masked.device)
        candidates = logits[:, _window(rows, canvas)][masked]
        _, tokens[chosen] = dream_sample_tokens(candidates[chosen], s.temperature, s.top_p, s.top_k)
        block_tokens = torch.full_like(masked, s.mask_id, dtype=torch.long)
        block_tokens[masked] = tokens
        index = _scatter_block(canvas, block_tokens != s.mask_id, False)
        return Commit(index=index, tokens=_scatter_block(canvas, block_tokens, s.mask_id))


class DyLLMSamplerPolicy(ConfidencePolicy):
    """The DyLLM engine's sampler (``sampler='dyllm'``): scores from ``dyllm_sample``,
    committed in descending score order."""

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, confidence = self.propose(logits, rows, canvas)
        return ranked_commit(confidence, x0, self.schedule.count(canvas), canvas)

    def propose(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> tuple[torch.Tensor, torch.Tensor]:
        s = canvas.settings
        masked = canvas.block_masked()
        candidates = logits[:, _window(rows, canvas)][masked]
        score, tokens = dyllm_sample(candidates, canvas.spec.family, s.temperature, s.top_k, s.top_p)
        x0 = torch.full_like(masked, s.mask_id, dtype=torch.long)
        conf = torch.full(masked.shape, -torch.inf, dtype=score.dtype, device=score.device)
        x0[masked], conf[masked] = tokens, score
        return _scatter_block(canvas, x0, s.mask_id), _scatter_block(canvas, conf, -torch.inf)


def build_policy(canvas: Canvas, strategy=None) -> DecodingPolicy:
    """The registered rule the settings name (``policy``), else the official sampler's policy.

    ``strategy`` is the forward strategy the rule will decode from (a rule that needs more than
    logits, such as WINO's verification rows, asks it for them)."""
    s = canvas.settings
    if s.policy is not None:
        from .rules import build_rule

        return build_rule(canvas, strategy)
    from .parallel import parallel_policy  # the threshold and factor rules build on the classes above

    parallel = parallel_policy(canvas)
    if parallel is not None:
        return parallel
    if s.sampler == "dyllm":
        return DyLLMSamplerPolicy(ConstantSchedule())
    if s.constant_count:
        return ConfidencePolicy(ConstantSchedule())
    if s.sampler == "llada":
        return ConfidencePolicy(LinearBlockSchedule())
    if s.alg == "origin":
        return OriginPolicy()
    return ConfidencePolicy(TimestepSchedule())
