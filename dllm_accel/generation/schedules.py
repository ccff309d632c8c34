"""How many masked positions each step commits.

Counts that follow from the step plan are Python ints computed on the host; a count that
depends on data stays a device tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from .canvas import Canvas


class Schedule(ABC):
    """A commit count for the current step, and when a block is done."""

    def begin_block(self, canvas: Canvas) -> None:
        """Called once when a block starts."""

    @abstractmethod
    def count(self, canvas: Canvas) -> int | torch.Tensor:
        """How many positions each row commits this step: an int when every row commits the
        same number, else a LongTensor [B]."""

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.block_step >= canvas.settings.steps_per_block


class LinearBlockSchedule(Schedule):
    """LLaDA: a block's masks split evenly over its steps, the remainder to the earliest.

    A block starts with ``block_length`` masks in every row, so the plan is the same for
    every row and needs nothing from the device.
    """

    def begin_block(self, canvas: Canvas) -> None:
        per_step, extra = divmod(canvas.settings.block_length, canvas.settings.steps_per_block)
        self.plan = [per_step + (step < extra) for step in range(canvas.settings.steps_per_block)]

    def count(self, canvas: Canvas) -> int:
        return self.plan[canvas.block_step]


class TimestepSchedule(Schedule):
    """Dream: ``int(masked/B * (1 - s/t))`` on a float32 linspace(1, eps); the rest at the end.

    The mask count is the batch average, so every row commits the same number. The
    timesteps are computed on the model's device, as the official code computes them, and
    read once per generation; the float32 arithmetic then runs on the host (numpy float32,
    the same IEEE operations).
    """

    def begin_block(self, canvas: Canvas) -> None:
        steps = canvas.settings.steps_per_block
        if getattr(self, "_for", None) != (steps, canvas.settings.eps):
            linspace = torch.linspace(1, canvas.settings.eps, steps + 1, device=canvas.x.device)
            self.timesteps = np.asarray(linspace.tolist(), dtype=np.float32)
            self._for = (steps, canvas.settings.eps)

    def count(self, canvas: Canvas) -> int:
        i = canvas.block_step
        per_row = np.float32(sum(canvas.masks_left())) / np.float32(canvas.batch)
        if i < canvas.settings.steps_per_block - 1:
            return int(per_row * self._transfer(i))
        return int(per_row)

    def _transfer(self, i: int) -> np.float32:
        return np.float32(1) - self.timesteps[i + 1] / self.timesteps[i]

    def transfer_probability(self, canvas: Canvas) -> float:
        """Dream ``origin``: each mask is committed with probability 1 - s/t (1 at the end)."""
        i = canvas.block_step
        if i >= canvas.settings.steps_per_block - 1:
            return 1.0
        return float(self._transfer(i))


class ConstantSchedule(Schedule):
    """DyLLM engine: ``gen_length // steps`` per step whatever the block (never more than the
    block's masks). A block ends when its masks are filled; generation ends after ``steps``
    steps, even with masks left (possible when the count does not divide the block).
    """

    def count(self, canvas: Canvas) -> int | torch.Tensor:
        per_step = canvas.settings.gen_length // canvas.settings.steps
        running = {min(n, per_step) for n, done in zip(canvas.masks_left(), canvas.stopped(), strict=True) if not done}
        if len(running) <= 1:  # stopped rows commit nothing, whatever their count
            return running.pop() if running else 0
        return canvas.block_masked().sum(dim=1).clamp(max=per_step)

    def block_finished(self, canvas: Canvas) -> bool:
        return canvas.step >= canvas.settings.steps or canvas.block_done()
