"""DyLLM: recompute only salient tokens, approximating everyone else's attention (spec B).

Per layer and token four caches from the previous step are kept: post-RoPE K, V, the
attention context C (before ``o_proj``) and the FFN output. The first ``num_full_steps``
steps are dense; the last of them fills the caches. A sparse step then, layer by layer:

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
from .base import ForwardStrategy, MethodConfig, scored_rows
from .dyllm_kernel import KERNELS, attention_with_lse, compute_dtype, cosine, update_context
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
    """One layer's caches, allocated at most once per generation. K, V and the FFN output have one row
    more than the sequence: a sink that padded slots of a salient-row selection write into, so
    that no write needs to know how many slots are real."""

    k: torch.Tensor  # [B, H_kv, L + 1, D] post-RoPE
    v: torch.Tensor  # [B, H_kv, L + 1, D]
    c: torch.Tensor  # [B, H, L, D] attention context before o_proj
    f: torch.Tensor  # [B, L + 1, d_model] FFN output

    @classmethod
    def empty(cls, model: DiffusionTransformer, batch: int, length: int) -> LayerCache:
        s = model.spec
        kv = (batch, s.n_kv_heads, length + 1, s.head_dim)
        options = {"dtype": model.dtype, "device": model.device}
        return cls(
            torch.zeros(kv, **options),  # zeros: the sink row must hold finite values
            torch.zeros(kv, **options),
            torch.empty(batch, s.n_heads, length, s.head_dim, **options),
            torch.empty(batch, length + 1, s.d_model, **options),
        )


@dataclass
class StepRecord:
    step: int  # 1-based global step
    kind: str  # full, sparse or pruned
    # per layer [B] on the device: how many of each row's query rows the cosine test made salient
    # (this layer's FFN, next layer's K/V); read once, when the generation ends
    counts: list[torch.Tensor] = field(default_factory=list)
    # the step's query rows of requests still running (padding excluded; on the device when it
    # depends on data)
    queried: torch.Tensor | int = 0
    # per layer [B, L] bool of those sets in absolute positions, when ``record_salient``
    salient: list[torch.Tensor] | None = None


@dataclass
class Selection:
    """Salient rows in ``width`` slots per request, ascending, real ones first. Empty slots hold
    distinct non-salient query rows in ``rows`` (safe to gather) and the sink in ``columns``."""

    rows: torch.Tensor  # [B, W] query-row coordinates
    columns: torch.Tensor  # [B, W] absolute columns; L (the caches' sink row) for empty slots
    first: int  # absolute column of query row 0

    @property
    def keys(self) -> torch.Tensor:
        """Absolute columns of ``rows`` (RoPE positions of the recomputed keys)."""
        return self.rows + self.first if self.first else self.rows


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
            positions = torch.arange(length, device=device)
            self.starts = None
        else:
            positions = (canvas.key_mask.long().cumsum(dim=1) - 1).clamp(min=0)
            self.starts = (~canvas.key_mask).sum(dim=1)
        self.rope = self._rope(model, positions)
        self.key_bias = None
        if canvas.key_mask is not None:
            bias = torch.zeros(batch, 1, 1, length, dtype=model.dtype, device=device)
            self.key_bias = bias.masked_fill_(~canvas.key_mask[:, None, None, :], -torch.inf)
        # allocated by the first dense step that a sparse step follows (never, if none does)
        self.caches: list[LayerCache] = []
        self.layers = len(model.blocks)
        self.logits = torch.empty(batch, 0, model.spec.vocab_size, dtype=model.dtype, device=device)
        self.seed = torch.zeros_like(canvas.x, dtype=torch.bool)
        self.columns = torch.arange(length, device=device)
        self.sink = torch.full((), length, device=device)
        self.trace: list[StepRecord] = []

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        kind, queries = self.plan(canvas)
        record = StepRecord(canvas.step + 1, kind, salient=[] if self.config.record_salient else None)
        # rows stopped by the EOS early exit stay in the batch (no host read to drop them) but
        # select nothing, so they add no work to the salient paths and no count to the statistics
        running = None if canvas.finished is None else ~canvas.finished
        if kind == FULL:
            hidden = self._full(model, canvas.x, refill=self.kind_ahead(canvas, 1) != FULL)
        else:
            hidden = self._sparse(model, canvas, queries, running, record)
        canvas.nfe += 1
        self.trace.append(record)
        canvas.pass_rows = queries
        rows = scored_rows(canvas, queries)
        return self._write_logits(model, hidden, queries, rows, running), rows

    def plan(self, canvas: Canvas) -> tuple[str, slice]:
        """This step's kind and query rows: every row, or the response rows on pruned steps (spec B.4).

        A dense step returns every row; a stacked strategy may narrow a sparse step's queries.
        """
        kind = self.kind_ahead(canvas)
        return kind, slice(canvas.prompt_length if kind == PRUNED else 0, canvas.length)

    def kind_ahead(self, canvas: Canvas, ahead: int = 0) -> str:
        """The kind of the step ``ahead`` steps after this one (0: this one; a dense step refills the
        caches only when the next one is sparse)."""
        return step_kind(canvas.step + 1 + ahead, self.config.num_full_steps, self.config.prune_period)

    def after_commit(self, canvas: Canvas, commit: Commit) -> None:
        # the engine keeps the previous positions when a request commits nothing
        self.seed = torch.where(commit.index.any(dim=1, keepdim=True), commit.index, self.seed)

    def finish(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        kinds = [r.kind for r in self.trace]
        canvas.stats.update({f"dyllm_{k}_steps": float(kinds.count(k)) for k in (FULL, SPARSE, PRUNED)})
        rows = self._fractions().tolist()  # the generation's one read of its statistics
        if not rows:
            return
        values = sorted(v for row in rows for v in row)
        canvas.stats["salient_fraction_mean"] = sum(values) / len(values)
        for q in (0.1, 0.5, 0.9):
            canvas.stats[f"salient_fraction_p{int(q * 100)}"] = _quantile(values, q)
        for layer, column in enumerate(zip(*rows, strict=True)):
            canvas.stats[f"salient_fraction_layer{layer}"] = sum(column) / len(column)

    @property
    def salient_fractions(self) -> torch.Tensor:
        """[sparse steps, layers]: the per-step, per-layer salient fractions of this generation
        (share of the step's query rows of running requests)."""
        return self._fractions().cpu()

    def _fractions(self) -> torch.Tensor:
        sparse = [r for r in self.trace if r.kind != FULL]
        if not sparse:
            return torch.zeros(0, self.layers, dtype=torch.float64)
        counts = torch.stack([torch.stack(r.counts).sum(dim=1) for r in sparse]).double()
        queried = torch.stack([torch.as_tensor(r.queried, device=counts.device) for r in sparse])
        return counts / queried.double().clamp(min=1)[:, None]

    # -- passes -----------------------------------------------------------------------
    def _full(self, model: DiffusionTransformer, ids: torch.Tensor, refill: bool) -> torch.Tensor:
        """A dense pass (the blocks' primitives in ``Block.forward`` order); with ``refill`` it also
        writes every cache, which only a sparse step reads (a dense step after it would overwrite them)."""
        batch, length = ids.shape
        if refill and not self.caches:
            self.caches = [LayerCache.empty(model, batch, length) for _ in model.blocks]
        x = model.embed(ids)
        for i, block in enumerate(model.blocks):
            q, k, v = block.qkv(block.attn_norm(x))
            k = block.rope(k, self.rope)
            ctx = block.attend(block.rope(q, self.rope), k, v, self.key_mask)
            x = x + block.attn_out(ctx)
            ffn = block.mlp(block.mlp_norm(x))
            if refill:
                cache = self.caches[i]
                cache.k[:, :, :length] = k
                cache.v[:, :, :length] = v
                cache.c.copy_(ctx)
                cache.f[:, :length] = ffn
            x = x + ffn
        return x

    def _sparse(
        self,
        model: DiffusionTransformer,
        canvas: Canvas,
        queries: slice,
        running: torch.Tensor | None,
        record: StepRecord,
    ) -> torch.Tensor:
        """Query rows ``queries``; one host read per layer (the widest row's salient count)."""
        width = queries.stop - queries.start
        real = None if self.key_mask is None else self.key_mask[:, queries]
        if running is not None:
            real = running[:, None] if real is None else real & running[:, None]
        record.queried = width * canvas.x.shape[0] if real is None else real.expand(-1, width).sum()
        # layer 0: the positions decoded last step, all inside one block (an async check says so)
        seed = self.seed[:, queries] if running is None else self.seed[:, queries] & running[:, None]
        bound = min(width, canvas.settings.block_length)
        torch._assert_async((seed.sum(dim=1) <= bound).all(), "dyllm: a step decoded more than a block")
        chosen = self._select(seed, bound, queries)
        rope = self.rope.select(queries)
        x = model.embed(canvas.x[:, queries])
        for block, cache in zip(model.blocks, self.caches, strict=True):
            h = block.attn_norm(x)
            q = block.rope(block.query(h), rope)
            old = cache.c[:, :, queries]
            salient = self._attention(model, block, cache, h, q, chosen, old, real, queries.start)
            counts = salient.sum(dim=1)
            record.counts.append(counts)
            chosen = self._select(salient, int(counts.max()), queries)  # the layer's one host read
            x = x + block.attn_out(old)
            if chosen.rows.shape[1]:
                ffn = block.mlp(block.mlp_norm(_gather_rows(x, chosen.rows)))
                cache.f.scatter_(1, _along(chosen.columns, 1, ffn), ffn)
            x = x + cache.f[:, queries]
            self._record(record, salient, queries, canvas)
        return x

    def _attention(
        self,
        model: DiffusionTransformer,
        block: Block,
        cache: LayerCache,
        h: torch.Tensor,
        q: torch.Tensor,
        chosen: Selection,
        old: torch.Tensor,
        real: torch.Tensor | None,
        first: int,
    ) -> torch.Tensor:
        """Recompute K/V of the ``chosen`` rows, write every query row's new context into ``old``
        (the C cache rows of the queries; exact for the chosen rows, approximated for the rest)
        and return the rows whose new context has cosine < threshold with the cached one."""
        dtype = compute_dtype(model.dtype)
        length = cache.c.shape[2]
        if not chosen.rows.shape[1]:  # no key changed: every context stays as it was
            salient = cosine(old.to(dtype), old, torch.promote_types(torch.float32, model.dtype)) < self.config.threshold
            return salient if real is None else salient & real
        h_s = _gather_rows(h, chosen.rows)
        k_s = block.rope(block.key(h_s), self.rope.select(chosen.keys))
        v_s = block.value(h_s)
        # empty slots read and write the sink row; their dV gets weight 0 in the kernel
        at = _along(chosen.columns, 2, v_s)
        delta_v = v_s - cache.v.gather(2, at)
        cache.k.scatter_(2, at, k_s)
        cache.v.scatter_(2, at, v_s)
        keys, values = cache.k[:, :, :length], cache.v[:, :, :length]
        lse = None
        if self._fused_cpu(q, dtype):  # every row's exact context and log-normaliser in one fused pass
            exact, lse = attention_with_lse(q, keys, values, self.key_bias)
            exact = exact.gather(2, _along(chosen.rows, 2, exact))
        else:
            exact = block.attend(q.gather(2, _along(chosen.rows, 2, q)), keys, values, self.key_mask)
        return update_context(
            q.to(dtype),
            cache.k,
            delta_v,
            chosen.columns,
            exact.to(dtype),
            old,
            real,
            self.starts,
            first,
            self.config.threshold,
            self.quirks.carry_scores,
            self.quirks.unmasked_padding,
            lse,
        )

    def _fused_cpu(self, q: torch.Tensor, dtype: torch.dtype) -> bool:
        """On CPU the fixed build without 16-bit rounding takes the fused attention's normaliser."""
        return q.device.type == "cpu" and self.quirks == KERNELS["fixed"] and q.dtype == dtype

    def _select(self, mask: torch.Tensor, width: int, queries: slice) -> Selection:
        """The true rows of ``mask`` [B, T] (query rows ``queries``), ``width`` slots per row."""
        key = torch.where(mask, self.columns[queries], self.sink)
        columns, rows = torch.sort(key, dim=1, stable=True)
        return Selection(rows[:, :width], columns[:, :width], queries.start)

    # -- helpers ----------------------------------------------------------------------
    def _rope(self, model: DiffusionTransformer, positions: torch.Tensor) -> RopeTable:
        s = model.spec
        half = model.dtype in (torch.bfloat16, torch.float16)
        in_fp32 = s.rope_in_fp32 or (self.config.engine_rope and half)
        return RopeTable(positions, s.rope_dim, s.rope_theta, in_fp32, model.dtype, s.rope_scaling)

    def _write_logits(
        self,
        model: DiffusionTransformer,
        hidden: torch.Tensor,
        queries: slice,
        rows: slice,
        running: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits of ``rows`` (the ones the policy reads) from the last hidden states of the query
        rows: final norm and head over those rows only, written row by row into a buffer kept
        across steps (grown to the widest read), so no step allocates a [B, R, V] tensor."""
        start, width = rows.start - queries.start, rows.stop - rows.start
        if model.spec.logit_shift and start == 0:  # the pass's first row has no state before it
            states = _shift(hidden, self.config.dream_packed_shift, running)[:, :width]
        elif model.spec.logit_shift:
            states = hidden[:, start - 1 : start - 1 + width]
        else:
            states = hidden[:, start : start + width]
        normed = model.final_norm(states)
        if self.logits.shape[1] < width:
            self.logits = self.logits.new_empty(self.logits.shape[0], width, self.logits.shape[2])
        weight = model.head.weight.t()
        for row in range(normed.shape[0]):
            torch.mm(normed[row], weight, out=self.logits[row, :width])
        return self.logits[:, :width]

    def _record(self, record: StepRecord, salient: torch.Tensor, queries: slice, canvas: Canvas) -> None:
        if record.salient is not None:
            full = torch.zeros_like(canvas.x, dtype=torch.bool)
            full[:, queries] = salient
            record.salient.append(full.cpu())


def _shift(x: torch.Tensor, packed: bool, running: torch.Tensor | None = None) -> torch.Tensor:
    """Dream's next-token shift of rows [B, T, ...]. ``packed``: over the engine's packed batch,
    so each request's first row comes from the previous running request's last (the first
    keeps its own); ``running`` [B] marks the requests still in the batch (None: all)."""
    shifted = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    if not packed or x.shape[0] < 2:
        return shifted
    if running is None:
        shifted[1:, 0] = x[:-1, -1]
        return shifted
    order = torch.arange(x.shape[0], device=x.device)
    latest = torch.where(running, order, -1).cummax(dim=0).values
    previous = torch.cat([latest.new_full((1,), -1), latest[:-1]])
    has = (previous >= 0).view(-1, *[1] * (x.dim() - 2))
    shifted[:, 0] = torch.where(has, x[previous.clamp(min=0), -1], x[:, 0])
    return shifted


def _quantile(ordered: list[float], q: float) -> float:
    """``torch.quantile``'s linear interpolation over sorted values."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _along(index: torch.Tensor, dim: int, like: torch.Tensor) -> torch.Tensor:
    """``index`` [B, W] expanded to gather/scatter ``like``'s rows along ``dim`` (2: [B, H, W, D]; 1: [B, W, F])."""
    if dim == 1:
        return index[..., None].expand(-1, -1, like.shape[-1])
    return index[:, None, :, None].expand(-1, like.shape[1], -1, like.shape[-1])


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, _along(index, 1, x))
