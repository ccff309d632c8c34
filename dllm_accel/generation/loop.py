"""The one denoising loop every model, method and policy runs under."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial

import torch

from ..models.compiled import honours_compile_setting
from ..models.core import DiffusionTransformer
from .canvas import Canvas, Commit
from .policies import DecodingPolicy
from .policy_choice import build_policy
from .scoring import settle_samples
from .settings import SamplerSettings

# profiler ranges (``profiling.OpCounter`` counts by them): one step's body, and what runs once after the last
STEP, FINISH = "denoise.step", "denoise.finish"


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, L]: prompt + generation
    nfe: int
    trajectory: list[torch.Tensor] | None = None  # the sequence after every step
    summarise: Callable[[], dict[str, float]] | None = field(default=None, repr=False)

    @cached_property
    def stats(self) -> dict[str, float] | None:
        """The method's statistics, computed on first read: after a meter's timed region, never inside it."""
        return (self.summarise() or None) if self.summarise is not None else None


@torch.no_grad()
@honours_compile_setting
def denoise(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    strategy,
    settings: SamplerSettings,
    policy: DecodingPolicy | None = None,
) -> GenerationOutput:
    """Fill ``settings.gen_length`` masks after the prompt, block by block.

    A step reads the device at most once (``Canvas.masks_left``: the block-end check, or a
    count the policy needs); fixed schedules end their blocks on the host and read nothing.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    resolved = settings.resolve(model.spec, input_ids.shape[1])
    canvas = Canvas.start(input_ids.to(model.device), attention_mask, resolved, model.spec)
    strategy.check(canvas)
    policy = strategy.decoding_policy(policy or build_policy(canvas, strategy), canvas)
    if resolved.eos_early_exit:
        canvas.finished = torch.zeros(canvas.x.shape[0], dtype=torch.bool, device=canvas.x.device)
    strategy.begin(model, canvas)
    for block in range(resolved.num_blocks):
        if canvas.all_finished():
            break
        canvas.begin_block(block)
        policy.begin_block(canvas)
        strategy.begin_block(model, canvas)
        while not policy.block_finished(canvas):
            with torch.profiler.record_function(STEP):
                canvas.reads, canvas.pass_rows, canvas.pass_positions = policy.reads(canvas), None, None
                logits, rows = strategy.forward(model, canvas)
                if canvas.pass_rows is None:
                    canvas.pass_rows = rows
                commit = _without_finished(policy.select(logits, rows, canvas), canvas)
                canvas.write(commit)
                if resolved.eos_early_exit:
                    canvas.finished |= eos_exits(canvas, commit)
                if commit.finishes is not None:
                    canvas.stop_filled(commit.finishes)
                strategy.after_commit(canvas, commit)
                canvas.block_step += 1
                canvas.step += 1
                if canvas.trajectory is not None:
                    canvas.trajectory.append(canvas.x.clone())
            if canvas.all_finished():
                break
    with torch.profiler.record_function(FINISH):
        settle_samples()  # the random stream leaves as the official code leaves it
    if canvas.step and not canvas.nfe:
        raise RuntimeError(
            f"method {strategy.name!r} ran {canvas.step} steps but counted no forward pass: every model call in "
            "its forward() must add 1 to canvas.nfe (dense_pass does), or NFE and tokens per step are wrong"
        )
    return GenerationOutput(canvas.x, canvas.nfe, canvas.trajectory, partial(_statistics, strategy, model, canvas))


def _statistics(strategy, model: DiffusionTransformer, canvas: Canvas) -> dict[str, float]:
    strategy.finish(model, canvas)
    return canvas.stats


def _without_finished(commit: Commit, canvas: Canvas) -> Commit:
    """Rows stopped by the EOS early exit take no more tokens."""
    if canvas.finished is None:
        return commit
    return replace(commit, index=commit.index & ~canvas.finished[:, None])


def eos_exits(canvas: Canvas, commit: Commit) -> torch.Tensor:
    """[B] rows whose step committed EOS with no mask left before it (the DyLLM scheduler).

    As there, only one committed EOS per row is checked: the first in the policy's ranking
    (``commit.confidence``, ties to the left), or the leftmost when the policy does not rank.
    """
    hits = commit.index & (commit.tokens == canvas.spec.tokens.eos)
    rank = hits.double() if commit.confidence is None else commit.confidence
    first = torch.where(hits, rank, -torch.inf).argmax(dim=1, keepdim=True)
    # the commit is written: where a row has a hit, ``first`` holds no mask, so the count of masks up
    # to it is the count before it
    masks_before = canvas.masked().cumsum(dim=1).gather(1, first).squeeze(1)
    return hits.any(dim=1) & (masks_before == 0)
