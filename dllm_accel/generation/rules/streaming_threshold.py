"""Streaming-dLLM's dynamic decoding (xiaoshideta/Streaming-dLLM): a context-aware threshold and
the EOS early exit.

Threshold: a step commits each candidate whose confidence reaches

    tau * (1 - alpha * (1 - r)),

r being the share of masks among the pass's rows from the block start on (the block and the suffix
the pass computed; under Streaming-dLLM's pruning, the window and the tail), counted before the step;
and always the most confident candidate. A block's first step uses tau (the official first pass passes
r = 1, alpha = 0). The threshold falls as the block fills, so late steps of a block commit more.

Early exit: when a step leaves a row's block without masks and the block holds EOS, every later
position of the row becomes EOS and the row stops: its remaining blocks cost no pass.

LLaDA candidates are Fast-dLLM's (the masks from the first computed row up to the block end), scored
as the sampler scores (float64 with ``confidence_dtype: float64``, as the official code). Dream samples
every mask of the pass from the block on (the official RNG order), ranks the block's by max probability
and compares in the logits' dtype (the official compares a float32 confidence with a Python float).

``batch_coupled``: the official code (run at batch 1 in its evaluation) sums the masks of all rows
into r, over one row's width, and ends every row when any row's block holds EOS once all rows' blocks
are full. Off by default: each row then decodes as it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..canvas import Canvas, Commit
from ..parallel import score_range, threshold_commit
from ..settings import SettingsError
from . import ParallelRule, register_rule


@dataclass
class StreamingThresholdConfig:
    # tau (README runs: 0.9) and alpha (README runs: 0.1 to 0.6; the official default 0.3)
    threshold: float = 0.9
    alpha: float = 0.3
    # the EOS early exit, and the id it looks for (None: the model's EOS)
    eos_exit: bool = True
    eos_id: int | None = None
    batch_coupled: bool = False

    def __post_init__(self) -> None:
        for name in ("threshold", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SettingsError(f"streaming_threshold {name}={value!r} must be a finite number")
        for name in ("eos_exit", "batch_coupled"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"streaming_threshold {name}={getattr(self, name)!r} must be true or false")
        if self.eos_id is not None and (isinstance(self.eos_id, bool) or not isinstance(self.eos_id, int)):
            raise SettingsError(f"streaming_threshold eos_id={self.eos_id!r} must be a token id or null")


@register_rule
class StreamingThresholdPolicy(ParallelRule):
    """The context-aware threshold and the EOS early exit; see the module docstring."""

    name = "streaming_threshold"
    Config = StreamingThresholdConfig

    def __init__(self, config: StreamingThresholdConfig, canvas: Canvas, strategy: object) -> None:
        super().__init__(config, canvas, strategy)
        self.eos = canvas.spec.tokens.eos if config.eos_id is None else config.eos_id

    def select(self, logits: torch.Tensor, rows: slice, canvas: Canvas) -> Commit:
        threshold = self.threshold(canvas, rows)
        if self.dream:
            x0, confidence, candidates = score_range(
                logits, rows, canvas, canvas.block_start, rows.stop or canvas.length, "maskgit_plus"
            )
            in_block = torch.zeros_like(candidates)
            in_block[:, canvas.block_slice] = True
            confidence = confidence.masked_fill(~in_block, -torch.inf)
            candidates = candidates & in_block
        else:
            x0, confidence, candidates = self.scores(logits, rows, canvas)
        commit = threshold_commit(x0, confidence, candidates, threshold.to(confidence.dtype)[:, None])
        return self.early_exit(commit, canvas) if self.config.eos_exit else commit

    def threshold(self, canvas: Canvas, rows: slice) -> torch.Tensor:
        """[B] float64: tau * (1 - alpha * (1 - r)), r from the sequence before the step."""
        tau, alpha = self.config.threshold, self.config.alpha
        if canvas.block_step == 0:
            return torch.full((canvas.batch,), float(tau), dtype=torch.float64, device=canvas.x.device)
        start = canvas.block_start
        passed = canvas.pass_rows if canvas.pass_rows is not None else rows
        stop = passed.stop or canvas.length
        masks = (canvas.x[:, start:stop] == canvas.mask_id).sum(dim=1)
        if self.config.batch_coupled:
            masks = masks.sum().expand(canvas.batch)
        ratio = masks.double() / (stop - start)
        return tau * (1.0 - alpha * (1.0 - ratio))

    def early_exit(self, commit: Commit, canvas: Canvas) -> Commit:
        """Fill the rest of each row whose block this commit completes with EOS in it, and stop it."""
        block = torch.where(commit.index, commit.tokens, canvas.x)[:, canvas.block_slice]
        full = (block != canvas.mask_id).all(dim=1)
        has_eos = (block == self.eos).any(dim=1)
        ends = (full.all() & has_eos.any()).expand(canvas.batch) if self.config.batch_coupled else full & has_eos
        fill = torch.zeros_like(commit.index)
        fill[:, canvas.block_end :] = True
        fill &= ends[:, None]
        tokens = torch.where(fill, self.eos, commit.tokens)
        return Commit(index=commit.index | fill, tokens=tokens, confidence=commit.confidence, finishes=ends)
