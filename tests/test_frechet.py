"""Fast-dLLM++ Frechet profile decoding: token for token against the official code's cases
(tests/fixtures/frechet/, made by its generate.py), and the rule's own arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from dllm_accel import build_method, generate
from dllm_accel.generation.rules.frechet import frechet_index

CASES = Path(__file__).parent / "fixtures" / "frechet"
LLADA_METHODS = {
    "generate": ("vanilla", {}),
    "generate_with_prefix_cache": ("fast_dllm", {"mode": "prefix"}),
    "generate_with_dual_cache": ("fast_dllm", {"mode": "dual"}),
}


def cases(family: str) -> list[dict]:
    return json.loads((CASES / f"{family}.json").read_text())["cases"]


def assert_official(out, case: dict) -> None:
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    assert out.nfe == case["nfe"]
    assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))


@pytest.mark.parametrize("case", cases("llada"), ids=lambda c: c["name"])
def test_llada_matches_official(case):
    s = case["settings"]
    name, options = LLADA_METHODS[case["sampler_function"]]
    out = generate(
        tiny_model("llada"),
        torch.tensor(case["prompt_ids"]),
        method=build_method(name, **options),
        gen_length=s["gen_length"],
        steps=s["steps"],
        block_length=s["block_length"],
        confidence_dtype="float64",
        policy="frechet",
        policy_options={"margin": s["frechet_margin"]},
        output_history=True,
    )
    assert_official(out, case)


@pytest.mark.parametrize("case", cases("dream"), ids=lambda c: c["name"])
def test_dream_matches_official(case):
    s = case["settings"]
    out = generate(
        tiny_model("dream"),
        torch.tensor(case["prompt_ids"]),
        method=build_method("fast_dllm", mode="dual" if s["dual_cache"] else "prefix"),
        max_new_tokens=s["max_new_tokens"],
        steps=s["steps"],
        block_length=s["block_length"],
        policy="frechet",
        policy_options={"margin": s["frechet_margin"]},
        output_history=True,
    )
    assert_official(out, case)


def test_equal_confidences_reduce_to_the_factor_rule():
    """All c = 1 - eps: G_n = 1 - (n + 1) eps, so n passes iff (n + 1) eps < 1 - margin (factor f = 1 - margin)."""
    eps = 0.1
    confidence = torch.full((1, 12), 1 - eps, dtype=torch.float64)
    chosen = frechet_index(confidence, torch.ones(1, 12, dtype=torch.bool), margin=0.25)
    assert int(chosen.sum()) == 6  # (n + 1) * 0.1 < 0.75 for n <= 6


def test_the_count_uses_the_whole_profile_and_never_non_candidates():
    confidence = torch.tensor([[0.99, 0.2, 0.97, 0.95, -torch.inf]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, True, False]])
    # G_2 = 0.99 + 0.97 - 1 - 0.03 = 0.93; G_3 = 2.91 - 2 - 0.05 = 0.86; G_4 = 3.11 - 3 - 0.8 < 0
    assert frechet_index(confidence, candidates, 0.5).tolist() == [[True, False, True, True, False]]
    # a row without candidates commits nothing, although rank 1 always passes
    assert not frechet_index(confidence, torch.zeros_like(candidates), 0.0).any()
