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


def gumbel_max_over(logits: torch.Tensor, positions: torch.Tensor, temperature: float) -> torch.Tensor:
    """LLaDA's float64 Gumbel-max scores of logits [B, W, V] with the noise the official code draws
    for a pass that computed scattered rows: one [B, N, V] draw whose row j belongs to
    ``positions[:, j]`` [B, N] (indices into the W rows; others are rows outside them). Rows the pass
    did not compute are never committed and get a placeholder draw. Temperature 0: ``logits``."""
    if temperature == 0:
        return logits
    noise = torch.rand((*positions.shape, logits.shape[-1]), dtype=torch.float64, device=logits.device)
    rows = spread_rows(noise, positions, logits.shape[1], 0.5)
    return logits.to(torch.float64).exp() / (-torch.log(rows)) ** temperature


def spread_rows(values: torch.Tensor, positions: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """[B, width, ...] holding ``values[:, j]`` at row ``positions[:, j]`` (dropped outside [0, width)), ``fill`` elsewhere."""
    batch, count = positions.shape
    slot = torch.where((positions >= 0) & (positions < width), positions, width)
    out = torch.full((batch, width + 1, *values.shape[2:]), fill, dtype=values.dtype, device=values.device)
    out.scatter_(1, slot.view(batch, count, *([1] * (values.dim() - 2))).expand_as(values), values)
    return out[:, :width]


def llada_propose(
    logits: torch.Tensor,
    window: slice,
    settings: ResolvedSettings,
    spec: ModelSpec,
    pass_rows: tuple[int, int] | None = None,
    scattered: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA ``generate.py`` over the rows a strategy returned; returns the window's part.

    ``logits`` [B, R, V] may be modified in place (the EOS options write -inf into it).
    Noise is drawn over every row the pass computed, as the official code draws it over its
    model input: ``pass_rows = (rows computed, index of the logits' first row among them)``,
    default the logits' own rows, or, for a pass that computed scattered rows, ``scattered``
    [B, N]: their indices relative to the window's first row, in the order fed (the draws,
    random remasking's included, then have N rows). Only the window is scored (float64 included).
    """
    total, first = pass_rows or (logits.shape[1], 0)
    if settings.logits_eos_inf:
        logits[..., spec.tokens.eos] = -torch.inf
    win = logits[:, window]
    if scattered is not None and settings.gumbel_variant == "llada":
        noisy = gumbel_max_over(win, scattered, settings.temperature)
    else:
        noisy = gumbel_max_logits(win, settings.temperature, settings.gumbel_variant, (total, first + window.start))
    x0 = noisy.argmax(dim=-1)
    if settings.confidence_eos_eot_inf:
        # The official chained assignment: at temperature 0 ``noisy is logits``, so both
        # EOS and EoT end with probability 0; above it only EoT does.
        noisy[..., spec.tokens.eos] = -torch.inf
        win[..., spec.tokens.eot] = -torch.inf
    if settings.remasking == "random" and scattered is not None:
        confidence = torch.rand(scattered.shape, device=logits.device)
        return x0, spread_rows(confidence, scattered, win.shape[1], 0.0)
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
        x0, confidence = categorical_or_argmax(probs)
    else:
        confidence, x0 = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return confidence, x0


# -- Dream's ``try: Categorical(probs).sample() except: argmax``, without reading the device --
#
# ``Categorical`` checks its (normalised) probabilities before drawing: every row >= 0 and
# summing to 1 within 1e-6 (a bf16 row often does not). When the check fails the official code
# draws nothing and takes the argmax of every row. Here the check stays on the device: the
# sample is drawn and the argmax kept where the check failed, and the generator's state from
# before the draw is kept until the check is read with the step's one device read
# (``Canvas.masks_left``) or before the next sample; a failed check then rolls the generator
# back, so the random stream stays the official one. Draws made in between (``alg_temp``'s
# positions) run in both worlds and are picked on the device.

_UNREAD: list[tuple[torch.Tensor, torch.Generator, torch.Tensor]] = []  # (check, generator, state if it failed)


def _generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def categorical_or_argmax(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, confidence) of ``probs`` [N, V] as Dream's ``sample_tokens`` gets them at temperature > 0."""
    if probs.shape[0] == 0:
        confidence, x0 = probs.max(dim=-1)
        return x0, confidence
    settle_samples()
    normalised = probs / probs.sum(-1, keepdim=True)
    valid = ((normalised >= 0).all(dim=-1) & ((normalised.sum(-1) - 1).abs() < 1e-6)).all()
    generator = _generator(probs.device)
    before = generator.get_state()
    drawn = torch.multinomial(torch.where(valid, normalised, 1.0), 1, True).view(-1)
    _UNREAD.append((valid, generator, before))
    top, argmax = probs.max(dim=-1)
    x0 = torch.where(valid, drawn, argmax)
    return x0, torch.where(valid, probs.gather(-1, drawn[:, None]).squeeze(-1), top)


def multinomial(probs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``torch.multinomial(probs, num_samples)``, drawn in both worlds while a sample's check is unread."""
    if not _UNREAD:
        return torch.multinomial(probs, num_samples)
    valid, generator, before = _UNREAD[-1]
    shadow = torch.Generator(device=probs.device)
    shadow.set_state(before)
    ours = torch.multinomial(probs, num_samples)
    theirs = torch.multinomial(probs, num_samples, generator=shadow)
    _UNREAD[-1] = (valid, generator, shadow.get_state())
    return torch.where(valid, ours, theirs)


def unread_checks() -> list[torch.Tensor]:
    """The checks of samples drawn since the last read (0-dim bool tensors), for a caller that reads anyway."""
    return [valid for valid, _, _ in _UNREAD]


def settle_samples(checks: list[bool] | None = None) -> None:
    """Roll the generator back where a sample's check failed; ``checks`` are the values of
    ``unread_checks()`` when the caller read them, else they are read here."""
    if not _UNREAD:
        return
    if checks is None:
        checks = torch.stack(unread_checks()).tolist()
    for (_, generator, before), passed in zip(_UNREAD, checks, strict=True):
        if not passed:
            generator.set_state(before)
            break
    _UNREAD.clear()
