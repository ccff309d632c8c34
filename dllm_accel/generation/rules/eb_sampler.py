"""EB-Sampler, entropy-bounded unmasking. No official code: written from the one public
implementation, ``generate_with_eb_sampler`` of the PC-Sampler repository (NEUIR/PC-Sampler,
third-party), and tested against it.

Each step ranks the masks by the entropy of their predictive distribution (model dtype,
``Categorical(logits).entropy()``), ascending, and commits the largest prefix whose entropies,
all but the largest, sum to at most ``gamma`` (at least one mask): an error proxy that lets
confident steps commit many tokens and uncertain ones few. The source runs on the whole
generation as one block until no mask is left (``steps`` does not bound it), LLaDA only, batch 1;
here it ranks the current block's masks per row (one block by default, as there), and Dream's
aligned logits work the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..canvas import Canvas, Commit
from ..policies import _window
from ..scoring import gumbel_max_logits
from ..settings import SettingsError
from . import DecodingRule, register_rule


@dataclass
class EBSamplerConfig:
    gamma: float = 0.01  # the error budget; PC-Sampler's eval_eb_sampler.sh setting

    def __post_init__(self) -> None:
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not math.isfinite(self.gamma):
            raise SettingsError(f"eb_sampler gamma={self.gamma!r} must be a finite number")


def entropy_bounded_index(entropy: torch.Tensor, candidates: torch.Tensor, gamma: float) -> torch.Tensor:
    """[B, N] bool: per row the lowest-entropy candidates whose entropies but the largest sum to <= gamma."""
    values, order = torch.sort(entropy.masked_fill(~candidates, torch.inf), dim=1)
    finite = torch.where(candidates.gather(1, order), values, torch.zeros_like(values))
    spent = torch.cumsum(finite, dim=1) - torch.cummax(finite, dim=1).values
    count = ((spent <= gamma) & candidates.gather(1, order)).sum(dim=1, keepdim=True).clamp(min=1)
    ranks = torch.arange(values.shape[1], device=values.device).expand_as(values)
    return torch.zeros_like(candidates).scatter(1, order, ranks < count) & candidates


@register_rule
class EBSamplerPolicy(DecodingRule):
    """EB-Sampler; see the module docstring."""

    name = "eb_sampler"
    Config = EBSamplerConfig
    provenance: ClassVar[str] = "no official code (PC-Sampler repository's implementation)"

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_done()

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        s, block = canvas.settings, canvas.block_slice
        noisy = gumbel_max_logits(logits, s.temperature) if s.temperature > 0 else logits
        window = _window(rows, canvas)
        x0 = noisy[:, window].argmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=logits[:, window], validate_args=False).entropy()
        index = torch.zeros_like(canvas.x, dtype=torch.bool)
        index[:, block] = entropy_bounded_index(entropy, canvas.block_masked(), self.config.gamma)
        tokens = canvas.x.clone()
        tokens[:, block] = x0
        return Commit(index=index, tokens=tokens)
