"""WINO's verification pass: the sequence plus a leave-one-out copy of the current block.

The official ``decoding_wino`` appends ``block_length`` mask tokens at the block's positions.
The sequence rows attend only to the sequence (their logits are a plain pass's); appended row
i attends to every sequence key except block position i, and to the appended rows. Its logits
say how likely the token decoded at block position i is when that position is hidden, which
is what WINO re-masks by. One pass, as officially counted (NFE 1).
"""

from __future__ import annotations

import torch

from ..generation.canvas import Canvas
from ..models.core import DiffusionTransformer


def verification_logits(model: DiffusionTransformer, canvas: Canvas) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, L, V] of the sequence and [B, block_length, V] of the leave-one-out rows."""
    x, length, block = canvas.x, canvas.length, canvas.settings.block_length
    batch = x.shape[0]
    start = canvas.block_start
    hidden = torch.full((batch, block), canvas.mask_id, dtype=x.dtype, device=x.device)
    positions = canvas.positions if canvas.positions.dim() == 2 else canvas.positions.expand(batch, -1)
    positions = torch.cat([positions, positions[:, canvas.block_slice]], dim=1)
    keys = torch.ones(batch, 1, length + block, length + block, dtype=torch.bool, device=x.device)
    if canvas.key_mask is not None:
        keys[..., :length] &= canvas.key_mask[:, None, None, :]
    keys[:, :, :length, length:] = False
    keys[:, :, length:, start : start + block] &= ~torch.eye(block, dtype=torch.bool, device=x.device)
    logits, _ = model(torch.cat([x, hidden], dim=1), positions=positions, key_mask=keys)
    canvas.nfe += 1
    return logits[:, :length], logits[:, length:]
