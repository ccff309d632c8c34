"""Rotary position embedding with both families' rounding behaviour.

The rotation is the two-halves ("rotate_half") form. ``RopeTable`` holds cos/sin for one
set of positions so every layer of a pass reuses them.
"""

from __future__ import annotations

import torch

from .compiled import fusable


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@fusable
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_fp32: bool) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin``, in fp32 when asked; the result keeps x's dtype."""
    src = x.float() if in_fp32 else x
    return (src * cos + rotate_half(src) * sin).to(x.dtype)


class RopeTable:
    """cos/sin for positions of shape [T] or [B, T], broadcast over heads; ``head_dim`` is the rotated width."""

    def __init__(
        self,
        positions: torch.Tensor,
        head_dim: int,
        theta: float,
        in_fp32: bool,
        dtype: torch.dtype,
        scaling: float = 1.0,
    ) -> None:
        inv_freq = inverse_frequencies(head_dim, theta, positions.device)
        pos = positions.to(torch.float32)
        if scaling != 1.0:
            pos = pos / scaling
        freqs = pos.unsqueeze(-1) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        if emb.dim() == 2:
            emb = emb.unsqueeze(0)
        emb = emb.unsqueeze(1)  # [B|1, 1, T, D]
        self.in_fp32 = in_fp32
        target = torch.float32 if in_fp32 else dtype
        self.cos = emb.cos().to(target)
        self.sin = emb.sin().to(target)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [B, H, T, D]; the result keeps x's dtype.

        A table narrower than D (partial rotary) rotates the first channels and passes the rest.
        """
        width = self.cos.shape[-1]
        if width < x.shape[-1]:
            return torch.cat((self.apply(x[..., :width]), x[..., width:]), dim=-1)
        return rotate(x, self.cos, self.sin, self.in_fp32)

    def select(self, index: torch.Tensor | slice) -> RopeTable:
        """The table restricted to some positions along T (for block and sparse passes)."""
        sub = object.__new__(RopeTable)
        sub.in_fp32 = self.in_fp32
        if isinstance(index, slice):
            sub.cos, sub.sin = self.cos[:, :, index], self.sin[:, :, index]
        else:
            sub.cos = _gather_positions(self.cos, index)
            sub.sin = _gather_positions(self.sin, index)
        return sub


def _gather_positions(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if index.dim() == 1:
        return table[:, :, index]
    batch = index.shape[0]
    expanded = table.expand(batch, -1, -1, -1)
    idx = index[:, None, :, None].expand(-1, 1, -1, table.shape[-1])
    return torch.gather(expanded, 2, idx)
