"""Sparse-dLLM's per-block cache: which non-block keys to keep, and where they live.

Scoring and selection follow the official ``CustomCache.filter_cache`` operation for
operation (same tensor shapes, same reduction order), because the kept set decides the
output and ``torch.topk`` breaks max-pool ties by its own internal order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.compiled import static_buffers

UNUSED_SLOT = -1  # the position recorded for a kept slot a row's budget leaves empty


def kept_count(candidates: int, keep_ratio: float) -> int:
    """How many of the ``candidates`` non-block keys a layer keeps (the official ``int()`` floor)."""
    return int(candidates * keep_ratio)


def candidate_positions(length: int, block_start: int, block_end: int, device: torch.device) -> torch.Tensor:
    """Absolute positions of the candidates in the official order: prefix, then suffix."""
    return torch.cat([torch.arange(0, block_start, device=device), torch.arange(block_end, length, device=device)])


@dataclass(frozen=True)
class OwnKeys:
    """A padded row's own (non-pad) keys, so it scores, pools and keeps exactly as its batch-1 run.

    Its candidates are a contiguous array in the official order with no pad in between, so
    max-pool windows, ``torch.topk`` tie order and the budget all see what the row alone sees.
    """

    positions: torch.Tensor  # [L_row] absolute positions of the row's non-pad keys, ascending
    prompt: int  # how many of them belong to the prompt

    @property
    def length(self) -> int:
        return self.positions.shape[0]

    def candidates(self, block: int, block_length: int) -> tuple[torch.Tensor, int]:
        """The row's non-block keys (prefix, then suffix) as absolute positions, and the prefix's length."""
        split = self.prompt + block * block_length
        return torch.cat([self.positions[:split], self.positions[split + block_length :]]), split


def own_keys(key_mask: torch.Tensor, prompt_length: int) -> list[OwnKeys]:
    """Every row's :class:`OwnKeys`; reads the mask on the host once per generation."""
    prompts = key_mask[:, :prompt_length].sum(dim=1).tolist()
    return [OwnKeys(row.nonzero().squeeze(1), prompt) for row, prompt in zip(key_mask, prompts, strict=True)]


def block_importance(q_block: torch.Tensor, k_candidates: torch.Tensor) -> torch.Tensor:
    """[B, N]: the block-averaged query's raw dot product with each candidate key, head-averaged.

    No 1/sqrt(d) and no softmax: only the ranking matters. GQA keys are repeated to the
    query heads before the product, as the official code does.
    """
    groups = q_block.shape[1] // k_candidates.shape[1]
    keys = k_candidates.repeat_interleave(groups, dim=1) if groups > 1 else k_candidates
    mean_query = q_block.mean(dim=-2)
    scores = torch.matmul(mean_query.unsqueeze(-2), keys.transpose(-2, -1)).squeeze(-2)
    return scores.mean(dim=1)


def max_pool(importance: torch.Tensor, kernel_size: int | None) -> torch.Tensor:
    """Stride-1 max-pool over the candidate axis, same length out (None = no pooling).

    Odd kernels equal the official ``max_pool1d(padding=k//2)``. Even kernels pad one
    less on the right, so the output keeps the input's length instead of growing by one
    (the official code then can return an out-of-range index).
    """
    if kernel_size is None or importance.shape[-1] == 0:
        return importance
    padded = F.pad(importance, (kernel_size // 2, (kernel_size - 1) // 2), value=-torch.inf)
    return F.max_pool1d(padded.unsqueeze(1), kernel_size=kernel_size, stride=1).squeeze(1)


def select_kept(
    importance: torch.Tensor,
    keep: int,
    kernel_size: int | None,
    prefix_budget: tuple[int, int] | None = None,
) -> torch.Tensor:
    """[B, keep] candidate indices in ``torch.topk`` order (descending pooled importance).

    ``prefix_budget`` = None: prefix and suffix compete jointly in one top-k, pooled
    across their seam (official). ``(prefix_length, prefix_keep)``: the first
    ``prefix_length`` candidates keep ``prefix_keep`` of their own and the suffix the rest
    of ``keep``, each pooled and ranked on its own; the prefix's picks come first.
    Pads must not be among the candidates (see :class:`OwnKeys`).
    """
    if prefix_budget is None:
        return torch.topk(max_pool(importance, kernel_size), keep, dim=-1).indices
    split, prefix_keep = prefix_budget
    parts = []
    for lo, hi, k in ((0, split, prefix_keep), (split, importance.shape[-1], keep - prefix_keep)):
        ranked = max_pool(importance[:, lo:hi], kernel_size)
        parts.append(torch.topk(ranked, k, dim=-1).indices + lo)
    return torch.cat(parts, dim=-1)


class SparseKVCache:
    """Per layer: ``keep`` kept keys/values, then a slot the current block's K/V overwrite.

    Preallocated once per generation and written in place, so block passes see tensors
    of a fixed shape and address (no per-step concatenation). ``key_mask`` exists only
    for padded batches, whose rows keep their own budgets (:meth:`store_row`) within the
    batch's largest ``keep``: False marks a kept slot a row leaves empty (``positions``
    then records ``UNUSED_SLOT``).
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        keep: int,
        block_length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        padded: bool = False,
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, keep + block_length, head_dim)
        self.keep = keep
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.zeros(n_layers, batch, keep, dtype=torch.long, device=device)
        slots = (n_layers, batch, keep + block_length)
        self.key_mask = torch.ones(slots, dtype=torch.bool, device=device) if padded else None
        static_buffers(*(t for t in (self.k, self.v, self.key_mask) if t is not None))

    def store(
        self,
        layer: int,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        """Keep the keys/values of ``k``/``v`` [B, H_kv, L, D] at ``positions`` [B, keep], in that order."""
        index = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.k[layer, :, :, : self.keep] = torch.gather(k, 2, index)
        self.v[layer, :, :, : self.keep] = torch.gather(v, 2, index)
        self.positions[layer] = positions

    def store_row(self, layer: int, row: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep row ``row``'s keys/values at ``positions`` [n <= keep], in that order; slots past n stay hidden."""
        used = positions.shape[0]
        if used < self.keep and self.key_mask is None:
            raise ValueError(f"row {row} keeps {used} < {self.keep} keys: hiding unused slots needs padded=True")
        self.k[layer, row, :, :used] = k[row].index_select(1, positions)
        self.v[layer, row, :, :used] = v[row].index_select(1, positions)
        self.positions[layer, row, :used] = positions
        self.positions[layer, row, used:] = UNUSED_SLOT
        if self.key_mask is not None:
            self.key_mask[layer, row, :used] = True
            self.key_mask[layer, row, used : self.keep] = False

    def with_block(
        self, layer: int, k_block: torch.Tensor, v_block: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write the block's fresh K/V into its slot; return this layer's [kept ; block] K, V and key mask."""
        self.k[layer, :, :, self.keep :] = k_block
        self.v[layer, :, :, self.keep :] = v_block
        mask = None if self.key_mask is None else self.key_mask[layer]
        return self.k[layer], self.v[layer], mask
