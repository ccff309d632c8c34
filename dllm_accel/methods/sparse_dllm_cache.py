"""Sparse-dLLM's per-block cache: which non-block keys to keep, and where they live.

Scoring and selection follow the official ``CustomCache.filter_cache`` operation for
operation (same tensor shapes, same reduction order), because the kept set decides the
output and ``torch.topk`` breaks max-pool ties by its own internal order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kept_count(candidates: int, keep_ratio: float) -> int:
    """How many of the ``candidates`` non-block keys a layer keeps (the official ``int()`` floor)."""
    return int(candidates * keep_ratio)


def candidate_positions(length: int, block_start: int, block_end: int, device: torch.device) -> torch.Tensor:
    """Absolute positions of the candidates in the official order: prefix, then suffix."""
    return torch.cat([torch.arange(0, block_start, device=device), torch.arange(block_end, length, device=device)])


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
    invalid: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, keep] candidate indices in ``torch.topk`` order (descending pooled importance).

    ``prefix_budget`` = None: prefix and suffix compete jointly in one top-k, pooled
    across their seam (official). ``(prefix_length, prefix_keep)``: the first
    ``prefix_length`` candidates keep ``prefix_keep`` of their own and the suffix the rest
    of ``keep``, each pooled and ranked on its own; the prefix's picks come first.
    ``invalid`` [B, N] marks padded candidates; they rank last.
    """
    if prefix_budget is None:
        return torch.topk(_rankable(importance, kernel_size, invalid), keep, dim=-1).indices
    split, prefix_keep = prefix_budget
    parts = []
    for lo, hi, k in ((0, split, prefix_keep), (split, importance.shape[-1], keep - prefix_keep)):
        part_invalid = None if invalid is None else invalid[:, lo:hi]
        ranked = _rankable(importance[:, lo:hi], kernel_size, part_invalid)
        parts.append(torch.topk(ranked, k, dim=-1).indices + lo)
    return torch.cat(parts, dim=-1)


def _rankable(importance: torch.Tensor, kernel_size: int | None, invalid: torch.Tensor | None) -> torch.Tensor:
    if invalid is None:
        return max_pool(importance, kernel_size)
    # Padded keys neither lend their score to neighbours nor take a slot from a real key.
    hidden = torch.tensor(-torch.inf, dtype=importance.dtype, device=importance.device)
    pooled = max_pool(torch.where(invalid, hidden, importance), kernel_size)
    return torch.where(invalid, hidden, pooled)


class SparseKVCache:
    """Per layer: ``keep`` kept keys/values, then a slot the current block's K/V overwrite.

    Preallocated once per generation and written in place, so block passes see tensors
    of a fixed shape and address (no per-step concatenation). ``key_mask`` exists only
    for padded batches: False marks a kept slot that holds a padded key.
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

    def store(
        self,
        layer: int,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> None:
        """Keep the keys/values of ``k``/``v`` [B, H_kv, L, D] at ``positions`` [B, keep], in that order."""
        index = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.k[layer, :, :, : self.keep] = torch.gather(k, 2, index)
        self.v[layer, :, :, : self.keep] = torch.gather(v, 2, index)
        self.positions[layer] = positions
        if self.key_mask is not None and key_mask is not None:
            self.key_mask[layer, :, : self.keep] = torch.gather(key_mask, 1, positions)

    def with_block(
        self, layer: int, k_block: torch.Tensor, v_block: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write the block's fresh K/V into its slot; return this layer's [kept ; block] K, V and key mask."""
        self.k[layer, :, :, self.keep :] = k_block
        self.v[layer, :, :, self.keep :] = v_block
        mask = None if self.key_mask is None else self.key_mask[layer]
        return self.k[layer], self.v[layer], mask
