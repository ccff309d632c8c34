"""Decoding policies: which masked positions a step commits, and to which tokens.

Policies are independent of the forward strategy: they see logits for the rows the
strategy computed (already aligned with the positions they fill) and the canvas.

No policy reads the device more than once per step: counts fixed by the schedule are
Python ints, data-dependent counts stay in tensors (ranks compared with per-row counts),
and candidates are gathered with a count the canvas reads once (``Canvas.masks_left``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .canvas import Canvas, Commit
from .dyllm_sampler import dyllm_sample, ranked_commit
from .schedules import Schedule, TimestepSchedule
from .scoring import dream_sample_tokens, llada_propose, multinomial, settle_samples


class DecodingPolicy(ABC):
    def begin_block(self, canvas: Canvas) -> None:
        """Called once when a block starts."""

    def reads(self, canvas: Canvas) -> slice:
        """Positions whose logits this step's ``select`` reads (open ends: the pass's first or
        last row). Strategies run the final norm and head only there; default: every row."""
        return slice(None)

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


def ranked_rows(canvas: Canvas, rows: slice | None) -> slice:
    """The positions the official samplers rank over: the whole pass (its model input)."""
    if canvas.pass_rows is not None:
        return canvas.pass_rows
    return slice(0, canvas.length) if rows is None else rows


def noise_rows(canvas: Canvas, rows: slice) -> tuple[int, int]:
    """(rows the pass computed, index of ``rows``' first among them): where LLaDA's noise is drawn."""
    computed = ranked_rows(canvas, rows)
    start = computed.start or 0
    return (computed.stop or canvas.length) - start, (rows.start or 0) - start


def noise_positions(canvas: Canvas, start: int) -> torch.Tensor | None:
    """[B, N] scattered positions the pass computed, relative to position ``start``, the scored
    window's first (``llada_propose``'s ``scattered``); None for a pass over a contiguous range."""
    if canvas.pass_positions is None:
        return None
    return canvas.pass_positions - start


def top_k_commit(
    confidence: torch.Tensor,
    x0: torch.Tensor,
    counts: int | torch.Tensor,
    canvas: Canvas,
    rows: slice | None = None,
    bound: int | None = None,
) -> Commit:
    """Per row, the ``counts`` most confident candidates (confidence -inf elsewhere).

    ``rows`` ranks only the positions a strategy computed, as the official samplers rank
    over their model input: ``torch.topk`` breaks exact ties by the ranked length. An int
    count (every row the same, known on the host) is one batched ``torch.topk(k)``, the
    official call. A [B] tensor (data-dependent counts) ranks the first ``bound`` (default:
    the block length) with ``torch.topk`` and keeps each row's first ``counts[b]``: only
    exact ties straddling a row's count could order differently from a per-row topk.
    """
    rows = slice(0, canvas.length) if rows is None else rows
    ranked = confidence[:, rows]
    index = torch.zeros_like(canvas.x, dtype=torch.bool)
    if isinstance(counts, int):
        if counts > 0:
            index[:, rows] = index[:, rows].scatter(1, torch.topk(ranked, counts, dim=1).indices, True)
    else:
        width = min(bound or canvas.settings.block_length, ranked.shape[1])
        order = torch.topk(ranked, width, dim=1).indices
        take = torch.arange(width, device=order.device)[None, :] < counts[:, None]
        index[:, rows] = index[:, rows].scatter(1, order, take)
    # a count above a row's candidates must not overwrite decoded tokens with masks
    return Commit(index=index & canvas.masked(), tokens=x0)


def masked_positions(masked: torch.Tensor, total: int) -> torch.Tensor:
    """Flat indices of the True entries of ``masked`` in row-major order (those of
    ``masked.nonzero()``), given their number: no output shape depends on data."""
    flat = masked.reshape(-1)
    slot = torch.where(flat, flat.long().cumsum(0) - 1, total)
    found = torch.zeros(total + 1, dtype=torch.long, device=masked.device)
    found.scatter_(0, slot, torch.arange(flat.numel(), device=masked.device))
    return found[:total]


def gather_candidates(logits: torch.Tensor, masked: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits[masked]`` [total, V] (``logits`` [B, W, V]) and the flat positions it came from."""
    flat = masked_positions(masked, total)
    width = masked.shape[1]
    return logits[flat // width, flat % width], flat


def spread(flat: torch.Tensor, values: torch.Tensor, shape: torch.Size, fill: float | int) -> torch.Tensor:
    """A [B, W] tensor holding ``values`` at the flat positions ``flat`` and ``fill`` elsewhere."""
    out = torch.full((shape.numel(),), fill, dtype=values.dtype, device=values.device)
    return out.index_copy(0, flat, values).view(shape)


def dream_candidates(
    logits: torch.Tensor, masked: torch.Tensor, canvas: Canvas, total: int, alg: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens`` over exactly the masked rows of ``logits`` [B, W, V], in the
    official order (row-major, as ``logits[mask_index]``): (x0 [B, W], confidence [B, W]),
    mask id and -inf off the candidates."""
    s = canvas.settings
    candidates, flat = gather_candidates(logits, masked, total)
    conf, tokens = dream_sample_tokens(candidates, s.temperature, s.top_p, s.top_k, alg or s.alg)
    x0 = spread(flat, tokens, masked.shape, s.mask_id)
    return x0, spread(flat, conf.to(logits.dtype), masked.shape, -torch.inf)


def block_masks(canvas: Canvas) -> int:
    """How many masks the block holds, all rows together (one device read per step)."""
    return sum(canvas.masks_left())


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

    def reads(self, canvas: Canvas) -> slice:
        return canvas.block_slice

    def block_finished(self, canvas: Canvas) -> bool:
        return self.schedule.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, confidence = self.propose(logits, rows, canvas)
        counts = self.schedule.count(canvas)
        s = canvas.settings
        ranked = ranked_rows(canvas, rows)
        if s.sampler == "dream" and s.alg_temp:
            return self._sample_positions(confidence, x0, _one_count(counts, canvas), canvas, ranked)
        return top_k_commit(confidence, x0, counts, canvas, ranked)

    def propose(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-length x0 and confidence; confidence is -inf off the current block's masks."""
        window = _window(rows, canvas)
        s = canvas.settings
        masked = canvas.block_masked()
        if s.sampler == "llada":
            x0, conf = llada_propose(logits, window, s, canvas.spec, noise_rows(canvas, rows), noise_positions(canvas, canvas.block_start))
        else:
            x0, conf = dream_candidates(logits[:, window], masked, canvas, block_masks(canvas))
        conf = conf.masked_fill(~masked, -torch.inf)
        return _scatter_block(canvas, x0, canvas.mask_id), _scatter_block(canvas, conf, -torch.inf)

    @staticmethod
    def _sample_positions(
        confidence: torch.Tensor, x0: torch.Tensor, n: int, canvas: Canvas, rows: slice | None = None
    ) -> Commit:
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        rows = slice(0, canvas.length) if rows is None else rows
        if n > 0:
            probs = torch.softmax(confidence[:, rows] / canvas.settings.alg_temp, dim=-1)
            index[:, rows] = index[:, rows].scatter(1, multinomial(probs, n), True)
        return Commit(index=index & canvas.masked(), tokens=x0)


def _one_count(counts: int | torch.Tensor, canvas: Canvas) -> int:
    """``alg_temp`` samples one number of positions for the whole batch: the schedule's int."""
    if isinstance(counts, int):
        return counts
    raise ValueError(f"alg_temp needs one count for every row, and this schedule gives one per row (sampler {canvas.settings.sampler!r})")


class OriginPolicy(DecodingPolicy):
    """Dream ``origin``: every mask is committed independently with probability 1 - s/t.

    The official code samples tokens for exactly the chosen masks; at temperature > 0 that
    number decides how much noise is drawn, so a sampled step reads it (a second device
    read: the rule commits each mask by chance). At temperature 0 nothing random depends
    on it and the step reads only the mask count.
    """

    def __init__(self) -> None:
        self.schedule = TimestepSchedule()

    def begin_block(self, canvas: Canvas) -> None:
        self.schedule.begin_block(canvas)

    def reads(self, canvas: Canvas) -> slice:
        return canvas.block_slice

    def block_finished(self, canvas: Canvas) -> bool:
        return self.schedule.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s = canvas.settings
        masked = canvas.block_masked()
        total = block_masks(canvas)
        p = self.schedule.transfer_probability(canvas)
        settle_samples()  # the last step's sample decides the generator's state before this draw
        chosen = torch.rand(total, device=masked.device) < p
        candidates, flat = gather_candidates(logits[:, _window(rows, canvas)], masked, total)
        if s.temperature > 0:
            picked = masked_positions(chosen, int(chosen.sum()))
            _, sampled = dream_sample_tokens(candidates[picked], s.temperature, s.top_p, s.top_k)
            tokens = torch.full((total,), s.mask_id, dtype=torch.long, device=masked.device).index_copy(0, picked, sampled)
        else:
            _, sampled = dream_sample_tokens(candidates, s.temperature, s.top_p, s.top_k)
            tokens = torch.where(chosen, sampled, s.mask_id)
        block_tokens = spread(flat, tokens, masked.shape, s.mask_id)
        index = _scatter_block(canvas, block_tokens != s.mask_id, False)
        return Commit(index=index, tokens=_scatter_block(canvas, block_tokens, s.mask_id))


class DyLLMSamplerPolicy(ConfidencePolicy):
    """The DyLLM engine's sampler (``sampler='dyllm'``): scores from ``dyllm_sample``,
    committed in descending score order."""

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        x0, confidence = self.propose(logits, rows, canvas)
        counts = self.schedule.count(canvas)
        if isinstance(counts, int):
            counts = torch.full((canvas.batch,), counts, dtype=torch.long, device=canvas.x.device)
        return ranked_commit(confidence, x0, counts, canvas)

    def propose(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> tuple[torch.Tensor, torch.Tensor]:
        s = canvas.settings
        masked = canvas.block_masked()
        window = logits[:, _window(rows, canvas)]
        if canvas.spec.family == "llada":
            # a LLaDA row's token and score depend on that row alone (row-wise softmax, sort and max, no
            # draw), so every row of the block is scored and the decided ones dropped: the engine's
            # values without gathering the masked rows first
            score, tokens = dyllm_sample(window.reshape(-1, window.shape[-1]), "llada", s.temperature, s.top_k, s.top_p)
            x0 = torch.where(masked, tokens.view(masked.shape), s.mask_id)
            conf = score.view(masked.shape).masked_fill(~masked, -torch.inf)
        else:  # Dream draws over the candidates in order, and its entropy is a sum: the masked rows alone
            candidates, flat = gather_candidates(window, masked, block_masks(canvas))
            score, tokens = dyllm_sample(candidates, canvas.spec.family, s.temperature, s.top_k, s.top_p)
            x0 = spread(flat, tokens, masked.shape, s.mask_id)
            conf = spread(flat, score, masked.shape, -torch.inf)
        return _scatter_block(canvas, x0, s.mask_id), _scatter_block(canvas, conf, -torch.inf)
