"""CPU time of two checkouts of this engine side by side: runs alternated, outputs compared.

Each run is its own process whose ``PYTHONPATH`` puts one checkout's ``dllm_accel`` first
(``--old`` and ``--new``, e.g. a ``git worktree`` of the commit before a change and the
working tree); pairs alternate which side goes first (ABBA...). Every run loads the same
seeded random weights, warms up at the timed shape and times one ``generate``; the sequences
of both sides must be identical. Printed per preset: median seconds of each side, the median
of the paired ratios old/new, and whether the outputs agree.

    git worktree add /tmp/engine-old <commit>
    python experiments/bench_engine_ab.py --old /tmp/engine-old --model mid --out results/bench/engine_ab_mid.md

``--model tiny``: the tiny parity checkpoints (per-step overhead dominates). ``--model mid``:
random weights with d_model 512, 8 layers and the family's full vocabulary (LLaDA 126464,
Dream 152064), where the head over unread rows is a large share of a step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MID = {
    "llada": {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8, "mlp_hidden_size": 1376, "embedding_size": 126464, "vocab_size": 126464},
    "dream": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 1376, "vocab_size": 152064},
}
PRESETS = ("vanilla", "fast_dllm_prefix", "fast_dllm_dual", "fast_dllm_parallel", "dllm_cache", "sparse_dllm")


def worker(args: argparse.Namespace) -> None:
    """One timed run in this process (``dllm_accel`` from whichever checkout PYTHONPATH names)."""
    import torch
    import yaml

    from dllm_accel import generate, load_model
    from dllm_accel.paths import tiny_checkpoint

    torch.set_num_threads(1)
    checkpoint = tiny_checkpoint(args.family)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "mid":
            config = json.loads((checkpoint / "config.json").read_text())
            config.update(MID[args.family])
            (Path(tmp) / "config.json").write_text(json.dumps(config))
            model = load_model(tmp, dtype=torch.float32, random_weights=True, seed=0)
        else:
            model = load_model(checkpoint, dtype=torch.float32)
    entry = yaml.safe_load((REPO / "conf" / "method" / f"{args.preset}.yaml").read_text())
    settings = {"block_length": 32, **(entry.get("sampler") or {}), **(entry.get("options") or {})}
    settings.update(gen_length=args.gen, steps=args.gen)
    prompt = torch.randint(10, model.spec.tokens.eos - 1, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    generate(model, prompt, method=entry["name"], **settings)  # warm-up at the timed shape
    start = time.perf_counter()
    out = generate(model, prompt, method=entry["name"], **settings)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(out.sequences.numpy().tobytes()).hexdigest()[:16]
    print(json.dumps({"seconds": seconds, "nfe": out.nfe, "digest": digest}))


def run(checkout: Path, args: argparse.Namespace, family: str, preset: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--family", family, "--preset", preset, "--model", args.model]
    command += ["--gen", str(args.gen), "--prompt", str(args.prompt)]
    env = {**os.environ, "PYTHONPATH": str(checkout), "DLLM_ACCEL_SHARED": str(args.shared)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="checkout of the baseline commit")
    parser.add_argument("--new", type=Path, default=REPO)
    parser.add_argument("--model", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--families", nargs="+", default=["llada", "dream"])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.old is None:
        parser.error("--old is required (a checkout of the baseline commit)")
    lines = [
        f"model {args.model}, prompt {args.prompt}, gen {args.gen} (steps = gen, block 32), batch 1, fp32, 1 thread; "
        f"{args.pairs} alternated pairs per row",
        "",
        "| family | preset | NFE | old s (median) | new s (median) | old/new (median of pairs) | same output |",
        "|---|---|---|---|---|---|---|",
    ]
    for family in args.families:
        for preset in args.presets:
            old, new = [], []
            for pair in range(args.pairs):
                sides = [(args.old, old), (args.new, new)]
                for checkout, into in sides if pair % 2 == 0 else sides[::-1]:
                    into.append(run(checkout, args, family, preset))
            ratios = [a["seconds"] / b["seconds"] for a, b in zip(old, new, strict=True)]
            same = all(a["digest"] == b["digest"] for a, b in zip(old, new, strict=True))
            lines.append(
                f"| {family} | {preset} | {new[0]['nfe']} | {statistics.median(r['seconds'] for r in old):.3f} | "
                f"{statistics.median(r['seconds'] for r in new):.3f} | {statistics.median(ratios):.2f} | {'yes' if same else 'NO'} |"
            )
            print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
