"""Certainty-prior decoding (d2Cache, Kamichanw/d2Cache ``src/generation/vanilla.py``).

Each masked position's confidence (Dream's ``sample_tokens`` scores, for both families: max
probability, margin or negative entropy) is multiplied by the certainty density of its
neighbourhood: a Gaussian (``sigma``) average of which positions are already decoded, so
positions next to decoded text go first and generation runs roughly left to right. Each step
commits the ``num_transfer_tokens`` best masks of the block, or with ``threshold`` every one whose
weighted score reaches it (at least ``num_transfer_tokens``), until the block has no masks.

Only positions whose logits the pass has are candidates (a strategy's ``scored`` narrows them
further: d2Cache computes a subset of rows). ``confidence`` keeps the step's raw confidences for
d2Cache's selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..canvas import Canvas, Commit
from ..scoring import dream_sample_tokens
from ..settings import SettingsError
from . import DecodingRule, register_rule

ALGS = ("maskgit_plus", "topk_margin", "entropy")


@dataclass
class CertaintyPriorConfig:
    # the Gaussian's standard deviation in positions; None = no prior (plain confidence, d2Cache's parallel mode)
    sigma: float | None = 10.0
    # at least this many commits per step (the official ``num_transfer_tokens``)
    num_transfer_tokens: int = 1
    # Fast-dLLM-style parallel decoding on the weighted scores; None = exactly num_transfer_tokens
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.sigma is not None and (isinstance(self.sigma, bool) or not self.sigma > 0):
            raise SettingsError(f"certainty_prior sigma={self.sigma!r} must be a positive number or null (no prior)")
        n = self.num_transfer_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SettingsError(f"certainty_prior num_transfer_tokens={n!r} must be a positive integer")
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise SettingsError(f"certainty_prior threshold={t!r} must be a finite number or null")


def certainty_density(decoded: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, G] Gaussian-weighted share of decoded positions around each position.

    As the official FFT convolution: the region is padded by G on each side, the left pad
    counting as decoded, the right pad as decoded only when the last position is; weights
    are normalised by the kernel mass over the padded extent.
    """
    batch, length = decoded.shape
    device = decoded.device
    padded = F.pad(decoded.float(), (length, length), "constant", 1.0)
    padded[:, 2 * length :] *= decoded[:, -1:].float()
    extended = 3 * length
    size = 2 * extended
    dist = torch.cat((torch.arange(extended, device=device), torch.arange(-extended, 0, device=device)))
    kernel = torch.fft.fft(torch.exp(-(dist**2) / (2 * sigma**2)), n=size)
    weighted = torch.fft.ifft(torch.fft.fft(F.pad(padded, (0, extended)), n=size) * kernel, n=size).real
    mass = torch.fft.ifft(torch.fft.fft(torch.ones(batch, size, device=device), n=size) * kernel, n=size).real
    return weighted[..., length : 2 * length] / mass[..., length : 2 * length].clamp_min(1e-8)


@register_rule
class CertaintyPriorPolicy(DecodingRule):
    """Certainty-prior decoding; see the module docstring."""

    name = "certainty_prior"
    Config = CertaintyPriorConfig

    def __init__(self, config: CertaintyPriorConfig, canvas: Canvas, strategy: object) -> None:
        super().__init__(config, canvas, strategy)
        if canvas.settings.cfg_scale > 0:
            raise ValueError(
                f"policy 'certainty_prior' has no classifier-free guidance (cfg_scale={canvas.settings.cfg_scale})"
            )
        alg = canvas.settings.alg
        if alg not in ALGS:
            raise ValueError(f"policy 'certainty_prior' scores with alg {' / '.join(ALGS)}, got {alg!r}")
        self.strategy = strategy
        self.confidence: torch.Tensor | None = None  # [B, G] the last step's raw confidences (-inf off candidates)

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s, start = canvas.settings, canvas.prompt_length
        first = max(rows.start or 0, start)  # the response positions this pass has logits for
        scored_rows = logits[:, first - (rows.start or 0) :]
        batch, width, vocab = scored_rows.shape
        conf, tokens = dream_sample_tokens(scored_rows.reshape(-1, vocab), s.temperature, s.top_p, s.top_k, s.alg)
        remaining = canvas.x[:, start:] == canvas.mask_id
        confidence = torch.full(remaining.shape, -torch.inf, dtype=conf.dtype, device=conf.device)
        x0 = torch.full_like(remaining, canvas.mask_id, dtype=torch.long)
        confidence[:, first - start : first - start + width] = conf.view(batch, width)
        x0[:, first - start : first - start + width] = tokens.view(batch, width)
        candidates = remaining & torch.isfinite(confidence)
        scored = getattr(self.strategy, "scored", None)
        if scored is not None:
            candidates = candidates & scored[:, start:]
        confidence = torch.where(candidates, confidence, -torch.inf)
        self.confidence = confidence
        scores = confidence
        if self.config.sigma is not None:
            scores = confidence * certainty_density(~remaining, self.config.sigma)
        block = torch.zeros_like(remaining)
        block[:, canvas.block_start - start : canvas.block_end - start] = True
        chosen = self._choose(torch.where(candidates & block, scores, -torch.inf), candidates & block)
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        index[:, start:] = chosen
        tokens = canvas.x.clone()
        tokens[:, start:] = x0
        return Commit(index=index, tokens=tokens, confidence=None)

    def _choose(self, scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Per row: every score >= threshold when at least n reach it, else the top n (fewer when fewer
        are eligible), without reading the device."""
        n = min(self.config.num_transfer_tokens, scores.shape[1])
        want = torch.clamp(eligible.sum(dim=1, keepdim=True), max=n)
        ranked = torch.topk(scores, n, dim=1).indices
        top = torch.zeros_like(eligible).scatter_(1, ranked, torch.arange(n, device=scores.device)[None, :] < want)
        if self.config.threshold is None:
            return top
        above = (scores >= self.config.threshold) & eligible
        return torch.where(above.sum(dim=1, keepdim=True) >= want, above, top)
