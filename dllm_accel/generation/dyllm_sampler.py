"""The DyLLM engine's sampler (``sampler="dyllm"``): token, score and commit order.

It differs from both official samplers: no Gumbel noise, top-k then top-p applied whenever
set (``top_p=1.0`` included, which can still cut a rounding tail), the score fixed by the
model family (LLaDA max probability, Dream negative entropy), and candidates committed in
descending score order, dropping those without a score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .canvas import Canvas, Commit
from .scoring import categorical_or_argmax

# The engine treats temperatures at or below this as greedy.
GREEDY_TEMPERATURE = 1e-6


def _top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter in the logits' dtype; the bound is an fp32 tensor, as the engine passes it.

    A token is cut when the probability mass sorted before it already exceeds the bound (the
    first never is); the cut is made in sorted order and scattered back, the same values as
    the engine's mask of the unsorted logits.
    """
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    bound = torch.full((logits.shape[0], 1), top_p, dtype=torch.float32, device=logits.device)
    sorted_logits[..., 1:].masked_fill_(cumulative[..., :-1] > bound, torch.finfo(logits.dtype).min)
    return logits.scatter(-1, order, sorted_logits)


def dyllm_sample(
    logits: torch.Tensor, family: str, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, token)`` for candidate logits [N, V].

    A temperature divides by an fp32 [N, 1] tensor, so 16-bit logits continue in fp32;
    greedy runs keep the model dtype (softmax and entropy included). LLaDA takes the
    argmax token even when a temperature is set (only its score changes); Dream samples.
    """
    sampled = temperature > GREEDY_TEMPERATURE
    if sampled:
        logits = logits / torch.full((logits.shape[0], 1), temperature, dtype=torch.float32, device=logits.device)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    if top_p is not None:
        logits = _top_p(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    top_probs, tokens = probs.max(dim=-1)
    if family == "llada":
        return top_probs, tokens
    if sampled and probs.shape[0]:
        tokens, _ = categorical_or_argmax(probs)
    return (probs * torch.log(probs + 1e-10)).sum(dim=-1), tokens


def ranked_commit(confidence: torch.Tensor, x0: torch.Tensor, counts: torch.Tensor, canvas: Canvas) -> Commit:
    """Per row the first ``counts[b]`` candidates by descending score, -inf never.

    Ties keep position order (a stable sort); the engine's CUDA sort is unstable, so its
    tie order is not reproducible anyway.
    """
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
    rank = order.argsort(dim=1)  # the inverse permutation: each position's place in the ranking
    # a score is a probability or a negative entropy: never +inf, so "> -inf" is "finite" (NaN fails both)
    index = (rank < counts[:, None]) & (confidence > -torch.inf) & canvas.masked()
    return Commit(index=index, tokens=x0, confidence=confidence)
