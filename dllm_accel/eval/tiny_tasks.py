"""The tiny trained model's synthetic tasks as runner tasks (``task=tiny_passkey`` etc.).

Samples are the held-out split of the training generators (``dllm_accel/synthetic_tasks.py``),
written into the run's task folder like the long-context tasks, and scored exactly by the
generator's own scorer, so the runner and ``experiments/eval_tiny.py`` count the same hits.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_text
from ..synthetic_tasks import Sample, held_out_samples, task_named

# runner task kind (``lm_eval_task`` without ``dllm_``) -> generator name
TINY_TASKS = {"tiny_passkey": "passkey", "tiny_arithmetic": "arithmetic", "tiny_copy": "copy"}


def write_tiny_samples(kind: str, tasks_dir: Path, lengths: list[int], per_length: int, seed: int) -> Path:
    """``per_length`` held-out samples at each prompt length (the task's default when ``lengths`` is empty)."""
    if kind not in TINY_TASKS:
        raise ValueError(f"unknown tiny task {kind!r} (accepted: {', '.join(TINY_TASKS)})")
    if per_length < 1:
        raise ValueError(f"task.samples_per_cell={per_length} must be >= 1 for {kind}")
    generator = TINY_TASKS[kind]
    rows = []
    for length in lengths or [None]:
        for sample in held_out_samples(generator, per_length, length, seed):
            rows.append(
                {
                    "task": generator,
                    "input": sample.prompt,
                    "answer": sample.answer,
                    "target": sample.target,
                    "length": length,
                    **{k: v for k, v in sample.meta.items() if k in ("depth", "index")},
                }
            )
    return atomic_write_text(tasks_dir / f"{kind}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: 1.0 when the generator's exact scorer accepts the completion."""
    sample = Sample(doc["task"], doc["input"], doc["answer"], doc["target"])
    return {"score": float(task_named(doc["task"]).score(results[0], sample))}
