"""The one denoising loop every model, method and policy runs under."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.core import DiffusionTransformer
from .canvas import Canvas
from .policies import DecodingPolicy, build_policy
from .settings import SamplerSettings


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, L]: prompt + generation
    nfe: int
    trajectory: list[torch.Tensor] | None = None  # the sequence after every step
    stats: dict[str, float] | None = None


@torch.no_grad()
def denoise(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    strategy,
    settings: SamplerSettings,
    policy: DecodingPolicy | None = None,
) -> GenerationOutput:
    """Fill ``settings.gen_length`` masks after the prompt, block by block."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    resolved = settings.resolve(model.spec, input_ids.shape[1])
    canvas = Canvas.start(input_ids.to(model.device), attention_mask, resolved, model.spec)
    strategy.check(canvas)
    policy = strategy.decoding_policy(policy or build_policy(canvas), canvas)
    strategy.begin(model, canvas)
    for block in range(resolved.num_blocks):
        canvas.block, canvas.block_step = block, 0
        policy.begin_block(canvas)
        strategy.begin_block(model, canvas)
        while not policy.block_finished(canvas):
            logits, rows = strategy.forward(model, canvas)
            commit = policy.select(logits, rows, canvas)
            canvas.write(commit)
            strategy.after_commit(canvas, commit)
            canvas.block_step += 1
            canvas.step += 1
            if canvas.trajectory is not None:
                canvas.trajectory.append(canvas.x.clone())
    return GenerationOutput(canvas.x, canvas.nfe, canvas.trajectory, canvas.stats or None)
