"""How many masked positions each step commits."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .canvas import Canvas


class Schedule(ABC):
    """A per-row commit count for the current step, and when a block is done."""

    def begin_block(self, canvas: Canvas) -> None:
        """Called once when a block starts."""

    @abstractmethod
    def count(self, canvas: Canvas) -> torch.Tensor:
        """LongTensor [B]: how many positions each row commits this step."""

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_step >= canvas.settings.steps_per_block


class LinearBlockSchedule(Schedule):
    """LLaDA: a block's masks split evenly over its steps, the remainder to the earliest."""

    def begin_block(self, canvas: Canvas) -> None:
        masks = canvas.block_masked().sum(dim=1, keepdim=True)
        steps = canvas.settings.steps_per_block
        extra = torch.arange(steps, device=masks.device)[None, :] < masks % steps
        self.plan = masks // steps + extra.long()

    def count(self, canvas: Canvas) -> torch.Tensor:
        return self.plan[:, canvas.block_step]


class TimestepSchedule(Schedule):
    """Dream: ``int(masked/B * (1 - s/t))`` on a float32 linspace(1, eps); the rest at the end.

    The mask count is the batch average, so every row commits the same number.
    """

    def begin_block(self, canvas: Canvas) -> None:
        steps = canvas.settings.steps_per_block
        self.timesteps = torch.linspace(1, canvas.settings.eps, steps + 1, device=canvas.x.device)

    def count(self, canvas: Canvas) -> torch.Tensor:
        i = canvas.block_step
        masked = canvas.block_masked()
        per_row = masked.sum() / masked.shape[0]
        if i < canvas.settings.steps_per_block - 1:
            t, s = self.timesteps[i], self.timesteps[i + 1]
            n = int(per_row * (1 - s / t))
        else:
            n = int(per_row)
        return torch.full((masked.shape[0],), n, dtype=torch.long, device=masked.device)

    def transfer_probability(self, canvas: Canvas) -> torch.Tensor | float:
        """Dream ``origin``: each mask is committed with probability 1 - s/t (1 at the end)."""
        i = canvas.block_step
        if i >= canvas.settings.steps_per_block - 1:
            return 1
        return 1 - self.timesteps[i + 1] / self.timesteps[i]


class ConstantSchedule(Schedule):
    """DyLLM engine: ``gen_length // steps`` per step whatever the block (never more than the
    block's masks). A block ends when its masks are filled; generation ends after ``steps``
    steps, even with masks left (possible when the count does not divide the block).
    """

    def count(self, canvas: Canvas) -> torch.Tensor:
        per_step = canvas.settings.gen_length // canvas.settings.steps
        return canvas.block_masked().sum(dim=1).clamp(max=per_step)

    def block_finished(self, canvas: Canvas) -> bool:
        if canvas.step >= canvas.settings.steps:
            return True
        masked = canvas.block_masked()
        if canvas.finished is not None:
            masked = masked[~canvas.finished]
        return not bool(masked.any())
