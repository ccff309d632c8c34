"""Kernel launches per layer, eager vs ``compile=True``, on the tiny checkpoints.

Eager: ``dllm_accel.profiling.OpCounter`` over a vanilla generation (the count of issue 14's
table and ``experiments/sync_table.py``). Compiled: the calls in the wrapper inductor
generates for the dense trunk (``compiled_launches_per_layer``), per layer.

    python experiments/launch_counts.py --out results/bench/launches
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dllm_accel import generate, load_model
from dllm_accel.measure import environment
from dllm_accel.paths import tiny_checkpoint
from dllm_accel.profiling import OpCounter, compiled_launches_per_layer


def counts(family: str) -> dict:
    model = load_model(tiny_checkpoint(family), dtype=torch.float32)
    prompt = torch.arange(2 * 16).view(2, 16) + 10
    with OpCounter(model) as counter:
        generate(model, prompt, gen_length=8, steps=4)
    eager = counter.counts.launches_per_layer
    compiled = compiled_launches_per_layer(model, torch.arange(2 * 24).view(2, 24) + 10)
    return {"family": family, "eager_launches_per_layer": eager, "compiled_launches_per_layer": compiled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [counts(family) for family in ("llada", "dream")]
    lines = [
        "# Kernel launches per layer: eager vs compile=True (tiny checkpoints, CPU, fp32)",
        "",
        "| family | eager (OpCounter) | compiled (inductor wrapper calls) | compiled / eager |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["compiled_launches_per_layer"] / r["eager_launches_per_layer"]
        lines.append(f"| {r['family']} | {r['eager_launches_per_layer']:.1f} | {r['compiled_launches_per_layer']:.1f} | {ratio:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"rows": rows, "environment": environment(torch.device("cpu"), torch.float32)}
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
