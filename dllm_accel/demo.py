"""``make demo``: every method config on both tiny checkpoints, on CPU, in seconds.

Prints, per run, the generated ids, the number of forward evaluations (NFE), wall time
and generated tokens per second. Exits non-zero if any run fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import yaml

from .api import generate
from .models import load_model
from .paths import REPO_ROOT, fixtures_dir, tiny_checkpoint

PROMPTS = {
    "llada": [1664, 81, 914, 264, 73, 428, 1336, 653, 343, 388, 793, 591, 1465, 203, 315, 631],
    "dream": [1628, 1003, 625, 1224, 543, 1352, 309, 991, 1626, 511, 827, 241, 338, 846, 452, 441],
}
SAMPLER = {"gen_length": 32, "steps": 32, "block_length": 8}


def method_configs(directory: Path = REPO_ROOT / "conf" / "method") -> list[dict]:
    """Every method preset under conf/method, by file name."""
    configs = []
    for path in sorted(directory.glob("*.yaml")):
        entry = yaml.safe_load(path.read_text())
        entry["preset"] = path.stem
        configs.append(entry)
    return configs


def run_one(model, family: str, entry: dict) -> str:
    settings = {**SAMPLER, **(entry.get("sampler") or {}), **(entry.get("options") or {})}
    prompt = torch.tensor([PROMPTS[family]])
    start = time.perf_counter()
    out = generate(model, prompt, method=entry["name"], **settings)
    seconds = time.perf_counter() - start
    generated = out.sequences[0, prompt.shape[1] :].tolist()
    rate = len(generated) / seconds
    return f"{family:6s} {entry['preset']:24s} nfe={out.nfe:3d} time={seconds * 1000:7.1f} ms  {rate:7.1f} tok/s  ids={generated}"


def main() -> int:
    if not tiny_checkpoint("llada").is_dir():
        print(f"parity checkpoints not found in {fixtures_dir()} (they come with shared/, see README): skipped")
        return 0
    torch.manual_seed(0)
    failures = 0
    for family in ("llada", "dream"):
        model = load_model(tiny_checkpoint(family), dtype=torch.float32)
        generate(model, torch.tensor([PROMPTS[family]]), gen_length=8, steps=8)  # warm-up, not timed
        for entry in method_configs():
            try:
                print(run_one(model, family, entry), flush=True)
            except Exception as err:  # report every failing preset, then fail the demo
                failures += 1
                print(f"{family:6s} {entry['preset']:24s} FAILED: {type(err).__name__}: {err}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
