"""EB-Sampler (no official code): token for token against the PC-Sampler repository's implementation
(tests/fixtures/eb_sampler/, made by its generate.py), and the error budget's arithmetic."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from dllm_accel import generate, load_model
from dllm_accel.generation.rules.eb_sampler import entropy_bounded_index
from dllm_accel.paths import REPO_ROOT

CASES = json.loads((Path(__file__).parent / "fixtures" / "eb_sampler" / "llada.json").read_text())["cases"]


@cache
def trained():
    return load_model(REPO_ROOT / "checkpoints" / "tiny-llada", dtype=torch.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_the_reference_implementation(case):
    s = case["settings"]
    model = trained() if case["checkpoint"] == "trained" else tiny_model("llada")
    out = generate(
        model,
        torch.tensor(case["prompt_ids"]),
        gen_length=s["gen_length"],
        policy="eb_sampler",
        policy_options={"gamma": s["gamma"]},
        output_history=True,
    )
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    assert out.nfe == case["nfe"]
    assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))


def test_the_budget_counts_every_entropy_but_the_largest():
    entropy = torch.tensor([[0.3, 0.05, 9.0, 0.1, 0.2]])
    candidates = torch.tensor([[True, True, True, True, False]])
    # ascending 0.05, 0.1, 0.3, 9.0: spent 0, 0.05, 0.15, 0.45 -> gamma 0.2 takes three
    assert entropy_bounded_index(entropy, candidates, 0.2).tolist() == [[True, True, False, True, False]]
    assert entropy_bounded_index(entropy, candidates, 0.0).tolist() == [[False, True, False, False, False]]
    assert not entropy_bounded_index(entropy, torch.zeros_like(candidates), 1.0).any()
