"""Exact-match accuracy of a model on held-out synthetic samples, under any method."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import generate
from ..models.core import DiffusionTransformer
from ..models.spec import ModelSpec
from ..synthetic_tasks import Sample, SyntheticTask


@dataclass
class TaskResult:
    task: str
    correct: int = 0
    total: int = 0
    nfe: int = 0
    gen_positions: int = 0
    seconds: float = 0.0
    completions: list[str] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # seconds per sample (device-synchronised)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def positions_per_second(self) -> float:
        """Every generated position (EOS filler included) per second: Sparse-dLLM's and dLLM-Cache's definition."""
        return self.gen_positions / self.seconds if self.seconds else 0.0

    @property
    def nfe_per_position(self) -> float:
        return self.nfe / self.gen_positions if self.gen_positions else 0.0


def decode_completion(ids: list[int], tokenizer, stop_ids: set[int]) -> str:
    """Text of the generated ids up to the first stop token (EOS or EoT)."""
    for i, token in enumerate(ids):
        if token in stop_ids:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True)


def reference_settings(task: SyntheticTask) -> dict[str, Any]:
    """Greedy, one token per step, the task's block length: the accuracy reference."""
    d = task.decode
    return {"gen_length": d.gen_length, "steps": d.steps, "block_length": d.block_length, "temperature": 0.0}


def runnable_presets(spec: ModelSpec | None = None) -> list[dict]:
    """Every ``conf/method/*.yaml`` preset whose method is registered, with its file stem as ``preset``;
    with ``spec``, only those whose method runs on such a model (``ForwardStrategy.model_refusal``)."""
    from ..demo import method_configs
    from ..methods import available_methods, build_method

    known = set(available_methods())
    entries = [entry for entry in method_configs() if entry["name"] in known]
    if spec is None:
        return entries
    return [e for e in entries if build_method(e["name"], **(e.get("options") or {})).model_refusal(spec) is None]


def preset_settings(entry: dict, task: SyntheticTask) -> dict[str, Any]:
    """A preset's sampler overrides and options, inside the task's generation window.

    The task's gen_length, steps, block_length and greedy decoding win over the preset's
    (whose block_length 32 belongs to the papers' 256-token settings), so every method decodes
    the same blocks of the same short answers; everything else is the preset's default.
    """
    from ..generation import SamplerSettings
    from ..methods.registry import config_fields

    merged = {**(entry.get("sampler") or {}), **(entry.get("options") or {}), **reference_settings(task)}
    unknown = sorted(set(merged) - SamplerSettings.names() - config_fields(entry["name"]))
    if unknown:
        raise ValueError(f"preset {entry.get('preset', entry['name'])!r} has unknown setting {unknown[0]!r}")
    return merged


def evaluate_samples(
    model: DiffusionTransformer,
    tokenizer,
    task: SyntheticTask,
    samples: list[Sample],
    method: str = "vanilla",
    **settings: Any,
) -> TaskResult:
    """Generate each sample alone (batch 1, no padding) and score it; ``settings`` override the reference.
    Sample i runs after ``torch.manual_seed(i)``, so a rule that draws (``random_order``) scores the same every time."""
    merged = {**reference_settings(task), **settings}
    tokens = model.spec.tokens
    stop_ids = {tokens.eos, tokens.eot} - {None}
    result = TaskResult(task.name)
    for i, sample in enumerate(samples):
        prompt = torch.tensor([tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]], device=model.device)
        torch.manual_seed(i)
        _synchronize(model.device)
        started = time.perf_counter()
        out = generate(model, prompt, method=method, **merged)
        _synchronize(model.device)
        result.walls.append(time.perf_counter() - started)
        result.seconds += result.walls[-1]
        generated = out.sequences[0, prompt.shape[1] :].tolist()
        completion = decode_completion(generated, tokenizer, stop_ids)
        result.completions.append(completion)
        result.hits.append(task.score(completion, sample))
        result.correct += int(result.hits[-1])
        result.total += 1
        result.nfe += out.nfe
        result.gen_positions += len(generated)
    return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
