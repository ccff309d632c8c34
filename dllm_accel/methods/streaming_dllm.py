"""Streaming-dLLM (xiaoshideta/Streaming-dLLM): suffix pruning over a prefix cache.

Per block [s, e) of a sequence of length L, the suffix [e, L) is approximated by its first
``window_size`` positions and its last ``tail_keep`` (the official ``deterministic_window_tail_sampler``;
the whole suffix when it is no longer than the window). The pruned sequence is ``x[:, :N]`` fed at the
positions ``0..e+w-1, L-t..L-1`` (N = e + w + t): the official code feeds the first N tokens, which
past e are all masks, and gives the last t rows the tail's position ids.

- The block's first pass runs the pruned sequence and keeps the K/V of the prefix [0, s).
- Every later pass runs the pruned rows [s, N) (block, window, tail) against that prefix.

Decoding: any policy. The paper's is the ``streaming_threshold`` rule (generation/rules): a threshold
that falls as the pass's suffix region fills, and the EOS early exit. As in Fast-dLLM's prefix cache,
LLaDA loops until the block has no masks, and Dream decodes with the cached block sampler, whose
first pass commits the block's first position (later passes start at the block and cannot score it).

The official code keeps keys unrotated and rotates every key again on each pass; RoPE is elementwise
per position, so rotated keys in one preallocated buffer give the same numbers. Rows are logits of the
pass in the order fed: the tail's rows come right after the window's, where the loop's bookkeeping
(the pass's row count, its noise and candidate order) sees them exactly as the official code does;
past the block they are masks whose scores no rule commits. Beyond the official code: left-padded
batches with ``attention_mask`` (the official LLaDA sampler passes none; Dream's takes batch 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..generation.canvas import Canvas
from ..generation.parallel import DreamBlockPolicy
from ..generation.policies import DecodingPolicy
from ..generation.rules import DecodingRule
from ..models.core import DiffusionTransformer
from ..models.rope import RopeTable
from .base import ForwardStrategy, MethodConfig, pass_logits
from .fast_dllm import UntilBlockDone
from .fast_dllm_cache import BlockKVCache
from .registry import register


@dataclass
class StreamingConfig(MethodConfig):
    """Streaming-dLLM options; defaults are the official ``generate_with_prefix_cache``'s.

    window_size: suffix positions kept right after the block (README runs: 32 to 192).
    tail_keep: positions kept at the end of the sequence (the official call passes 1).
    noise_draw: LLaDA at temperature > 0: the official loop's extra, unused Gumbel draw per cached pass.
    """

    window_size: int = 32
    tail_keep: int = 1
    noise_draw: bool = True

    def __post_init__(self) -> None:
        for name in ("window_size", "tail_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"streaming_dllm {name}={value!r} must be a non-negative integer")
        if not isinstance(self.noise_draw, bool):
            raise ValueError(f"streaming_dllm noise_draw={self.noise_draw!r} must be true or false")


@dataclass(frozen=True)
class PrunedLayout:
    """One block's pruned sequence: positions ``0..head_end-1`` then ``length-tail..length-1``."""

    head_end: int
    tail: int
    length: int

    @property
    def rows(self) -> int:
        return self.head_end + self.tail

    def positions(self) -> list[int]:
        return list(range(self.head_end)) + list(range(self.length - self.tail, self.length))


def pruned_layout(block_end: int, length: int, window: int, tail_keep: int) -> PrunedLayout:
    """The official window-and-tail choice over the suffix [block_end, length)."""
    suffix = length - block_end
    head = min(window, suffix)
    tail = min(tail_keep, suffix - head) if suffix > window else 0
    return PrunedLayout(block_end + head, tail, length)


