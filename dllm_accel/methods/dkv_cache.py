"""dKV-Cache (horseee/dKV-Cache): delayed caching of the keys and values of decoded tokens.

A token's K/V are cached one step after it is decoded (its row is recomputed once with its
final token first), and reused until the next refresh, a full pass every
``refresh_interval`` steps. A cached pass recomputes only the rows whose K/V are not
cached and attends to all L keys: cached ones from the buffer, the rest fresh.

Which positions are cacheable after a pass over ``x``:

- LLaDA (``modeling_llada_dkv_cache_decode.py`` + ``generation_utils/llada_dkv_cache_decode.py``):
  the decoded positions ``x != mask``, prompt included. The cache is rebuilt per block; the
  block's first pass records nothing, so the first two passes of every block are full.
- Dream (``generation_utils/dream_generation_utils.py``): Dream's row p predicts token p+1, so
  ``shift_type`` ``un`` (the README's and ``dream_generate.py``'s choice) caches p once p+1 is
  decoded; ``un_right`` needs p decoded too. (The official ``right``, decoded p as LLaDA, leaves
  the row that scores a mask uncomputed and samples it from -inf logits; it is refused.) The official
  shift wraps around: the last row is cached once row 0 is decoded, except in the very first
  pass of a generation, whose set ends with the last row's own state (a mask).
- ``variant='prefill'`` (Dream ``cache_type='prefill'``): only the prompt's rows (under the
  same shift), cached by the first pass and never refreshed.
- ``variant='pd'`` (Dream ``cache_type='pd'``, ``modeling_dream_pd.py``): ``decode`` whose
  refreshes skip the prompt: its rows keep the K/V of the generation's first pass, and a refresh
  recomputes every other row. Dream only (the official code has it for Dream only).

The official code feeds the uncached rows in an order with the cached keys behind them; the
rows and keys are the same, so only float summation order differs. Its LLaDA sampler draws the
Gumbel noise and random-remasking scores over the rows a pass fed (all of a full pass, the uncached
ones in position order otherwise): passes record them (``Canvas.pass_rows`` / ``pass_positions``)
so that seeded sampled runs follow the official random stream. Kept beyond it: padded
batches (every row recomputes the batch's largest uncached count; a row with fewer also
feeds some of its cached rows, whose K/V are kept and whose outputs are never read), and the
mask-aware padding semantics when ``legacy_ignore_attention_mask`` is off (the official LLaDA
sampler passes no attention mask). dKV-Cache-Greedy, whose fed rows follow the decoding order
rather than the cache, is its own strategy (``dkv_cache_greedy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..generation.canvas import Canvas
from ..models.core import DiffusionTransformer
from ..models.rope import RopeTable
from ..models.spec import ModelSpec
from .base import ForwardStrategy, MethodConfig
from .fast_dllm_cache import BlockKVCache
from .registry import register

VARIANTS = ("decode", "prefill", "pd")
SHIFT_TYPES = ("un", "right", "un_right")


# the key of the next cached pass's width in the step's device read (``Canvas.read_with_step``)
WIDTH = "dkv_cache.width"


@dataclass
class DKVCacheConfig(MethodConfig):
    """dKV-Cache options; defaults are the official scripts'.

    variant: ``decode`` (cache decoded tokens, delayed one step), ``prefill`` (the prompt only) or
        ``pd`` (Dream: ``decode`` with the prompt's first-pass K/V kept through refreshes).
    refresh_interval: a refresh every this many steps of a block (LLaDA ``cache_reloading_step``,
        Dream ``cache_steps``); ``decode`` and ``pd``.
    shift_type: which Dream rows a decoded token makes cacheable (LLaDA: its own row).
    first_pass_caches: whether a block's first pass already fills the cache; None = the family's
        official behaviour (LLaDA no, Dream yes).
    """

    variant: str = "decode"
    refresh_interval: int = 4
    shift_type: str = "un"
    first_pass_caches: bool | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown dkv_cache variant {self.variant!r} (accepted: {', '.join(VARIANTS)})")
        if (
            isinstance(self.refresh_interval, bool)
            or not isinstance(self.refresh_interval, int)
            or self.refresh_interval < 1
        ):
            raise ValueError(f"dkv_cache refresh_interval={self.refresh_interval!r} must be a positive integer")
        if self.shift_type not in SHIFT_TYPES:
            raise ValueError(f"unknown dkv_cache shift_type {self.shift_type!r} (accepted: {', '.join(SHIFT_TYPES)})")
        if self.first_pass_caches is not None and not isinstance(self.first_pass_caches, bool):
            raise ValueError(f"dkv_cache first_pass_caches={self.first_pass_caches!r} must be true, false or null")
        if self.variant == "pd" and self.first_pass_caches is False:
            raise ValueError(
                "dkv_cache variant 'pd' caches the prompt in the first pass: first_pass_caches must be null or true"
            )


@register
class DKVCache(ForwardStrategy):
    name = "dkv_cache"
    Config = DKVCacheConfig
    config: DKVCacheConfig
    supports_cfg: ClassVar[bool] = False

    def model_refusal(self, spec: ModelSpec) -> str | None:
        if spec.logit_shift and self.config.shift_type == "right":
            return (
                f"dkv_cache shift_type='right' on {spec.family} caches the row that scores the next, still masked "
                "position; the official code then scores that mask from -inf logits (NaN), so it is not offered "
                "(use 'un' or 'un_right')"
            )
        if self.config.variant == "pd" and not spec.logit_shift:
            return (
                f"dkv_cache variant 'pd' is Dream's (the official code has it for Dream only), got {spec.family}: "
                "use variant 'decode'"
            )
        return None

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        batch, length = canvas.x.shape
        self.cache = BlockKVCache(model, batch, length)
        self.rope = model.rope_table(canvas.positions)
        self.hidden = torch.empty(batch, length, model.spec.d_model, dtype=model.dtype, device=model.device)
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=canvas.x.device)
        self.prompt_rows = torch.zeros_like(self.valid)  # pd: the rows the block's first pass cached
        self.widths: list[int] = []  # rows fed per pass (the official forward's input length)
        for key in ("dense_passes", "cached_passes", "rows_computed", "rows_dense"):
            canvas.stats[key] = 0.0

    def begin_block(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.valid.zero_()
        self.has_cache = False

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        cacheable = self._cacheable(canvas)
        full, first = self._full(canvas), canvas.block_step == 0
        if full:
            hidden = self.cache.run(model, canvas.x, 0, self.rope, canvas.key_mask)
            self.hidden.copy_(hidden)
            canvas.pass_rows = slice(0, canvas.length)  # the official samplers draw noise over every row
            width = canvas.length
            keeps = not first or self._first_pass_caches(canvas)
        else:
            # the widest row's uncached rows, read with the last step's block-end check (or now)
            width = canvas.host_value(WIDTH)
            if self.config.variant == "pd":
                if canvas.block_step == 1:
                    self.prompt_width = width  # the first pass cached the prompt rows only
                if self._refresh(canvas):  # every row but the prompt's, which keep their first-pass K/V
                    self.valid.copy_(self.prompt_rows)
                    width = self.prompt_width
            self._run_uncached(model, canvas, width)
            keeps = self.config.variant != "prefill"  # prefill keeps its first set
        if keeps:
            self.valid.copy_(cacheable)
            self.has_cache = True
        if first and self.config.variant == "pd":
            self.prompt_rows.copy_(self.valid)
        canvas.read_with_step(WIDTH, (~self.valid).sum(dim=1).max())
        canvas.nfe += 1
        self._record(canvas, full, width)
        return self._block_logits(model, canvas)

    # -- which passes and rows ----------------------------------------------------------
    def _refresh(self, canvas: Canvas) -> bool:
        return self.config.variant != "prefill" and canvas.block_step % self.config.refresh_interval == 0

    def _full(self, canvas: Canvas) -> bool:
        if not self.has_cache:
            return True
        return self.config.variant == "decode" and self._refresh(canvas)

    def _first_pass_caches(self, canvas: Canvas) -> bool:
        if self.config.first_pass_caches is not None:
            return self.config.first_pass_caches
        return canvas.spec.logit_shift

    def _cacheable(self, canvas: Canvas) -> torch.Tensor:
        """[B, L] rows whose K/V this pass may leave in the cache (see the module docstring)."""
        decoded = canvas.x != canvas.mask_id
        if self.config.variant == "prefill":
            decoded = decoded & canvas.prompt_index
        if not canvas.spec.logit_shift or self.config.shift_type == "right":
            return decoded
        nxt = decoded[:, 1:]
        if self.config.shift_type == "un_right":
            both = decoded[:, :-1] & nxt
            return torch.cat([both, both[:, -1:]], dim=1)
        wrap = decoded[:, -1:] if canvas.step == 0 else decoded[:, :1]
        return torch.cat([nxt, wrap], dim=1)

    # -- the cached pass -----------------------------------------------------------------
    def _run_uncached(self, model: DiffusionTransformer, canvas: Canvas, width: int) -> None:
        """Recompute the uncached rows of every row (padded to ``width`` with cached ones)."""
        hidden, order = recompute_rows(model, self.cache, canvas, self.rope, self.valid, width)
        canvas.pass_positions = order  # LLaDA's noise rows: the official sampler draws over the rows it fed
        self.hidden.scatter_(1, order[:, :, None].expand(-1, -1, hidden.shape[-1]), hidden)

    def _block_logits(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        """Final norm and head over the rows that score the block (Dream: one row earlier)."""
        start, stop = canvas.block_start, canvas.block_end
        first = start - 1 if canvas.spec.logit_shift else start
        logits = model.shift_logits(model.logits(self.hidden[:, first:stop]))
        return logits[:, start - first :], slice(start, stop)

    def _record(self, canvas: Canvas, full: bool, width: int) -> None:
        self.widths.append(width)
        stats = canvas.stats
        stats["dense_passes" if full else "cached_passes"] += 1
        stats["rows_computed"] += width * canvas.x.shape[0]
        stats["rows_dense"] += canvas.length * canvas.x.shape[0]


def recompute_rows(
    model: DiffusionTransformer, cache: BlockKVCache, canvas: Canvas, rope: RopeTable, keep: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``width`` rows of each batch row against all L cached keys: the rows not in
    ``keep`` [B, L] (position order), then kept rows as filler where a row has fewer (its widest
    row sets the shape). The recomputed rows' K/V are written into ``cache``; the fillers' are kept
    and their outputs are never read. Returns (last hidden states [B, width, d], positions [B, width])."""
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, :width]
    kept = keep.gather(1, order)[:, None, :, None]
    rows = rope.select(order)
    index = order[:, None, :, None]
    x = model.embed(canvas.x.gather(1, order))
    for layer, block in enumerate(model.blocks):
        q, k, v = block.qkv(block.attn_norm(x))
        keys, values = cache.keys[layer], cache.values[layer]
        at = index.expand(-1, keys.shape[1], -1, keys.shape[-1])
        keys.scatter_(2, at, torch.where(kept, keys.gather(2, at), block.rope(k, rows)))
        values.scatter_(2, at, torch.where(kept, values.gather(2, at), v))
        ctx = block.attend(block.rope(q, rows), keys, values, canvas.key_mask)
        x = x + block.attn_out(ctx)
        x = x + block.mlp(block.mlp_norm(x))
    return x, order
