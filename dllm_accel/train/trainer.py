"""Train a small LLaDA-layout masked-diffusion LM on the synthetic tasks, deterministically.

The model is the repository's own ``DiffusionTransformer`` with a LLaDA ``ModelSpec``, so
what is trained is exactly what ``load_model`` rebuilds. Only the response is masked
(LLaDA's SFT objective): the prompts are synthetic noise whose reconstruction teaches
nothing the tasks need. Given its seed and thread count, a run is bit-for-bit repeatable on
the same machine and torch build.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.core import DiffusionTransformer
from ..models.spec import ModelSpec, SpecialTokens
from ..synthetic_tasks import PASSKEY_MIN_LENGTH, TASKS, Sample, task_named, training_sample
from .objective import masked_diffusion_loss
from .tokenizer import BOS_ID, EMBEDDING_SIZE, EOS_ID, EOT_ID, MASK_ID

# (steps, task weights, passkey prompt lengths): copy alone first, then every task in every step.
# Passkey retrieval forms suddenly (at about 1,300 steps with half of each step: loss 0.59 -> 0.13 within
# 500 steps) at lengths up to 768, where a step holds 10-30 needles; it is evaluated at 512 and 1024 (its
# attention finds the key by content, whatever the distance). Arithmetic's digit table is the slowest to
# settle (49% held-out after 3,400 steps with 35% of each step), so it gets half of each step and more steps.
DEFAULT_CURRICULUM = (
    (150, {"copy": 1.0}, (128, 768)),
    (6000, {"arithmetic": 0.5, "passkey": 0.35, "copy": 0.15}, (128, 768)),
)


@dataclass
class TrainConfig:
    seed: int = 0
    # model
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int = 384
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    # optimisation (the step count is the curriculum's total)
    batch_tokens: int = 4096
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # p = (1 - eps) t + eps. LLaDA's 1e-3 lets the one nearly unmasked row of a ~24-row batch weigh up to
    # 1000x the others, and after clipping that row is the update: arithmetic alone reached 20% held-out
    # accuracy after 500 steps with 1e-3, 40% with 0.1 (loss still falling in both)
    eps: float = 0.1
    # spread each batch's mask ratios evenly over (0, 1) (see objective.add_mask_noise)
    stratified_t: bool = True
    # data: stages of (steps, task weights, passkey lengths); every step holds each task of its stage, sized
    # by weight; passkey prompt lengths are drawn log-uniformly in the stage's range.
    # Copy's position-aligned circuit forms in ~100 steps alone but not when mixed from the start, and a
    # new task's first gradients break it unless it stays in every step: so copy first, then each new task
    # joins with the earlier ones kept in the mix.
    curriculum: tuple[tuple[int, dict[str, float], tuple[int, int]], ...] = field(
        default_factory=lambda: DEFAULT_CURRICULUM
    )
    threads: int = 2
    log_every: int = 20

    def __post_init__(self) -> None:
        self.curriculum = tuple(
            (int(n), dict(w), (int(lengths[0]), int(lengths[1]))) for n, w, lengths in self.curriculum
        )
        if not self.curriculum:
            raise ValueError("curriculum is empty (give at least one (steps, task weights, passkey lengths) stage)")
        for steps, weights, (low, high) in self.curriculum:
            for name in weights:
                task_named(name)
            if steps < 1:
                raise ValueError(f"curriculum stage of {steps} steps: a stage needs at least 1 step")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"task weights {weights} must be non-negative with a positive sum")
            if not PASSKEY_MIN_LENGTH <= low <= high <= self.max_seq_len:
                raise ValueError(
                    f"passkey lengths ({low}, {high}) must satisfy {PASSKEY_MIN_LENGTH} <= low <= high <= max_seq_len"
                )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def steps(self) -> int:
        return sum(stage[0] for stage in self.curriculum)

    def stage_at(self, step: int) -> tuple[int, dict[str, float], tuple[int, int]]:
        """The stage that contains ``step`` (0-based); the last one past the end."""
        for stage in self.curriculum:
            if step < stage[0]:
                return stage
            step -= stage[0]
        return self.curriculum[-1]


def tiny_spec(config: TrainConfig) -> ModelSpec:
    """The LLaDA spec the written config.json describes (the loader rebuilds exactly this)."""
    return ModelSpec(
        family="llada",
        vocab_size=EMBEDDING_SIZE,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_heads,
        mlp_hidden=config.mlp_hidden,
        norm_eps=1e-5,
        rope_theta=config.rope_theta,
        max_seq_len=config.max_seq_len,
        tokens=SpecialTokens(mask=MASK_ID, eos=EOS_ID, pad=EOS_ID, bos=BOS_ID, eot=EOT_ID),
        rope_in_fp32=True,
        qkv_bias=False,
        logit_shift=False,
        pad_shifts_positions=False,
    )


def init_model(config: TrainConfig) -> DiffusionTransformer:
    """N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 * layers), norms at 1."""
    torch.manual_seed(config.seed)
    model = DiffusionTransformer(tiny_spec(config))
    residual_std = 0.02 / math.sqrt(2 * config.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm_layer.weight") or name == "final_norm.weight":
                param.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                param.normal_(0.0, residual_std)
            else:
                param.normal_(0.0, 0.02)
    return model


def encode(text: str) -> list[int]:
    """Byte ids, identical to the shipped tokenizer's for text without special tokens."""
    return list(text.encode("utf-8"))


