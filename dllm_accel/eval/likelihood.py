"""Log-likelihood of a continuation under a masked diffusion model, for multiple-choice tasks.

A diffusion LM has no left-to-right factorisation, so ``log p(continuation | context)`` is
bounded from below by the masked-token ELBO and estimated by Monte Carlo, as LLaDA's official
lm-eval wrapper does (``eval_llada.py``, after SMDM): every draw masks ``n`` of the ``L``
continuation tokens at random, with ``n`` stratified over ``1..L`` across the rows of a batch
from one uniform start, and weighs the cross-entropy of each masked token by ``L / n`` (the
inverse masking ratio). The estimate is minus the mean over batches of the per-row sum. The
context is never masked, except in the unconditional half of classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .prompting import encode


@dataclass(frozen=True)
class LikelihoodSettings:
    """The official wrapper's options (``batch_size`` there is ``mc_batch_size`` here).

    ``is_check_greedy`` decodes the continuation greedily, one highest-confidence token per step,
    and reports whether it reproduces the continuation (LAMBADA-style metrics). The official default
    is True, but its docstring recommends False since no metric of the LLaDA paper reads it; False
    here.
    """

    mc_num: int = 128
    mc_batch_size: int = 32
    is_check_greedy: bool = False

    def __post_init__(self) -> None:
        if self.mc_batch_size < 1 or self.mc_num < 1:
            raise ValueError(f"mc_num={self.mc_num} and mc_batch_size={self.mc_batch_size} must be >= 1")
        if self.mc_num % self.mc_batch_size:
            raise ValueError(f"mc_num={self.mc_num} must be a multiple of mc_batch_size={self.mc_batch_size}")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-eval's models split them: trailing spaces of the context move
    to the continuation, the continuation is what the joint encoding adds after the context's ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    prefix = encode(tokenizer, context)
    return prefix, whole[len(prefix) :]


def mask_draw(rows: int, target_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which continuation tokens each row masks ``[rows, L]`` and the masked fraction per row ``[rows]``.

    The mask counts are ``k, k + L/rows, k + 2L/rows, ...`` rounded and wrapped into ``1..L`` for one
    uniform ``k``, so a batch covers the masking ratios evenly; each row's positions are a uniform
    random subset (one permutation per row, drawn on the CPU as the official code draws them).
    """
    start = torch.randint(1, target_len + 1, (), device=device)
    # the end as the official code computes it: a float32 tensor sum, not a float64 one
    end = start + (rows - 1) * (target_len / rows)
    counts = torch.round(torch.linspace(float(start), end, steps=rows, device=device)).long()
    counts = (counts - 1) % target_len + 1
    ordered = torch.arange(target_len, device=device).repeat(rows, 1) < counts.unsqueeze(1)
    shuffled = torch.stack([ordered[row][torch.randperm(target_len)] for row in range(rows)])
    return shuffled, counts / target_len


def _logits(model, ids: torch.Tensor, prompt_len: int, cfg_scale: float) -> torch.Tensor:
    """Position-aligned logits; with ``cfg_scale > 0`` the official ``un + (cfg+1)(cond - un)``, where the
    unconditional rows have the whole context masked."""
    if cfg_scale > 0:
        unconditional = ids.clone()
        unconditional[:, :prompt_len] = model.spec.tokens.mask
        ids = torch.cat([ids, unconditional])
    logits = model.shift_logits(model(ids)[0])
    if cfg_scale > 0:
        cond, uncond = logits.chunk(2, dim=0)
        logits = uncond + (cfg_scale + 1) * (cond - uncond)
    return logits


@torch.no_grad()
def elbo_loglikelihood(
    model, prefix: list[int], target: list[int], settings: LikelihoodSettings, cfg_scale: float = 0.0
) -> float:
    """The Monte Carlo estimate of ``log p(target | prefix)`` (module docstring).

    One host read per Monte Carlo batch (the masked rows are selected, as the official code selects
    them, so the sum runs in its order) and one at the end.
    """
    device = model.device
    rows, length = settings.mc_batch_size, len(target)
    seq = torch.tensor(prefix + target, device=device).repeat(rows, 1)
    answer = seq[:, len(prefix) :]
    batch_losses = []
    for _ in range(settings.mc_num // rows):
        masked, ratio = mask_draw(rows, length, device)
        noisy = seq.clone()
        noisy[:, len(prefix) :] = torch.where(masked, model.spec.tokens.mask, answer)
        logits = _logits(model, noisy, len(prefix), cfg_scale)[:, len(prefix) :]
        # only the masked rows, in the official order: cross-entropy over 1/p, summed row-major, then / rows
        loss = F.cross_entropy(logits[masked].float(), answer[masked], reduction="none")
        batch_losses.append((loss / ratio.unsqueeze(1).expand_as(masked)[masked]).sum() / rows)
    losses = torch.stack(batch_losses).tolist()  # float32 per batch, averaged in float64 as the official code does
    return -sum(losses) / len(losses)


@torch.no_grad()
def greedy_reproduces(model, prefix: list[int], target: list[int], cfg_scale: float = 0.0) -> bool:
    """Whether decoding the masked continuation one most-confident token per step gives ``target``."""
    device = model.device
    mask_id = model.spec.tokens.mask
    seq = torch.tensor([prefix + [mask_id] * len(target)], device=device)
    for _ in range(len(target)):
        masked = seq[0] == mask_id
        logits = _logits(model, seq, len(prefix), cfg_scale)[0, masked]
        guess = logits.argmax(dim=-1)
        confidence = torch.softmax(logits.float(), dim=-1).gather(-1, guess.unsqueeze(-1)).squeeze(-1)
        keep = torch.full_like(guess, mask_id)
        best = confidence.argmax()
        keep[best] = guess[best]
        seq[0, masked] = keep
    return bool((seq[0, len(prefix) :] == torch.tensor(target, device=device)).all())
