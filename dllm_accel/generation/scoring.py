"""Token choice and confidence: what each masked candidate would become, and how sure.

Both functions see the logits of the candidate positions only and return
``(x0, confidence)`` of the same leading shape. RNG is drawn in the official order and
shape so seeded runs reproduce the official samplers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.spec import ModelSpec
from .settings import ResolvedSettings

_CONFIDENCE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def gumbel_max_logits(
    logits: torch.Tensor, temperature: float, variant: str = "llada", rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """LLaDA's Gumbel-max trick in float64; at temperature 0 the same tensor comes back.

    ``variant='dllm_cache'`` is dLLM-Cache's copy: everything in the logits' dtype, and
    ``exp(logits)`` at temperature 0, whose argmax takes the first index where exp rounds
    two logits to one value or overflows (logits above ~88.7).

    ``rows = (R, first)``: ``logits`` [B, W, V] are rows ``[first, first + W)`` of a pass of R
    rows. The noise is drawn for all R rows (the official shape, so the RNG stream is the
    official one) and only these W rows are turned into scores.
    """
    if variant == "dllm_cache":
        if temperature == 0:
            return logits.exp()
        return logits.exp() / (-torch.log(_noise(logits, logits.dtype, rows))) ** temperature
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    return logits.exp() / (-torch.log(_noise(logits, torch.float64, rows))) ** temperature


def _noise(logits: torch.Tensor, dtype: torch.dtype, rows: tuple[int, int] | None) -> torch.Tensor:
    if rows is None:
        return torch.rand_like(logits, dtype=dtype)
    total, first = rows
    batch, width, vocab = logits.shape
    return torch.rand((batch, total, vocab), dtype=dtype, device=logits.device)[:, first : first + width]


def llada_propose(
    logits: torch.Tensor,
    window: slice,
    settings: ResolvedSettings,
    spec: ModelSpec,
    pass_rows: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA ``generate.py`` over the rows a strategy returned; returns the window's part.

    ``logits`` [B, R, V] may be modified in place (the EOS options write -inf into it).
    Noise is drawn over every row the pass computed, as the official code draws it over the
    whole sequence: ``pass_rows = (rows computed, index of the logits' first row among
    them)``, default the logits' own rows. Only the window is scored (float64 included).
    """
    total, first = pass_rows or (logits.shape[1], 0)
    if settings.logits_eos_inf:
        logits[..., spec.tokens.eos] = -torch.inf
    win = logits[:, window]
    noisy = gumbel_max_logits(win, settings.temperature, settings.gumbel_variant, (total, first + window.start))
    x0 = noisy.argmax(dim=-1)
    if settings.confidence_eos_eot_inf:
        # The official chained assignment: at temperature 0 ``noisy is logits``, so both
        # EOS and EoT end with probability 0; above it only EoT does.
        noisy[..., spec.tokens.eos] = -torch.inf
        win[..., spec.tokens.eot] = -torch.inf
    if settings.remasking == "random":
        confidence = torch.rand((logits.shape[0], total), device=logits.device)
        return x0, confidence[:, first + window.start : first + window.stop]
    dtype = _CONFIDENCE_DTYPES.get(settings.confidence_dtype, win.dtype)
    probs = F.softmax(win.to(dtype), dim=-1)
    return x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop = cumulative > top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def dream_sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg: str = "maskgit_plus",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens`` on [N, V] logits of masked positions (softmax in their dtype)."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        try:
            x0 = torch.distributions.Categorical(probs=probs).sample()
            confidence = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        except (ValueError, RuntimeError):  # the official code falls back to argmax on bad probs
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return confidence, x0
