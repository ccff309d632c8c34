"""PC-Sampler, position-aware calibrated decoding (NEUIR/PC-Sampler ``generate_with_pc_sampler``).

LLaDA's block schedule (the same count per step), but masks are ranked by

    exp(-lambd * i) * min(alpha, -p * log(f_bg(x0) + 1e-9)),

with i the position inside the block, p the probability of the argmax token x0 (model dtype)
and f_bg(x0) that token's frequency in a background corpus: a token the corpus makes common
(punctuation, "the") counts less than an informative one, and early positions more than late
ones. ``baseline`` is a corpus file in the official format ``{"num_token": N, "p_baseline_dict":
{token id: count}}`` (ids absent from it get 1/N); the official LLaDA file is
``data/baseline/reference_corpus.json`` of the official repository. Without one every token gets
1/vocab, which leaves the positional bias on the confidence. The official code is LLaDA only and
batch 1; here each row is ranked alone. Every scheduled step runs, as there. On Dream (no official
code) the same score ranks Dream's argmax tokens and max probabilities under the same block schedule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ..canvas import Canvas, Commit
from ..policies import _window, top_k_commit
from ..schedules import LinearBlockSchedule
from ..scoring import dream_sample_tokens, llada_propose
from ..settings import SettingsError
from . import DecodingRule, register_rule

LOG_EPS = 1e-9


@dataclass
class PCSamplerConfig:
    lambd: float = 0.25  # positional decay; the paper's default (0 for Sudoku, 1 for Countdown)
    alpha: float = 10.0  # clip of the calibrated score
    baseline: str | None = None  # background-frequency file (official format); None = uniform

    def __post_init__(self) -> None:
        for name in ("lambd", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SettingsError(f"pc_sampler {name}={value!r} must be a finite number")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise SettingsError(f"pc_sampler baseline={self.baseline!r} is not a file")


@cache
def background_frequencies(path: str | None, vocab_size: int) -> torch.Tensor:
    """float32 [vocab]: each token's corpus frequency, 1/N for tokens the corpus file lacks."""
    if path is None:
        return torch.full((vocab_size,), 1 / vocab_size, dtype=torch.float32)
    data = json.loads(Path(path).read_text())
    total = data["num_token"]
    counts = {int(k): v / total for k, v in data["p_baseline_dict"].items()}
    size = max(vocab_size, max(counts, default=-1) + 1)
    table = torch.full((size,), 1 / total, dtype=torch.float32)
    table[torch.tensor(list(counts), dtype=torch.long)] = torch.tensor(list(counts.values()), dtype=torch.float32)
    return table


def calibrated_scores(
    probability: torch.Tensor, tokens: torch.Tensor, frequencies: torch.Tensor, lambd: float, alpha: float
) -> torch.Tensor:
    """The PC-Sampler score of [B, block] candidates (float32 position weights, as there)."""
    informative = (-probability * torch.log(frequencies[tokens] + LOG_EPS)).clamp(max=alpha)
    positions = torch.arange(tokens.shape[1], device=tokens.device, dtype=torch.float32)
    return torch.exp(-lambd * positions) * informative


@register_rule
class PCSamplerPolicy(DecodingRule):
    """PC-Sampler; see the module docstring."""

    name = "pc_sampler"
    Config = PCSamplerConfig
    def __init__(self, config: PCSamplerConfig, canvas: Canvas, strategy: object) -> None:
        super().__init__(config, canvas, strategy)
        self.schedule = LinearBlockSchedule()

    def begin_block(self, canvas: Canvas) -> None:
        self.schedule.begin_block(canvas)

    def block_finished(self, canvas: Canvas) -> bool:
        return self.schedule.block_finished(canvas)

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        c, block = self.config, canvas.block_slice
        s, window = canvas.settings, _window(rows, canvas)
        if s.sampler == "llada":
            x0, probability = llada_propose(logits, window, s, canvas.spec)
        else:
            block_logits = logits[:, window]
            probability, x0 = dream_sample_tokens(block_logits.flatten(0, 1), s.temperature, s.top_p, s.top_k)
            probability, x0 = probability.view(block_logits.shape[:2]), x0.view(block_logits.shape[:2])
        masked = canvas.block_masked()
        x0 = torch.where(masked, x0, canvas.x[:, block])
        frequencies = background_frequencies(c.baseline, logits.shape[-1]).to(logits.device)
        scores = calibrated_scores(probability, x0, frequencies, c.lambd, c.alpha)
        confidence = torch.full(canvas.x.shape, -torch.inf, dtype=scores.dtype, device=scores.device)
        confidence[:, block] = scores.masked_fill(~masked, -torch.inf)
        tokens = canvas.x.clone()
        tokens[:, block] = x0
        return top_k_commit(confidence, tokens, self.schedule.count(canvas), canvas, block)
