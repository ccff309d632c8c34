"""PC-Sampler: token for token against the official ``generate_with_pc_sampler`` (tests/fixtures/pc_sampler/,
made by its generate.py with the committed tiny background corpus), and its score."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from dllm_accel import generate, load_model
from dllm_accel.generation.rules.pc_sampler import calibrated_scores
from dllm_accel.paths import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "pc_sampler"
CASES = json.loads((FIXTURES / "llada.json").read_text())["cases"]


@cache
def trained():
    return load_model(REPO_ROOT / "checkpoints" / "tiny-llada", dtype=torch.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_official(case):
    s = case["settings"]
    model = trained() if case["checkpoint"] == "trained" else tiny_model("llada")
    if case["rng_dependent"]:
        torch.manual_seed(case["torch_manual_seed"])
    out = generate(
        model,
        torch.tensor(case["prompt_ids"]),
        gen_length=s["gen_length"],
        steps=s["steps"],
        block_length=s["block_length"],
        temperature=s["temperature"],
        policy="pc_sampler",
        policy_options={"lambd": s["lambd"], "alpha": s["alpha"], "baseline": str(REPO_ROOT / s["baseline_name"])},
        output_history=True,
    )
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    assert out.nfe == case["nfe"]
    assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))


def test_common_tokens_and_late_positions_count_less():
    frequencies = torch.tensor([0.5, 1e-4], dtype=torch.float32)
    probability = torch.tensor([[0.9, 0.9, 0.9]])
    scores = calibrated_scores(probability, torch.tensor([[0, 1, 1]]), frequencies, lambd=0.25, alpha=10.0)
    assert scores[0, 1] > scores[0, 0]  # the rare token beats the common one at the same confidence
    assert scores[0, 1] > scores[0, 2]  # and an earlier position a later one
    clipped = calibrated_scores(probability, torch.tensor([[1, 1, 1]]), frequencies, lambd=0.0, alpha=1.0)
    assert torch.equal(clipped, torch.ones(1, 3))