class PrunedKVCache(BlockKVCache):
    """Fast-dLLM's buffer over the pruned sequence: a pass attends only to its first N rows."""

    def run(
        self,
        model: DiffusionTransformer,
        tokens: torch.Tensor,
        start: int,
        rope: RopeTable,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Last hidden states of pruned rows [start, start + T), writing their K/V, attending to [0, start + T)."""
        stop = start + tokens.shape[1]
        x = model.embed(tokens)
        for layer, block in enumerate(model.blocks):
            q, k, v = block.qkv(block.attn_norm(x))
            keys, values = self.keys[layer], self.values[layer]
            keys[:, :, start:stop] = block.rope(k, rope)
            values[:, :, start:stop] = v
            ctx = block.attend(block.rope(q, rope), keys[:, :, :stop], values[:, :, :stop], key_mask)
            x = x + block.attn_out(ctx)
            x = x + block.mlp(block.mlp_norm(x))
        return x


@register
class StreamingDLLM(ForwardStrategy):
    name = "streaming_dllm"
    Config = StreamingConfig
    config: StreamingConfig
    supports_cfg: ClassVar[bool] = False

    def check(self, canvas: Canvas) -> None:
        super().check(canvas)
        s = canvas.settings
        if s.sampler not in ("llada", "dream"):
            raise ValueError(f"streaming_dllm decodes with sampler 'llada' or 'dream', got {s.sampler!r}")
        if canvas.spec.logit_shift and s.sampler != "dream":
            raise ValueError(
                f"streaming_dllm on {canvas.spec.family} needs sampler 'dream' (got {s.sampler!r}): its cached passes "
                "start at the block, so only Dream's block sampler, which commits the block's first position in the "
                "block's first pass, can decode from them"
            )
        if s.sampler == "dream" and s.constant_count:
            raise ValueError(
                "streaming_dllm on Dream decodes with the cached block sampler, which has its own count rule: "
                "transfer_schedule='constant' cannot apply"
            )

    def decoding_policy(self, policy: DecodingPolicy, canvas: Canvas) -> DecodingPolicy:
        if canvas.settings.sampler == "dream":
            return policy.for_dream_block_passes() if isinstance(policy, DecodingRule) else DreamBlockPolicy()
        return UntilBlockDone(policy, step_cap=None)

    def begin(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        self.cache = PrunedKVCache(model, canvas.batch, canvas.length)
        self.rope = model.rope_table(canvas.positions)
        self.widths: list[int] = []  # rows fed per pass (the official forward's input width)
        self.layouts: list[PrunedLayout] = []  # the block's pruned sequence, per pass
        for key in ("dense_passes", "cached_passes", "rows_computed", "rows_dense"):
            canvas.stats[key] = 0.0

    def begin_block(self, model: DiffusionTransformer, canvas: Canvas) -> None:
        c = self.config
        self.layout = pruned_layout(canvas.block_end, canvas.length, c.window_size, c.tail_keep)
        head = torch.arange(self.layout.head_end, device=model.device)
        tail = torch.arange(canvas.length - self.layout.tail, canvas.length, device=model.device)
        self.block_rope = self.rope.select(torch.cat([head, tail]))
        key_mask = canvas.key_mask
        self.key_mask = None if key_mask is None else key_mask[:, : self.layout.rows]

    def forward(self, model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, slice]:
        start = 0 if canvas.block_step == 0 else canvas.block_start
        stop = self.layout.rows
        rope = self.block_rope if start == 0 else self.block_rope.select(slice(start, stop))
        hidden = self.cache.run(model, canvas.x[:, start:stop], start, rope, self.key_mask)
        canvas.nfe += 1
        logits, scored = pass_logits(model, hidden, slice(start, stop), canvas)
        s = canvas.settings
        if start and self.config.noise_draw and s.sampler == "llada" and s.temperature > 0:
            # the official draw is over the pass's logits [B, R, V]; only its RNG use matters
            torch.rand((canvas.batch, stop - start, logits.shape[-1]), dtype=torch.float64, device=logits.device)
        self._record(canvas, start, stop)
        return logits, scored

    def pass_positions(self) -> list[list[int]]:
        """The position ids each pass fed (the official ``position_ids`` of its inputs)."""
        return [layout.positions() for layout in self.layouts]

    def _record(self, canvas: Canvas, start: int, stop: int) -> None:
        self.widths.append(stop - start)
        self.layouts.append(self.layout)
        stats = canvas.stats
        stats["dense_passes" if start == 0 else "cached_passes"] += 1
        stats["rows_computed"] += (stop - start) * canvas.batch
        stats["rows_dense"] += canvas.length * canvas.batch
