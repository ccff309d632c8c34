"""NFE, tokens per step and agreement with vanilla of every combination, on the tiny checkpoints.

The tiny checkpoints have random weights: the numbers describe mechanics (how many passes a
combination makes, how far its reuse moves the tokens), not quality. Every prompt runs alone
(batch 1), greedy, 64 tokens after a 16-token prompt, with the preset's own block length, one
token per step where the policy counts (steps = 64) and the EOS early exit off, so that every
position is compared. Two agreements are reported, over all generated positions:

- ``same decoding``: with vanilla passes decoded exactly as the row decodes (the strategy's own
  policy wrapper included), so it isolates the error of the reuse;
- ``vanilla 1/step``: with plain vanilla at one token per step (reuse and parallel decoding).

    python experiments/combinations_tiny.py --out results/combinations
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
import yaml

from dllm_accel import build_method, generate, load_model
from dllm_accel.methods.vanilla import Vanilla
from dllm_accel.paths import REPO_ROOT, tiny_checkpoint

CONF = REPO_ROOT / "conf" / "method"
BASE = {"gen_length": 64, "steps": 64, "eos_early_exit": False}
# thresholds low enough for random weights to commit in parallel; the engine's Dream score is a
# negative entropy (between -3 and 0 here, median -1.1)
LOW = {"threshold": {"llada": 0.5, "dream": 0.5}, "confidence_threshold": {"llada": 0.5, "dream": -1.0}}
ROWS = (
    # (row, preset, variant): variant "" = the preset as shipped, "low" = LOW thresholds,
    # "few_steps" = LOW and Dream's whole-sequence quota rule at gen_length / 32 steps (Fast-dLLM's Dream runs)
    ("vanilla + threshold (policy alone)", "fast_dllm_parallel", ""),
    ("vanilla + threshold (policy alone)", "fast_dllm_parallel", "low"),
    ("fast_dllm_dual (parent)", "fast_dllm_dual", ""),
    ("fast_dllm_dual (parent)", "fast_dllm_dual", "low"),
    ("sparse_dllm (parent)", "sparse_dllm", ""),
    ("combined_sparse_dllm_threshold", "combined_sparse_dllm_threshold", ""),
    ("combined_sparse_dllm_threshold", "combined_sparse_dllm_threshold", "low"),
    ("dllm_cache (parent)", "dllm_cache", ""),
    ("combined_dllm_cache_threshold", "combined_dllm_cache_threshold", ""),
    ("combined_dllm_cache_threshold", "combined_dllm_cache_threshold", "low"),
    ("combined_dllm_cache_threshold", "combined_dllm_cache_threshold", "few_steps"),
    ("dyllm (parent)", "dyllm", ""),
    ("combined_dyllm_threshold", "combined_dyllm_threshold", ""),
    ("combined_dyllm_threshold", "combined_dyllm_threshold", "low"),
    ("combined_dyllm_dual", "combined_dyllm_dual", ""),
    ("combined_dyllm_dual", "combined_dyllm_dual", "low"),
)


PREAMBLE = """# Combinations on the tiny checkpoints (random weights: mechanics, not quality)

Written by `experiments/combinations_tiny.py`: 4 random 16-token prompts, batch 1, greedy, 64
tokens, each preset's block length, steps 64 unless stated, EOS early exit off. NFE is the mean
per prompt; tokens/step = committed tokens / NFE. Agreement is over all generated positions:
*same decoding* against vanilla passes decoded exactly as the row decodes (isolates the reuse
error), *vanilla 1/step* against plain vanilla at one token per step. Threshold 0.9 is the
presets' value; 0.5 (Dream engine: -1.0, a negative entropy) lets these unconfident models
commit in parallel. Dream's whole-sequence quota rule (vanilla + threshold, dLLM-Cache +
threshold) commits gen_length / steps per step, so it decodes in parallel only with few steps.

"""


class DenseWith(Vanilla):
    """Vanilla passes decoded as ``parent`` decodes."""

    def __init__(self, parent) -> None:
        super().__init__()
        self.parent = parent

    def decoding_policy(self, policy, canvas):
        return self.parent.decoding_policy(policy, canvas)


def row_settings(preset: dict, variant: str, family: str) -> dict:
    sampler = {**preset.get("sampler", {}), **BASE}
    if variant:
        for key, values in LOW.items():
            if key in sampler:
                sampler[key] = values[family]
    if variant == "few_steps" and family == "dream":
        sampler["steps"] = sampler["gen_length"] // 32
    return sampler


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).double().mean())


def run_row(
    model, family: str, prompts: list[torch.Tensor], vanillas: list[torch.Tensor], preset: dict, variant: str
) -> dict:
    settings = row_settings(preset, variant, family)
    nfe = committed = 0
    same = plain = 0.0
    for prompt, vanilla in zip(prompts, vanillas, strict=True):
        strategy = build_method(preset["name"], **preset["options"])
        out = generate(model, prompt, method=strategy, **settings)
        generated = out.sequences[:, prompt.shape[1] :]
        reference = generate(
            model, prompt, method=DenseWith(build_method(preset["name"], **preset["options"])), **settings
        )
        nfe += out.nfe
        committed += int((generated != model.spec.tokens.mask).sum())
        same += agreement(generated, reference.sequences[:, prompt.shape[1] :])
        plain += agreement(generated, vanilla)
    tau = settings.get("confidence_threshold", settings.get("threshold"))
    return {
        "nfe": nfe / len(prompts),
        "tokens_per_step": committed / nfe,
        "agree_same_decoding": same / len(prompts),
        "agree_vanilla_1_per_step": plain / len(prompts),
        "threshold": "" if tau is None else tau,
        "steps": settings["steps"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | row | threshold | steps | NFE | tokens/step | agreement, same decoding | agreement, vanilla 1/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['row']} | {r['threshold']} | {r['steps']} | {r['nfe']:.1f} | "
            f"{r['tokens_per_step']:.2f} | {r['agree_same_decoding']:.3f} | {r['agree_vanilla_1_per_step']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "combinations")
    parser.add_argument("--prompts", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1600, (1, 16), generator=generator) for _ in range(args.prompts)]
    rows = []
    for family in ("llada", "dream"):
        model = load_model(tiny_checkpoint(family), dtype=torch.float32)
        vanillas = [
            generate(model, p, gen_length=BASE["gen_length"], steps=BASE["steps"], block_length=32).sequences[
                :, p.shape[1] :
            ]
            for p in prompts
        ]
        for label, name, variant in ROWS:
            if variant == "few_steps" and family != "dream":
                continue
            preset = yaml.safe_load((CONF / f"{name}.yaml").read_text())
            rows.append({"family": family, "row": label, **run_row(model, family, prompts, vanillas, preset, variant)})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "tiny_checkpoints.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "tiny_checkpoints.md").write_text(PREAMBLE + markdown(rows))


if __name__ == "__main__":
    main()
