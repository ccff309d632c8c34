"""dKV-Cache-Greedy (horseee/dKV-Cache ``models/modeling_llada_dkv_cache_greedy.py`` +
``generation_utils/llada_dkv_cache_greedy.py``): recompute only the rows the decoding order needs.

The decoding order is drawn at a block's start (``policy='random_order'``), so before each pass
the rows it needs are known: the positions it commits, the ones the last step committed (their
K/V are refreshed once with their token: the delayed caching of dKV-Cache), and with
``window_size`` > 0 that many masked neighbours of each position it commits (nearest first,
left before right at equal distance, the earlier positions' neighbours taken first). Every
other row keeps the K/V of the pass that last computed it: a full pass every
``refresh_interval`` steps of a block (a block's first pass included), or a later greedy pass,
which writes the K/V of every row it computes. So each pass costs a handful of rows, against
caches that grow staler between refreshes.

LLaDA only, as the official code (Dream's row p scores position p + 1). Kept beyond it: padded
batches (a row with fewer rows to compute than the batch's widest also runs some others, whose
K/V are kept and outputs never read; the official code needs equal counts) and mask-aware
padding when ``legacy_ignore_attention_mask`` is off (the official sampler passes no attention
mask). The head runs over the computed rows only, as there. ``Canvas.pass_positions`` tells the
rule which positions a greedy pass computed, so that sampled runs draw their Gumbel noise over
exactly those rows, as the official code does (seeded sampled runs match it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..generation.canvas import Canvas, Commit
from ..generation.policies import DecodingPolicy
from ..generation.rules.random_order import RandomOrderPolicy
from ..models.core import DiffusionTransformer
from ..models.spec import ModelSpec
from .base import ForwardStrategy, MethodConfig
from .dkv_cache import recompute_rows
from .fast_dllm_cache import BlockKVCache
from .registry import register

# the key of the next greedy pass's width in the step's device read (``Canvas.read_with_step``)
WIDTH = "dkv_cache_greedy.width"


@dataclass
class DKVCacheGreedyConfig(MethodConfig):
    """dKV-Cache-Greedy options; defaults are ``llada_generate.py``'s (and the paper's Table 1
    Greedy column: refresh every 2 steps, no window).

    refresh_interval: a full pass every this many steps of a block (``cache_reloading_step``).
    window_size: masked neighbours computed with each position about to be committed (``window_size``).
    """

    refresh_interval: int = 2
    window_size: int = 0

    def __post_init__(self) -> None:
        for name, low in (("refresh_interval", 1), ("window_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"dkv_cache_greedy {name}={value!r} must be an integer >= {low}")


@register
class DKVCacheGreedy(ForwardStrategy):
    name = "dkv_cache_greedy"
    Config = DKVCacheGreedyConfig
    config: DKVCacheGreedyConfig
    supports_cfg: ClassVar[bool] = False

    def model_refusal(self, spec: ModelSpec) -> str | None:
        if spec.logit_shift:
            return (
                f"dkv_cache_greedy computes the rows of the positions it commits, and {spec.family}'s row p scores "
                "position p + 1 (the official Greedy is LLaDA's): use dkv_cache on this model"
            )
        return None

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        if not isinstance(policy, RandomOrderPolicy):
            raise ValueError(
                "dkv_cache_greedy computes only the rows its decoding order commits next, so that order must be "
                "drawn before the pass: decode it with policy='random_order' (the official code has random "
                "remasking only)"
            )
        self.order = policy
        return policy

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        batch, length = canvas.x.shape
        spec, block = model.spec, canvas.settings.block_length
        self.cache = BlockKVCache(model, batch, length)
        self.rope = model.rope_table(canvas.positions)
        self.fed = torch.zeros(batch, length, dtype=torch.bool, device=canvas.x.device)
        # the block's logits of a greedy pass, one spare row for computed rows outside the block
        self.logits = torch.zeros(batch, block + 1, spec.vocab_size, dtype=model.dtype, device=model.device)
        self.offsets = torch.arange(length, device=canvas.x.device)
        self.widths: list[int] = []  # rows fed per pass (the official forward's input length)
        for key in ("dense_passes", "cached_passes", "rows_computed", "rows_dense"):
            canvas.stats[key] = 0.0

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        start, stop = canvas.block_start, canvas.block_end
        full = canvas.block_step % self.config.refresh_interval == 0
        if full:
            hidden = self.cache.run(model, canvas.x, 0, self.rope, canvas.key_mask)
            logits = model.logits(hidden[:, start:stop])
            canvas.pass_rows = slice(0, canvas.length)  # the official noise is drawn over every row
            width = canvas.length
        else:
            # the widest row's count, read with the last step's block-end check
            width = canvas.host_value(WIDTH)
            hidden, order = recompute_rows(model, self.cache, canvas, self.rope, ~self.fed, width)
            canvas.pass_positions = order
            spare = self.logits.shape[1] - 1
            slot = torch.where((order >= start) & (order < stop), order - start, spare)
            self.logits.scatter_(1, slot[:, :, None].expand(-1, -1, self.logits.shape[-1]), model.logits(hidden))
            logits = self.logits[:, :spare]
        canvas.nfe += 1
        self._record(canvas, full, width)
        return logits, slice(start, stop)

    def after_commit(self, canvas: Canvas, commit: Commit) -> None:
        """The rows the next pass computes: this step's commits, the next step's, and their window."""
        step = canvas.block_step
        upcoming = self.order.positions(step + 1)
        if upcoming.shape[1] == 0:
            return  # the block's last step
        fed = self.fed
        fed.zero_()
        fed.scatter_(1, self.order.positions(step), True)
        fed.scatter_(1, upcoming, True)
        masked = canvas.masked()
        for k in range(upcoming.shape[1] if self.config.window_size else 0):
            fed |= self._window(upcoming[:, k], masked & ~fed)
        canvas.read_with_step(WIDTH, fed.sum(dim=1).max())

    def _window(self, centre: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """[B, L] the ``window_size`` eligible positions nearest ``centre`` [B], in the official walk's
        order: centre - 1, centre + 1, centre - 2, ... (fewer when fewer are eligible)."""
        distance = self.offsets[None, :] - centre[:, None]
        rank = torch.where(distance < 0, -2 * distance - 2, 2 * distance - 1)
        big = 2 * eligible.shape[1]
        key = torch.where(eligible & (distance != 0), rank, big)
        nearest = torch.topk(key, min(self.config.window_size, key.shape[1]), dim=1, largest=False)
        return torch.zeros_like(eligible).scatter_(1, nearest.indices, nearest.values < big)

    def _record(self, canvas: Canvas, full: bool, width: int) -> None:
        self.widths.append(width)
        stats = canvas.stats
        stats["dense_passes" if full else "cached_passes"] += 1
        stats["rows_computed"] += width * canvas.x.shape[0]
        stats["rows_dense"] += canvas.length * canvas.x.shape[0]
