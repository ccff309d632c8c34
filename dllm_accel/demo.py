"""``make demo``: every method config on both tiny checkpoints, on CPU, in seconds.

Prints, per preset, the generated ids, the number of forward evaluations (NFE) and its
speed. Speed on a shared CPU is noisy and drifts, so each preset is timed ``REPEATS``
times, interleaved (round r runs every preset once, each round in a rotated order), and
the table shows the median with the spread (min-max as a share of the median). Exits
non-zero if any run fails or a preset's repeats disagree.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from .api import generate
from .measure import interleaved, spread
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


REPEATS = 5


def run_once(model, family: str, entry: dict) -> tuple[list[int], int, float]:
    """Generated ids, NFE and wall seconds of one run."""
    settings = {**SAMPLER, **(entry.get("sampler") or {}), **(entry.get("options") or {})}
    prompt = torch.tensor([PROMPTS[family]])
    torch.manual_seed(0)
    start = time.perf_counter()
    out = generate(model, prompt, method=entry["name"], **settings)
    seconds = time.perf_counter() - start
    return out.sequences[0, prompt.shape[1] :].tolist(), out.nfe, seconds


def not_applicable(entry: dict, family: str, spec=None) -> str | None:
    """Why a preset does not run on a family (its decoding rule is defined for other samplers, or its
    method refuses models of ``spec``, e.g. dKV-Cache's Dream-only pd variant), or None."""
    from .generation.rules import rule_class
    from .methods import build_method

    policy = (entry.get("sampler") or {}).get("policy")
    if policy and family not in rule_class(policy).samplers:
        return f"not run: decoding rule {policy!r} is defined for sampler {' / '.join(rule_class(policy).samplers)}"
    if spec is not None:
        refusal = build_method(entry["name"], **(entry.get("options") or {})).model_refusal(spec)
        if refusal is not None:
            return f"not run: {refusal}"
    return None


def interleaved_presets(model, family: str, entries: list[dict], repeats: int = REPEATS) -> dict[str, dict | str]:
    """Per preset: ids, NFE and every timed run's seconds (``measure.interleaved``), or the error that stopped it."""
    first: dict[str, dict] = {}

    def runner(entry: dict):
        def run() -> float:
            ids, nfe, seconds = run_once(model, family, entry)
            seen = first.setdefault(entry["preset"], {"ids": ids, "nfe": nfe})
            if seen["ids"] != ids:
                raise RuntimeError("repeated runs generated different ids")
            return seconds

        return run

    timed = interleaved({entry["preset"]: runner(entry) for entry in entries}, repeats)
    return {name: t if isinstance(t, str) else first[name] | {"seconds": t} for name, t in timed.items()}


def row(family: str, preset: str, result: dict | str) -> str:
    if isinstance(result, str):
        return f"{family:6s} {preset:32s} {result}"
    times = result["seconds"]
    median = statistics.median(times)
    rate = len(result["ids"]) / median
    return (
        f"{family:6s} {preset:32s} nfe={result['nfe']:3d} median={median * 1000:7.1f} ms "
        f"(spread {spread(times) * 100:3.0f}%)  {rate:7.1f} tok/s  ids={result['ids']}"
    )


def main() -> int:
    if not tiny_checkpoint("llada").is_dir():
        print(f"parity checkpoints not found in {fixtures_dir()} (they come with shared/, see README): skipped")
        return 0
    torch.set_num_threads(1)  # the tiny models gain nothing from threads; oversubscribed cores distort timings
    entries = method_configs()
    print(
        f"time: median of {REPEATS} interleaved runs per preset; spread = (max - min) / median; "
        f"tok/s = generated positions / median time (CPU threads: {torch.get_num_threads()})",
        flush=True,
    )
    failures = 0
    for family in ("llada", "dream"):
        model = load_model(tiny_checkpoint(family), dtype=torch.float32)
        generate(model, torch.tensor([PROMPTS[family]]), gen_length=8, steps=8)  # warm-up, not timed
        skipped = {e["preset"]: reason for e in entries if (reason := not_applicable(e, family, model.spec))}
        runnable = [e for e in entries if e["preset"] not in skipped]
        for preset, result in interleaved_presets(model, family, runnable).items():
            failures += isinstance(result, str)
            print(row(family, preset, result), flush=True)
        for preset, reason in skipped.items():
            print(f"{family:6s} {preset:32s} {reason}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
