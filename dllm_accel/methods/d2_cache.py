"""d2Cache (Kamichanw/d2Cache ``src/cache/d2cache.py``): dual adaptive token-level KV refresh.

The first pass computes every row and fills the K/V cache. After each step the strategy picks
the rows the next pass recomputes; every other row keeps its cached K/V and gets no logits:

1. masked positions: the ``current_k`` best by certainty-weighted confidence, searched from the
   current block up to the block boundary that holds ``current_k`` masks, the block's own masks
   favoured (Dream: the row before each, which scores it);
2. every position decoded this step (its token changed from [MASK]);
3. of the rest, a nucleus (``rollout_p``) by attention rollout: the product over layers of the
   row-normalised (head-mean attention + identity), summed over query rows (Dream: the last
   prompt row follows whether the first response position was picked);
4. with ``inflate_w`` > 0, every gap of at most that width between picked rows.

Rows of a batch are topped up to the widest row's count (masked positions by density first,
then by rollout). Decoding is the certainty-prior rule (``policy='certainty_prior'``), which
only commits positions whose logits this pass computed (``scored``).

Official behaviours kept: positions whose row was not computed stay candidates, scored from
zero logits (the official valid-mask update writes into a copy; ``score_uncomputed``); the confidences the selection weighs are those of the generation's
first step (the official per-step update writes into a copy; ``frozen_confidence``); the
selection is never reset between blocks; the block bias adds the largest score, whatever its sign;
"the block" is the block's masks before the step (the official mask is narrowed in place), which
also sets the rounding unit of the search window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..generation.canvas import Canvas, Commit
from ..generation.policies import DecodingPolicy
from ..generation.rules.certainty_prior import CertaintyPriorPolicy, certainty_density
from ..models.core import DiffusionTransformer
from .base import ForwardStrategy, MethodConfig
from .fast_dllm_cache import BlockKVCache
from .registry import register

# keys of the next pass's widest and narrowest row counts, read with the step's block-end check
WIDTH, NARROWEST = "d2_cache.width", "d2_cache.narrowest"


@dataclass
class D2CacheConfig(MethodConfig):
    """d2Cache options; defaults are the official ``configs/cache/d2cache.yaml``."""

    rollout_p: float = 0.1
    current_k: int = 32
    sigma: float = 10.0
    inflate_w: int = 0
    frozen_confidence: bool = True
    score_uncomputed: bool = True
    record_rows: bool = False  # keep every pass's computed positions in ``computed_rows`` (diagnostics)

    def __post_init__(self) -> None:
        if isinstance(self.rollout_p, bool) or not 0 <= self.rollout_p <= 1:
            raise ValueError(f"d2_cache rollout_p={self.rollout_p!r} must be a number in [0, 1]")
        for name in ("current_k", "inflate_w"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "current_k" else 0):
                raise ValueError(f"d2_cache {name}={value!r} must be an integer >= {1 if name == 'current_k' else 0}")
        if isinstance(self.sigma, bool) or not self.sigma > 0:
            raise ValueError(f"d2_cache sigma={self.sigma!r} must be a positive number")
        for name in ("frozen_confidence", "score_uncomputed", "record_rows"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"d2_cache {name}={getattr(self, name)!r} must be true or false")


@register
class D2Cache(ForwardStrategy):
    name = "d2_cache"
    Config = D2CacheConfig
    config: D2CacheConfig
    supports_cfg: ClassVar[bool] = False
    # the official code runs padded batches, but couples their rows: each pass tops every row up to the widest
    # row's count and those rows refresh their K/V, so a row's answer depends on its batch-mates (official, tiny
    # Dream and LLaDA, prompts 16 and 11 -> 32 tokens: the padded row differs from its batch-1 run at 7-18
    # positions; without the cache the certainty rule gives batch-1 answers); the suite promises batch-1 answers
    supports_padding: ClassVar[bool] = False

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        if not isinstance(policy, CertaintyPriorPolicy):
            raise ValueError(
                "d2_cache computes logits only for the rows it selects and weighs masks by the decoder's "
                "confidences: decode it with policy='certainty_prior' (its threshold option for parallel "
                "decoding, sigma null for no prior)"
            )
        self.policy = policy
        return policy

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        batch, length = canvas.x.shape
        self.cache = BlockKVCache(model, batch, length)
        self.rope = model.rope_table(canvas.positions)
        self.eye = torch.eye(length, device=canvas.x.device, dtype=model.dtype)
        self.q_mask: torch.Tensor | None = None  # [B, L] rows the next pass computes; None = all
        self.scored: torch.Tensor | None = None  # [B, L] positions with logits this pass; None = all
        self.full_logits = torch.zeros(batch, length, model.spec.vocab_size, dtype=model.dtype, device=model.device)
        self.conf_cache: torch.Tensor | None = None
        self.widths: list[int] = []
        self.computed_rows: list[list[list[int]]] = []  # per pass and row, [] = every row (record_rows)
        for key in ("dense_passes", "cached_passes", "rows_computed", "rows_dense"):
            canvas.stats[key] = 0.0

    # -- the pass ---------------------------------------------------------------------------
    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        batch, length = canvas.x.shape
        if self.q_mask is None:
            order = torch.arange(length, device=canvas.x.device).expand(batch, -1)
            active = torch.ones_like(canvas.x, dtype=torch.bool)
        else:
            # the widest and narrowest row counts, read with the last step's block-end check
            width, narrowest = canvas.host_value(WIDTH), canvas.host_value(NARROWEST)
            active = self._top_up(self.q_mask, narrowest, width)
            order = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :width]
        if self.config.record_rows:
            self.computed_rows.append([] if self.q_mask is None else [r.nonzero().flatten().tolist() for r in active])
        hidden, self.rollout = self._run(model, canvas, order, active)
        logits = self._logits(model, canvas, hidden, order)
        self._record(canvas, order.shape[1])
        return logits, slice(canvas.prompt_length, length)

    def _run(
        self, model: DiffusionTransformer, canvas: Canvas, order: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states of the ``order`` rows, writing their K/V; and the attention rollout."""
        rows = self.rope.select(order)
        x = model.embed(canvas.x.gather(1, order))
        batch, length = canvas.x.shape
        rollout = self.eye.expand(batch, -1, -1)
        bias = None
        if canvas.key_mask is not None:
            bias = torch.zeros(canvas.key_mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(~canvas.key_mask, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer, block in enumerate(model.blocks):
            q, k, v = block.qkv(block.attn_norm(x))
            keys, values = self.cache.keys[layer], self.cache.values[layer]
            at = order[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
            keys.scatter_(2, at, block.rope(k, rows))
            values.scatter_(2, at, v)
            ctx, weights = _eager_attention(block.rope(q, rows), keys, values, bias)
            rollout = _rollout_step(rollout, weights.mean(dim=1), order, active, self.eye)
            x = x + block.attn_out(ctx)
            x = x + block.mlp(block.mlp_norm(x))
        return x, rollout

    def _logits(self, model: DiffusionTransformer, canvas: Canvas, hidden: torch.Tensor, order: torch.Tensor):
        """Logits of the response positions; zeros where this pass computed no row (as officially)."""
        batch, length = canvas.x.shape
        start, shift = canvas.prompt_length, int(canvas.spec.logit_shift)
        computed = torch.zeros(batch, length, dtype=torch.bool, device=canvas.x.device).scatter_(1, order, True)
        full = self.full_logits.zero_()
        full.scatter_(1, order[:, :, None].expand(-1, -1, full.shape[-1]), model.logits(hidden))
        if shift:
            full = model.shift_logits(full)
            computed = torch.cat([computed[:, :1], computed[:, :-1]], dim=1)
        self.scored = None if self.config.score_uncomputed else computed
        return full[:, start:]

    def _top_up(self, q_mask: torch.Tensor, narrowest: int, width: int) -> torch.Tensor:
        """Every row gets the widest row's count: masks by density first, then by rollout."""
        if narrowest == width:
            return q_mask
        gen = self.density_score.shape[1]
        scores = torch.where(q_mask, -torch.inf, self.importance)
        scores[:, -gen:] += scores.max() + self.density_score
        need = width - q_mask.sum(dim=1)
        order = torch.topk(scores, width - narrowest, dim=1).indices
        take = torch.arange(order.shape[1], device=order.device)[None, :] < need[:, None]
        return q_mask.clone().scatter_(1, torch.where(take, order, order[:, :1]), take) | q_mask

    def _record(self, canvas: Canvas, width: int) -> None:
        canvas.nfe += 1
        self.widths.append(width)
        stats, batch = canvas.stats, canvas.x.shape[0]
        stats["dense_passes" if self.q_mask is None else "cached_passes"] += 1
        stats["rows_computed"] += width * batch
        stats["rows_dense"] += canvas.length * batch

    # -- the next pass's rows ---------------------------------------------------------------
    def after_commit(self, canvas: Canvas, commit: Commit) -> None:
        c, start = self.config, canvas.prompt_length
        confidence = self.policy.confidence
        if self.conf_cache is None or not c.frozen_confidence:
            self.conf_cache = confidence
        remaining = canvas.x[:, start:] == canvas.mask_id
        # the official block mask is narrowed in place to the masks before the step (check_can_generate)
        block = torch.zeros_like(remaining)
        block[:, canvas.block_start - start : canvas.block_end - start] = True
        block &= remaining | commit.index[:, start:]
        selected, scores = self._masked_rows(remaining, block)
        dream = canvas.spec.logit_shift
        response = F.pad(selected[:, 1:], (0, 1), value=False) if dream else selected.clone()
        response |= commit.index[:, start:]
        q_mask = F.pad(response, (start, 0), value=False)
        importance = self.rollout.sum(dim=1)
        q_mask |= nucleus_select(importance, c.rollout_p, ~q_mask)
        if dream:
            q_mask[:, start - 1] = selected[:, 0]
        if c.inflate_w > 0:
            q_mask |= _inflate(q_mask, c.inflate_w)
        self.q_mask, self.importance, self.density_score = q_mask, importance, scores
        counts = q_mask.sum(dim=1)
        canvas.read_with_step(WIDTH, counts.max())
        canvas.read_with_step(NARROWEST, counts.min())

    def _masked_rows(self, remaining: torch.Tensor, block: torch.Tensor):
        """The ``current_k`` masks to recompute, and the weighted scores that ranked them.

        ``block`` holds the block's masks before the step; its size is the rounding unit of the search end.
        """
        k, gen = self.config.current_k, remaining.shape[1]
        # a row whose block is already full (padded batches) selects as if its block had one mask
        block_size = block.sum(dim=1, keepdim=True).clamp_min(1)
        meets = torch.cumsum(remaining.int(), dim=1) >= k
        end = torch.argmax(meets.int(), dim=1, keepdim=True)
        end = torch.where(meets.any(dim=1, keepdim=True), end, torch.full_like(end, gen - 1))
        end = (end // block_size + 1) * block_size - 1
        first = torch.argmax(block.int(), dim=1, keepdim=True)
        cols = torch.arange(gen, device=remaining.device)
        search = (cols >= first) & (cols <= end)
        scores = self.conf_cache * certainty_density(~remaining, self.config.sigma)
        scores = torch.where(block, scores + scores.max(), scores)
        ranked = torch.where(search & remaining, scores, -torch.inf)
        picked = torch.topk(ranked, min(k, gen), dim=1).indices
        selected = torch.zeros_like(remaining).scatter_(1, picked, True) & remaining
        return selected, scores


def _eager_attention(q, keys, values, bias):
    """Softmax attention with its weights (fp32 softmax, cast back), GQA by repetition."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values), weights


def _rollout_step(rollout, mean_weights, order, active, eye):
    """One layer of attention rollout: computed rows take their head-mean attention, others identity."""
    batch, length = active.shape
    rows = eye.repeat(batch, 1, 1)
    rows.scatter_(1, order[:, :, None].expand(-1, -1, length), mean_weights)
    residual = rows + eye
    residual = residual / residual.sum(dim=-1, keepdim=True)
    return residual @ rollout


def nucleus_select(scores: torch.Tensor, top_p: float, allowed: torch.Tensor) -> torch.Tensor:
    """[B, L] the smallest prefix of ``allowed`` positions by score whose share stays <= top_p, at least one."""
    scores = torch.where(allowed, scores, 0.0)
    share = scores / (scores.sum(dim=-1, keepdim=True) + 1e-9)
    ranked, order = torch.sort(share, dim=-1, descending=True)
    keep = torch.cumsum(ranked, dim=-1) <= top_p
    keep[:, :1] = True
    keep &= torch.gather(allowed, 1, order)
    return torch.zeros_like(allowed).scatter_(1, order, keep)


def _inflate(q_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Positions in a gap of at most ``width`` between two picked rows."""
    batch, length = q_mask.shape
    cols = torch.arange(length, device=q_mask.device).expand(batch, -1)
    following = torch.flip(torch.cummin(torch.flip(torch.where(q_mask, cols, length), [-1]), dim=-1).values, [-1])
    previous = torch.cummax(torch.where(q_mask, cols, -1), dim=-1).values
    gap = (following - cols) + (cols - previous)
    return (gap <= width) & (previous >= 0) & (following < length)