def collate(samples: list[Sample], response_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of prompt + answer + EOS, all one length; only the response part is maskable."""
    prompts = [encode(s.prompt) for s in samples]
    answers = [encode(s.answer) for s in samples]
    length = max(len(p) for p in prompts) + response_length
    rows, maskable = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        fill = length - len(prompt) - len(answer)
        if fill < 1:
            raise ValueError(
                f"response_length={response_length} leaves no room for EOS after a {len(answer)}-token answer"
            )
        rows.append(prompt + answer + [EOS_ID] * fill)
        maskable.append([False] * len(prompt) + [True] * (length - len(prompt)))
    return torch.tensor(rows), torch.tensor(maskable)


def task_batch(
    name: str, budget: int, passkey_lengths: tuple[int, int], rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of one task filling about ``budget`` tokens (at least one row); passkey rows share one length."""
    low, high = passkey_lengths
    length = round(low * (high / low) ** rng.random()) if name == "passkey" else None
    first = training_sample(name, rng, length)
    gen = TASKS[name].decode.gen_length
    rows = max(1, budget // (len(encode(first.prompt)) + gen))
    return collate([first] + [training_sample(name, rng, length) for _ in range(rows - 1)], gen)


def draw_batch(config: TrainConfig, rng: random.Random, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One step's data: a sub-batch per task of the stage, its token budget in proportion to the task's weight.

    Every update sees every task: with one task per step, Adam's moments swing between tasks
    and none of them learned (3 tasks, 1600 steps, all at 0%), while each alone learns in 100-300 steps.
    """
    _, stage_weights, lengths = config.stage_at(step)
    weights = {name: w for name, w in stage_weights.items() if w > 0}
    total = sum(weights.values())
    return {name: task_batch(name, round(config.batch_tokens * w / total), lengths, rng) for name, w in weights.items()}


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    config: TrainConfig,
    log_path: str | Path | None = None,
    on_log: Callable[[dict, DiffusionTransformer], None] | None = None,
) -> DiffusionTransformer:
    """Run ``config.steps`` optimiser steps and return the trained model (fp32, eval mode).

    ``on_log(record, model)`` runs at every log step before the record is written, so it can
    add fields (held-out accuracy); it must leave the model's weights and the RNGs alone.
    """
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    model = init_model(config).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    data_rng = random.Random(f"train:{config.seed}")
    noise = torch.Generator().manual_seed(config.seed)
    log = open(log_path, "w") if log_path is not None else None
    window: dict[str, list[float]] = {}
    tokens_seen, started = 0, time.perf_counter()
    try:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            weights = config.stage_at(step)[1]
            total = sum(weights.values())
            optimizer.zero_grad(set_to_none=True)
            for name, (input_ids, maskable) in draw_batch(config, data_rng, step).items():
                loss = masked_diffusion_loss(model, input_ids, maskable, noise, config.eps, config.stratified_t)
                (loss * weights[name] / total).backward()
                tokens_seen += input_ids.numel()
                window.setdefault(name, []).append(loss.item())
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                record = {
                    "step": step + 1,
                    "lr": learning_rate(config, step),
                    "tokens": tokens_seen,
                    "elapsed_s": round(time.perf_counter() - started, 2),
                    "loss": {k: sum(v) / len(v) for k, v in sorted(window.items())},
                }
                window = {}
                if on_log is not None:
                    on_log(record, model.eval())
                    model.train()
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
    finally:
        if log is not None:
            log.close()
    return model.eval()
