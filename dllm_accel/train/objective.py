"""LLaDA's masked-diffusion training objective.

Each sequence draws a mask ratio t ~ U(0, 1), stretched to p = (1 - eps) t + eps so no
sequence is left unmasked in expectation; each maskable token is masked with probability p.
The loss is the cross-entropy on masked tokens weighted by 1/p (the ELBO weighting), summed
and divided by the number of maskable tokens of the sequence, then averaged over the batch.
With every token maskable this is LLaDA's pre-training loss (sum / (B * L)); with only the
response maskable it is LLaDA's SFT loss (normalised by the answer length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.core import DiffusionTransformer


@dataclass
class NoisedBatch:
    noisy: torch.Tensor  # [B, L] input with masked positions replaced by the mask id
    masked: torch.Tensor  # [B, L] bool
    p_mask: torch.Tensor  # [B] masking probability of each sequence


def add_mask_noise(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    stratified: bool = False,
) -> NoisedBatch:
    """The forward process: mask each maskable token with its sequence's probability p.

    ``stratified`` spreads the batch's t evenly, t_i = (u + i / B) mod 1 (MDLM's
    low-discrepancy sampler): each t is still U(0, 1), the loss keeps its expectation, and its
    variance across steps drops, which matters for the 1/p weights of a small batch.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps} must be in (0, 1)")
    if maskable.shape != input_ids.shape or maskable.dtype != torch.bool:
        raise ValueError(f"maskable must be a bool tensor of shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if stratified:
        offset = torch.rand(1, generator=generator, device=input_ids.device)
        t = (offset + torch.arange(batch, device=input_ids.device) / batch) % 1.0
    else:
        t = torch.rand(batch, generator=generator, device=input_ids.device)
    p_mask = (1 - eps) * t + eps
    draws = torch.rand(batch, length, generator=generator, device=input_ids.device)
    masked = (draws < p_mask[:, None]) & maskable
    return NoisedBatch(input_ids.masked_fill(masked, mask_id), masked, p_mask)


def masked_diffusion_loss(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    generator: torch.Generator,
    eps: float = 1e-3,
    stratified: bool = False,
) -> torch.Tensor:
    """The 1/p-weighted masked cross-entropy of one noised copy of ``input_ids``."""
    noised = add_mask_noise(input_ids, maskable, model.spec.tokens.mask, generator, eps, stratified)
    logits, _ = model(noised.noisy)
    return weighted_masked_cross_entropy(logits, input_ids, noised, maskable)


def weighted_masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, noised: NoisedBatch, maskable: torch.Tensor
) -> torch.Tensor:
    token_loss = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
    weighted = torch.where(noised.masked, token_loss / noised.p_mask[:, None], 0.0)
    per_sequence = weighted.sum(dim=1) / maskable.sum(dim=1).clamp(min=1)
    return per_sequence.mean()
