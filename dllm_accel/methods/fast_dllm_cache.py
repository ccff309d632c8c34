"""Fast-dLLM's KV cache: one preallocated buffer per generation, written in place.

The official code keeps keys before RoPE and rotates every key again on each pass; RoPE
is elementwise per position, so keeping them rotated gives the same numbers with less
work. A pass over rows [start, stop) writes those rows' keys and values into the buffer
and attends to all of it, so one routine serves every Fast-dLLM pass:

- refresh: rows [0, L), which (re)builds the whole cache;
- prefix mode: rows [s, L), against the prefix [0, s) of the block's refresh;
- dual mode: rows [s, e), against the refresh's prefix and stale suffix.

Buffer shapes never change during a generation, and a dual pass always has the block's
width, which is what capturing block passes as CUDA graphs needs.
"""

from __future__ import annotations

import torch

from ..models.compiled import static_buffers
from ..models.core import DiffusionTransformer
from ..models.rope import RopeTable


class BlockKVCache:
    """Rotated keys and values of every layer over the whole sequence: [layers, B, H_kv, L, D]."""

    def __init__(self, model: DiffusionTransformer, batch: int, length: int) -> None:
        spec = model.spec
        shape = (spec.n_layers, batch, spec.n_kv_heads, length, spec.head_dim)
        self.keys = torch.empty(shape, dtype=model.dtype, device=model.device)
        self.values = torch.empty_like(self.keys)
        static_buffers(self.keys, self.values)

    def run(
        self,
        model: DiffusionTransformer,
        tokens: torch.Tensor,
        start: int | torch.Tensor,
        rope: RopeTable,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Last hidden states of ``tokens`` (the rows from ``start`` on), refreshing their K/V.

        ``rope`` covers the whole sequence; ``key_mask`` [B, L] hides padded keys. ``start``
        may be a 0-d device tensor: the pass then has no host value in it, so one captured
        CUDA graph serves every block of a generation.
        """
        if isinstance(start, torch.Tensor):
            index = start + torch.arange(tokens.shape[1], device=tokens.device)
            rows = rope.select(index)
        else:
            index = slice(start, start + tokens.shape[1])
            rows = rope.select(index)
        x = model.embed(tokens)
        for layer, block in enumerate(model.blocks):
            q, k, v = block.qkv(block.attn_norm(x))
            _write(self.keys[layer], index, block.rope(k, rows))
            _write(self.values[layer], index, v)
            ctx = block.attend(block.rope(q, rows), self.keys[layer], self.values[layer], key_mask)
            x = x + block.attn_out(ctx)
            x = x + block.mlp(block.mlp_norm(x))
        return x


def _write(buffer: torch.Tensor, rows: slice | torch.Tensor, value: torch.Tensor) -> None:
    """``buffer[:, :, rows] = value`` for a slice or a device index of positions."""
    if isinstance(rows, slice):
        buffer[:, :, rows] = value
    else:
        buffer.index_copy_(2, rows, value)
