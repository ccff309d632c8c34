"""A dense torch emulation of DyLLM's sparse-attention kernel, both published builds.

A query row that is not salient keeps ``C_old + sum_j softmax_j(q K_j / sqrt(D)) dV_j``,
where dV is zero except on the keys whose values were recomputed. The CUDA kernel walks
each request's keys in 64-key tiles with an online softmax, and its two builds differ
(spec B.9):

- ``fixed`` (scale-snu): scores re-zeroed per tile and keys past the request's end masked,
  which is the exact softmax;
- ``legacy`` (younjoo0614 HEAD): the score accumulator is not re-zeroed, so tile j scores
  ``scale * (q K_j + P_{j-1})`` with ``P_{j-1}`` the previous tile's exponentiated scores,
  and the zero-padded keys of a request's last tile score like real keys (no -inf).

Only approximated rows (and through them the saliency decisions) see the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TILE = 64


@dataclass(frozen=True)
class KernelQuirks:
    carry_scores: bool  # tile j adds the previous tile's exponentiated scores to its own
    unmasked_padding: bool  # zero-padded keys of the last tile take part in the softmax


KERNELS = {
    "fixed": KernelQuirks(carry_scores=False, unmasked_padding=False),
    "legacy": KernelQuirks(carry_scores=True, unmasked_padding=True),
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernel accumulates 16-bit inputs in fp32; wider inputs keep their precision here."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def context_delta(
    q: torch.Tensor,
    keys: torch.Tensor,
    delta_v: torch.Tensor,
    starts: torch.Tensor,
    quirks: KernelQuirks,
    pv_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``softmax(q K^T / sqrt(D)) dV`` per query row, computed tile by tile as the kernel does.

    ``q`` [B, H, T, D]; ``keys`` and ``delta_v`` [B, H_kv, L, D], where row b's keys are the
    columns ``starts[b]..L-1`` (left padding; the kernel sees one packed request per row).
    Tiles start at each request's first key. ``pv_dtype`` is the dtype the probabilities
    are rounded to before the PV product (the kernel's bf16 mma); None keeps them.
    Returns [B, H, T, D] in ``q``'s dtype.
    """
    batch, heads, _, dim = q.shape
    length = keys.shape[2]
    lengths = length - starts
    n_tiles = math.ceil(int(lengths.max()) / TILE)
    columns = starts[:, None] + torch.arange(n_tiles * TILE, device=q.device)
    real = columns < length
    gather = columns.clamp(max=length - 1)[:, None, :, None].expand(-1, keys.shape[1], -1, dim)
    keep = real[:, None, :, None]
    k_tiles = (keys.gather(2, gather) * keep).to(q.dtype).repeat_interleave(heads // keys.shape[1], dim=1)
    v_tiles = (delta_v.gather(2, gather) * keep).to(q.dtype).repeat_interleave(heads // keys.shape[1], dim=1)
    row_tiles = (lengths + TILE - 1) // TILE

    scale = dim**-0.5
    row_max = torch.full(q.shape[:3], -torch.inf, dtype=q.dtype, device=q.device)
    row_sum = torch.zeros_like(row_max)
    out = torch.zeros_like(q)
    carry = torch.zeros(*q.shape[:3], TILE, dtype=q.dtype, device=q.device)
    for j in range(n_tiles):
        tile = slice(j * TILE, (j + 1) * TILE)
        scores = q @ k_tiles[:, :, tile].transpose(-1, -2)
        if quirks.carry_scores:
            scores = scores + carry
        scores = scores * scale
        if not quirks.unmasked_padding:
            scores = scores.masked_fill(~real[:, None, None, tile], -torch.inf)
        new_max = torch.maximum(row_max, scores.amax(dim=-1))
        rescale = torch.exp(row_max - new_max)
        probs = torch.exp(scores - new_max[..., None])
        rounded = probs if pv_dtype is None else probs.to(pv_dtype).to(probs.dtype)
        active = (j < row_tiles)[:, None, None]
        row_sum = torch.where(active, row_sum * rescale + probs.sum(dim=-1), row_sum)
        out = torch.where(active[..., None], out * rescale[..., None] + rounded @ v_tiles[:, :, tile], out)
        row_max = torch.where(active, new_max, row_max)
        carry = probs
    return out / row_sum[..., None]


def cosine(new: torch.Tensor, old: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per row over every head at once (inputs [B, H, T, D] -> [B, T]), as the kernel's statistics:
    ``dot * rsqrt(max(|new|^2, 1e-8)) * rsqrt(max(|old|^2, 1e-8))`` accumulated in ``dtype``."""
    new, old = new.to(dtype), old.to(dtype)
    dot = (new * old).sum(dim=(1, 3))
    new_sq = (new * new).sum(dim=(1, 3))
    old_sq = (old * old).sum(dim=(1, 3))
    return dot * torch.rsqrt(new_sq.clamp(min=1e-8)) * torch.rsqrt(old_sq.clamp(min=1e-8))
