"""DyLLM: recompute only salient tokens, approximating everyone else's attention (spec B).

Per layer and token four caches from the previous step are kept: post-RoPE K, V, the
attention context C (before ``o_proj``) and the FFN output. The first ``num_full_steps``
steps are dense and refill them. A sparse step then, layer by layer:

1. recomputes K/V for the salient rows only (at layer 0, the positions decoded last step);
2. gives salient query rows exact attention and every other row
   ``C_old + softmax(q K^T / sqrt(d)) dV`` (``dyllm_kernel``);
3. marks as salient, for this layer's FFN and the next layer's K/V, every row whose new
   context has cosine ``< threshold`` with its cached one (all heads at once);
4. runs the FFN for those rows and reuses the cached FFN output for the rest.

Steps that are not multiples of ``prune_period`` (after the first period) query only the
response rows. Batched rows behave as the engine's packed requests: each keeps its own
positions from 0, kernel tiles start at its first token, and rows stopped by the EOS
early exit leave the batch. Sampling is the ``dyllm`` sampler of ``generation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..generation.canvas import Canvas, Commit
from ..generation.settings import SettingsError
from ..models.core import Block, DiffusionTransformer
from ..models.rope import RopeTable
from .base import ForwardStrategy, MethodConfig
from .dyllm_kernel import KERNELS, compute_dtype, context_delta, cosine
from .registry import register

FULL, SPARSE, PRUNED = "full", "sparse", "pruned"


def step_kind(step: int, num_full_steps: int, period: int = 4) -> str:
    """What the engine runs at 1-based global step ``step`` (spec B.4).

    The first step is always dense, even with ``num_full_steps=0``: requests start in the
    engine's full queue.
    """
    if step <= max(num_full_steps, 1):
        return FULL
    if step > period and step % period:
        return PRUNED
    return SPARSE


@dataclass
class DyLLMConfig(MethodConfig):
    # tau: a token is salient in a layer when cos(C_new, C_old) < threshold (strict)
    threshold: float = 0.99
    # dense steps at the start (global step counter, not per block); the shipped scripts and
    # the paper use 4 (the engine's SamplingParams default is 16)
    num_full_steps: int = 4
    # steps above it that are not its multiples query only the response rows; the engine
    # hard-codes 4; 1 never prunes
    prune_period: int = 4
    # sparse-attention kernel: "fixed" (scale-snu) or "legacy" (younjoo0614 HEAD quirks, spec B.9)
    kernel: str = "fixed"
    # Dream: the engine shifts logits over the packed batch, so on pruned steps request b's
    # first response row takes request b-1's last one; False shifts each request alone
    dream_packed_shift: bool = True
    # rotate q/k in fp32 for 16-bit activations in every family, as the engine's rotary layer
    # (the HF Dream code rotates in the activation dtype); no effect in fp32 or fp64
    engine_rope: bool = True
    # keep every step's per-layer salient sets in ``trace`` (tests and analysis)
    record_salient: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise SettingsError(f"dyllm threshold={self.threshold!r} must be a number")
        if not math.isfinite(self.threshold):
            raise SettingsError(f"dyllm threshold={self.threshold!r} must be finite")
        if isinstance(self.num_full_steps, bool) or not isinstance(self.num_full_steps, int) or self.num_full_steps < 0:
            raise SettingsError(f"dyllm num_full_steps={self.num_full_steps!r} must be an integer >= 0")
        if isinstance(self.prune_period, bool) or not isinstance(self.prune_period, int) or self.prune_period < 1:
            raise SettingsError(f"dyllm prune_period={self.prune_period!r} must be an integer >= 1")
        if self.kernel not in KERNELS:
            raise SettingsError(f"unknown dyllm kernel {self.kernel!r} (accepted: {', '.join(KERNELS)})")


@dataclass
class LayerCache:
    k: torch.Tensor  # [B, H_kv, L, D] post-RoPE
    v: torch.Tensor  # [B, H_kv, L, D]
    c: torch.Tensor  # [B, H, L, D] attention context before o_proj
    f: torch.Tensor  # [B, L, d_model] FFN output

    def rows(self, keep: torch.Tensor) -> LayerCache:
        return LayerCache(self.k[keep], self.v[keep], self.c[keep], self.f[keep])


@dataclass
class StepRecord:
    step: int  # 1-based global step
    kind: str  # full, sparse or pruned
    # per layer: share of the step's query rows (of running requests, padding excluded) in
    # the salient set the cosine test produced (this layer's FFN, next layer's K/V)
    fractions: list[float] = field(default_factory=list)
    # per layer [B, L] bool of those sets in absolute positions, when ``record_salient``
    salient: list[torch.Tensor] | None = None


@register
class DyLLM(ForwardStrategy):
    name = "dyllm"
    Config = DyLLMConfig

    def check(self, canvas: Canvas) -> None:
        super().check(canvas)
        mask = canvas.key_mask
        if mask is not None and bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
            raise ValueError("dyllm needs left-padded prompts: attention_mask must be 0s then 1s in every row")

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        batch, length = canvas.x.shape
        device = canvas.x.device
        self.quirks = KERNELS[self.config.kernel]
        self.key_mask = canvas.key_mask
        if canvas.key_mask is None:
            self.positions = torch.arange(length, device=device).expand(batch, -1)
            self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            self.positions = (canvas.key_mask.long().cumsum(dim=1) - 1).clamp(min=0)
            self.starts = (~canvas.key_mask).sum(dim=1)
        self.rows = torch.arange(batch, device=device)  # canvas rows the caches hold, in batch order
        self.caches: list[LayerCache] = []
        self.seed = torch.zeros_like(canvas.x, dtype=torch.bool)
        self.trace: list[StepRecord] = []

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        self._drop_finished(canvas)
        kind, queries = self.plan(canvas)
        record = StepRecord(canvas.step + 1, kind, salient=[] if self.config.record_salient else None)
        ids = canvas.x[self.rows]
        if kind == FULL:
            logits = self._full(model, ids)
        else:
            logits = self._sparse(model, ids, self.seed[self.rows, queries], queries, canvas, record)
        canvas.nfe += 1
        self.trace.append(record)
        self._summarise(canvas)
        if model.spec.logit_shift:
            logits = _shift(logits, self.config.dream_packed_shift)
        out = logits.new_zeros(canvas.x.shape[0], *logits.shape[1:])
        out[self.rows] = logits
        return out, queries

    def plan(self, canvas: Canvas) -> tuple[str, slice]:
        """This step's kind and query rows: every row, or the response rows on pruned steps (spec B.4).

        A dense step returns every row; a stacked strategy may narrow a sparse step's queries.
        """
        kind = step_kind(canvas.step + 1, self.config.num_full_steps, self.config.prune_period)
        return kind, slice(canvas.prompt_length if kind == PRUNED else 0, canvas.length)

    def after_commit(self, canvas: Canvas, commit: Commit) -> None:
        # the engine keeps the previous positions when a request commits nothing
        self.seed = torch.where(commit.index.any(dim=1, keepdim=True), commit.index, self.seed)

    # -- passes -----------------------------------------------------------------------
    def _full(self, model: DiffusionTransformer, ids: torch.Tensor) -> torch.Tensor:
        """A dense pass (the blocks' primitives in ``Block.forward`` order) that refills every cache."""
        rope = self._rope(model, self.positions[self.rows])
        key_mask = self._key_mask()
        x = model.embed(ids)
        self.caches = []
        for block in model.blocks:
            q, k, v = block.qkv(block.attn_norm(x))
            k = block.rope(k, rope)
            ctx = block.attend(block.rope(q, rope), k, v, key_mask)
            x = x + block.attn_out(ctx)
            ffn = block.mlp(block.mlp_norm(x))
            x = x + ffn
            self.caches.append(LayerCache(k, v, ctx, ffn))
        return model.logits(x)

    def _sparse(
        self,
        model: DiffusionTransformer,
        ids: torch.Tensor,
        salient: torch.Tensor,
        queries: slice,
        canvas: Canvas,
        record: StepRecord,
    ) -> torch.Tensor:
        """Query rows ``queries``; ``salient`` [B, T] is the layer-0 seed in query coordinates."""
        positions = self.positions[self.rows]
        real = torch.ones_like(salient) if self.key_mask is None else self._key_mask()[:, queries]
        salient = salient & real
        rope = self._rope(model, positions[:, queries])
        x = model.embed(ids[:, queries])
        for block, cache in zip(model.blocks, self.caches, strict=True):
            h = block.attn_norm(x)
            q = block.rope(block.query(h), rope)
            context = self._attention(model, block, cache, h, q, salient, positions, queries)
            cos = cosine(context, cache.c[:, :, queries], torch.promote_types(torch.float32, model.dtype))
            salient = (cos < self.config.threshold) & real
            context = context.to(model.dtype)
            cache.c[:, :, queries] = context
            x = x + block.attn_out(context)
            h = block.mlp_norm(x)
            index, valid = _index(salient)
            if valid.any():
                b, i = valid.nonzero(as_tuple=True)
                ffn = block.mlp(_gather_rows(h, index))
                cache.f[b, index[b, i] + queries.start] = ffn[b, i]
            x = x + cache.f[:, queries]
            self._record(record, salient, real, queries, canvas)
        return model.logits(x)

    def _attention(
        self,
        model: DiffusionTransformer,
        block: Block,
        cache: LayerCache,
        h: torch.Tensor,
        q: torch.Tensor,
        salient: torch.Tensor,
        positions: torch.Tensor,
        queries: slice,
    ) -> torch.Tensor:
        """New contexts [B, H, T, D]: exact for salient rows (model dtype), approximated for the
        rest in the kernel's accumulation dtype, before any rounding (the cosine sees these)."""
        dtype = compute_dtype(model.dtype)
        old = cache.c[:, :, queries]
        index, valid = _index(salient)
        if not valid.any():
            return old.to(dtype)
        b, i = valid.nonzero(as_tuple=True)
        keys_at = index + queries.start
        h_s = _gather_rows(h, index)
        k_s = block.rope(block.key(h_s), self._rope(model, positions.gather(1, keys_at)))
        v_s = block.value(h_s)
        rows, cols = b, keys_at[b, i]
        fresh_v = v_s.transpose(1, 2)[b, i]
        delta_v = torch.zeros_like(cache.v)
        delta_v[rows, :, cols] = fresh_v - cache.v[rows, :, cols]
        cache.k[rows, :, cols] = k_s.transpose(1, 2)[b, i]
        cache.v[rows, :, cols] = fresh_v
        exact = block.attend(_gather_heads(q, index), cache.k, cache.v, self._key_mask())
        pv_dtype = None if dtype == model.dtype else model.dtype
        delta = context_delta(q.to(dtype), cache.k, delta_v, self.starts[self.rows], self.quirks, pv_dtype)
        context = old.to(dtype) + delta
        context[b, :, index[b, i]] = exact.transpose(1, 2)[b, i].to(dtype)
        return context

    # -- helpers ----------------------------------------------------------------------
    def _rope(self, model: DiffusionTransformer, positions: torch.Tensor) -> RopeTable:
        s = model.spec
        half = model.dtype in (torch.bfloat16, torch.float16)
        in_fp32 = s.rope_in_fp32 or (self.config.engine_rope and half)
        return RopeTable(positions, s.head_dim, s.rope_theta, in_fp32, model.dtype, s.rope_scaling)

    def _key_mask(self) -> torch.Tensor | None:
        return None if self.key_mask is None else self.key_mask[self.rows]

    def _drop_finished(self, canvas: Canvas) -> None:
        """Requests stopped by the EOS early exit leave the batch and free their cache rows."""
        if canvas.finished is None:
            return
        keep = ~canvas.finished[self.rows]
        if bool(keep.all()):
            return
        self.rows = self.rows[keep]
        self.caches = [cache.rows(keep) for cache in self.caches]

    def _record(
        self, record: StepRecord, salient: torch.Tensor, real: torch.Tensor, queries: slice, canvas: Canvas
    ) -> None:
        record.fractions.append(float(salient.sum()) / max(int(real.sum()), 1))
        if record.salient is not None:
            full = torch.zeros_like(canvas.x, dtype=torch.bool)
            full[self.rows, queries] = salient
            record.salient.append(full.cpu())

    def _summarise(self, canvas: Canvas) -> None:
        kinds = [r.kind for r in self.trace]
        canvas.stats.update({f"dyllm_{k}_steps": float(kinds.count(k)) for k in (FULL, SPARSE, PRUNED)})
        fractions = self.salient_fractions
        if fractions.numel():
            canvas.stats["salient_fraction_mean"] = float(fractions.mean())
            for q in (0.1, 0.5, 0.9):
                canvas.stats[f"salient_fraction_p{int(q * 100)}"] = float(fractions.quantile(q))
            for layer, value in enumerate(fractions.mean(dim=0).tolist()):
                canvas.stats[f"salient_fraction_layer{layer}"] = value

    @property
    def salient_fractions(self) -> torch.Tensor:
        """[sparse steps, layers]: the per-step, per-layer salient fractions of this generation."""
        rows = [r.fractions for r in self.trace if r.kind != FULL]
        return torch.tensor(rows, dtype=torch.float64)


def _shift(logits: torch.Tensor, packed: bool) -> torch.Tensor:
    """Dream's next-token shift. ``packed``: over the engine's packed batch, so each row's
    first logits come from the previous row's last (the first row keeps its own)."""
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    if packed and logits.shape[0] > 1:
        shifted[1:, 0] = logits[:-1, -1]
    return shifted


def _index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending true columns of each row of ``mask`` [B, T], padded: (index [B, n], valid [B, n])."""
    counts = mask.sum(dim=1)
    width = int(counts.max()) if mask.shape[0] else 0
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _gather_heads(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(2, index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))
