"""Sparse-dLLM: dynamic cache eviction with delayed bidirectional sparse caching.

Per block: dense passes up to the delay step; at the delay step every layer also scores
the non-block keys (prefix and suffix) against the block's queries and keeps the most
important ``keep_ratio`` of them, post-RoPE; every later step runs only the block, at its
absolute positions, attending to [kept K/V ; fresh block K/V]. Spec:
``specs/sparse-dllm-and-dyllm.md`` part A; official code OpenMOSS/Sparse-dLLM.

Batches (the official code runs batch 1): each row selects on its own. A padded row
scores, pools and keeps only its own non-pad keys, with the budget of its unpadded length,
so it keeps exactly what its batch-1 run keeps; the cache has the batch's largest budget
and hides the slots a row leaves empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.canvas import Canvas, Commit
from ..generation.parallel import DreamBlockPolicy
from ..generation.policies import DecodingPolicy
from ..generation.scoring import dream_sample_tokens
from ..models.compiled import compiled_pass
from ..models.core import DiffusionTransformer
from ..models.rope import RopeTable
from .base import ForwardStrategy, MethodConfig, pass_logits
from .registry import register
from .sparse_dllm_cache import (
    OwnKeys,
    SparseKVCache,
    block_importance,
    candidate_positions,
    kept_count,
    own_keys,
    select_kept,
)

KEPT_ORDERS = ("importance", "position")


@dataclass
class SparseDLLMConfig(MethodConfig):
    """Sparse-dLLM options; the defaults are the official code's and the paper's.

    keep_ratio: fraction of the L - block_length non-block keys each layer keeps
        (``floor`` of the product, as the official ``int()``); in a padded batch L is the
        row's own unpadded length.
    kernel_size: max-pool window over the importance scores; None = no pooling (the
        official LLaDA wrapper's default; every shipped config passes 3).
    delay: the step within a block whose dense pass builds the cache (official 1: one
        token of the block is already decoded); 0 builds it in the block's first pass.
    joint_selection: prefix and suffix compete in one top-k, pooled across their seam
        (official). False: the prefix keeps ``floor(prefix_length * keep_ratio)`` and the
        suffix the rest of the same total, each pooled and ranked on its own.
    kept_order: order of the kept keys in the cache: ``importance`` (the official top-k
        order) or ``position``. Only float summation order depends on it.
    scaling_factor: multiplies the model's RoPE theta, as the official wrappers'
        ``scaling_config['scaling_factor']`` for long context (1.0 = unchanged).
    record_kept: keep every build's kept positions in ``kept_positions`` (diagnostics).
    """

    keep_ratio: float = 0.5
    kernel_size: int | None = 3
    delay: int = 1
    joint_selection: bool = True
    kept_order: str = "importance"
    scaling_factor: float = 1.0
    record_kept: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.keep_ratio, bool) or not 0 <= self.keep_ratio <= 1:
            raise ValueError(f"keep_ratio={self.keep_ratio!r} must be a number in [0, 1]")
        if self.kernel_size is not None and (not _is_int(self.kernel_size) or self.kernel_size < 1):
            raise ValueError(f"kernel_size={self.kernel_size!r} must be a positive integer or None (no pooling)")
        if not _is_int(self.delay) or self.delay < 0:
            raise ValueError(f"delay={self.delay!r} must be an integer >= 0 (the step within a block that selects)")
        if self.kept_order not in KEPT_ORDERS:
            raise ValueError(f"unknown kept_order {self.kept_order!r} (accepted: {', '.join(KEPT_ORDERS)})")
        if isinstance(self.scaling_factor, bool) or not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor={self.scaling_factor!r} must be a number > 0")


@dataclass(frozen=True)
class PassRecord:
    """What one forward pass cost per sequence: keys each layer attended to, and attention FLOPs."""

    step: int
    block: int
    block_step: int
    kind: str  # "dense", "dense+select" or "sparse"
    keys_per_layer: tuple[int, ...]
    attention_flops: int


@register
class SparseDLLM(ForwardStrategy):
    name = "sparse_dllm"
    Config = SparseDLLMConfig
    config: SparseDLLMConfig

    def check(self, canvas: Canvas) -> None:
        super().check(canvas)
        if canvas.spec.logit_shift and canvas.settings.steps_per_block < 2:
            raise ValueError(
                f"sparse_dllm on {canvas.spec.family} needs at least 2 steps per block (got steps="
                f"{canvas.settings.steps} for {canvas.settings.num_blocks} blocks): its first step only "
                "commits the block's first token"
            )
        s = canvas.settings
        per_step = s.gen_length // s.steps
        if canvas.spec.logit_shift and s.constant_count and s.confidence_threshold is None and per_step > 1:
            raise ValueError(
                f"sparse_dllm on {canvas.spec.family} commits only the block's first token at each block's first "
                f"step, so the constant count of gen_length // steps = {per_step} per step cannot fill the generation "
                f"in steps={s.steps} steps (use one token per step or a threshold rule)"
            )

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        if not canvas.spec.logit_shift:
            return policy
        if canvas.settings.sampler == "dream" and canvas.settings.alg == "confidence_threshold":
            # Threshold decoding on block passes, as Fast-dLLM's cached Dream sampler (the harness of
            # Sparse-dLLM issue #1): the first step commits the block's first position, later steps the
            # best mask and every one >= threshold, until the block is full.
            return DreamBlockPolicy()
        return FirstTokenFirst(policy)

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        spec, block = model.spec, canvas.settings.block_length
        theta = spec.rope_theta * self.config.scaling_factor
        self.rope = RopeTable(canvas.positions, spec.rope_dim, theta, spec.rope_in_fp32, model.dtype, spec.rope_scaling)
        # None: every row has the same keys (no padding); else each row's own keys and budget
        self.rows: list[OwnKeys] | None = None
        self.budgets = [kept_count(canvas.length - block, self.config.keep_ratio)]
        if canvas.key_mask is not None:
            self.rows = own_keys(canvas.key_mask, canvas.prompt_length)
            self.budgets = [kept_count(row.length - block, self.config.keep_ratio) for row in self.rows]
        keep = max(self.budgets)
        shape = (spec.n_layers, canvas.x.shape[0], spec.n_kv_heads, keep, block, spec.head_dim)
        self.cache = SparseKVCache(*shape, model.dtype, model.device, padded=self.rows is not None)
        self.trace: list[PassRecord] = []
        self.kept_positions: list[torch.Tensor] = []
        for key in ("attention_flops", "attention_flops_dense", "dense_passes", "sparse_passes"):
            canvas.stats[key] = 0.0
        canvas.stats["kept_keys_per_layer"] = sum(self.budgets) / len(self.budgets)

    def begin_block(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.candidates = candidate_positions(canvas.length, canvas.block_start, canvas.block_end, model.device)
        if self.rows is not None:
            block = canvas.settings.block_length
            self.row_candidates = [row.candidates(canvas.block, block) for row in self.rows]

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        if canvas.block_step > self.config.delay:
            # Dream's shift inside the window: the block's first row reuses its own output,
            # which is harmless because that position was committed at the block's first step.
            return pass_logits(model, self._block_pass(model, canvas), canvas.block_slice, canvas)
        hidden = self._dense_pass(model, canvas, select=canvas.block_step == self.config.delay)
        if not canvas.spec.logit_shift:
            return pass_logits(model, hidden, slice(0, canvas.length), canvas)
        # Dream's sampler shifts the full logits, then ranks within the block only: the head
        # needs just the rows that predict the block (and ties break over the block's length).
        first = max(canvas.block_start - 1, 0)
        logits = model.shift_logits(model.logits(hidden[:, first : canvas.block_end]))
        return logits[:, canvas.block_start - first :], canvas.block_slice

    # -- passes ------------------------------------------------------------------------
    def _dense_pass(self, model: DiffusionTransformer, canvas: Canvas, select: bool) -> torch.Tensor:
        """Last hidden states of the whole sequence; at the delay step, also fill the cache."""
        block = canvas.block_slice
        x = model.embed(canvas.x)
        for layer, blk in enumerate(model.blocks):
            q, k, v = blk.qkv(blk.attn_norm(x))
            q, k = blk.rope(q, self.rope), blk.rope(k, self.rope)
            if select:
                self._select(layer, q[:, :, block], k, v, canvas)
            x = x + blk.attn_out(blk.attend(q, k, v, canvas.key_mask))
            x = x + blk.mlp(blk.mlp_norm(x))
        if select and self.config.record_kept:
            self.kept_positions.append(self.cache.positions.clone())
        self._record(model, canvas, "dense+select" if select else "dense", canvas.length, canvas.length)
        return x

    def _block_pass(self, model: DiffusionTransformer, canvas: Canvas) -> torch.Tensor:
        """Last hidden states of the block."""
        block = canvas.block_slice
        x = compiled_pass(sparse_block_layers, graphs=True)(model, self.cache, canvas.x[:, block], self.rope.select(block))
        width = canvas.settings.block_length
        self._record(model, canvas, "sparse", width, self.cache.keep + width)
        return x

    def _select(self, layer: int, q_block: torch.Tensor, k: torch.Tensor, v: torch.Tensor, canvas: Canvas) -> None:
        if self.rows is None:
            kept = self._keep(q_block, k, self.candidates, canvas.block_start, self.cache.keep)
            self.cache.store(layer, self.candidates[kept], k, v)
            return
        # Row by row, on tensors shaped as in the row's batch-1 run, so ties break the same way.
        for row, ((candidates, prefix), keep) in enumerate(zip(self.row_candidates, self.budgets, strict=True)):
            one = slice(row, row + 1)
            kept = self._keep(q_block[one], k[one], candidates, prefix, keep)
            self.cache.store_row(layer, row, candidates[kept[0]], k, v)

    def _keep(
        self, q_block: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor, prefix: int, keep: int
    ) -> torch.Tensor:
        """[B, keep] indices into ``candidates`` of the keys to keep, in the configured order."""
        importance = block_importance(q_block, k.index_select(2, candidates))
        budget = None if self.config.joint_selection else (prefix, kept_count(prefix, self.config.keep_ratio))
        kept = select_kept(importance, keep, self.config.kernel_size, budget)
        return kept.sort(dim=-1).values if self.config.kept_order == "position" else kept

    def _record(self, model: DiffusionTransformer, canvas: Canvas, kind: str, queries: int, keys: int) -> None:
        """Count the pass; FLOPs are per sequence (QK^T and AV, 2 per multiply-add), so they average over samples."""
        spec = model.spec
        per_pair = 4 * spec.n_heads * spec.head_dim * spec.n_layers
        record = PassRecord(
            canvas.step, canvas.block, canvas.block_step, kind, (keys,) * spec.n_layers, per_pair * queries * keys
        )
        self.trace.append(record)
        canvas.nfe += 1
        stats = canvas.stats
        stats["attention_flops"] += record.attention_flops
        stats["attention_flops_dense"] += per_pair * canvas.length * canvas.length
        stats["sparse_passes" if kind == "sparse" else "dense_passes"] += 1


def sparse_block_layers(model: DiffusionTransformer, cache: SparseKVCache, tokens: torch.Tensor, rope: RopeTable) -> torch.Tensor:
    """Last hidden states of the block's ``tokens`` against each layer's [kept ; block] K/V (one graph when compiled)."""
    x = model.embed(tokens)
    for layer, blk in enumerate(model.blocks):
        q, k, v = blk.qkv(blk.attn_norm(x))
        keys, values, key_mask = cache.with_block(layer, blk.rope(k, rope), v)
        x = x + blk.attn_out(blk.attend(blk.rope(q, rope), keys, values, key_mask))
        x = x + blk.mlp(blk.mlp_norm(x))
    return x


class FirstTokenFirst(DecodingPolicy):
    """Dream under block passes: a block's first step commits only its first position.

    Block-only passes shift logits inside the window, so the block's first position
    would be predicted from itself instead of from the position before it. The official
    sampler therefore samples the block's logits at the first (dense) step, writes the
    first position's token unconditionally, and leaves the rest to ``inner`` from the
    second step on.
    """

    def __init__(self, inner: DecodingPolicy) -> None:
        self.inner = inner

    def begin_block(self, canvas: Canvas) -> None:
        self.inner.begin_block(canvas)

    def reads(self, canvas: Canvas) -> slice:
        return canvas.block_slice if canvas.block_step == 0 else self.inner.reads(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        return self.inner.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        if canvas.block_step > 0:
            return self.inner.select(logits, rows, canvas)
        s = canvas.settings
        start = canvas.block_start - (rows.start or 0)
        window = logits[:, start : start + s.block_length]
        _, tokens = dream_sample_tokens(window.reshape(-1, window.shape[-1]), s.temperature, s.top_p, s.top_k)
        first = canvas.block_start
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        index[:, first] = canvas.x[:, first] == canvas.mask_id
        filled = canvas.x.clone()
        filled[:, first] = tokens.view(window.shape[0], -1)[:, 0]
        return Commit(index=index, tokens=filled)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
