"""KLASS: token for token against the official LLaDA and Dream samplers (tests/fixtures/klass/, made by
its generate.py), and the rule's readiness test."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from dllm_accel import generate, load_model
from dllm_accel.generation.rules.klass import kl_divergence
from dllm_accel.paths import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "klass"


def cases(family: str) -> list[dict]:
    return json.loads((FIXTURES / f"{family}.json").read_text())["cases"]


@cache
def trained():
    return load_model(REPO_ROOT / "checkpoints" / "tiny-llada", dtype=torch.float32)


def options(s: dict) -> dict:
    names = ("conf_threshold", "kl_threshold", "kl_history_length", "unmask_strategy")
    return {"policy": "klass", "policy_options": {n: s[n] for n in names}}


def assert_official(out, case: dict) -> None:
    assert not case["official_overwrote_non_masks"]
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    assert out.nfe == case["nfe"]
    assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))


@pytest.mark.parametrize("case", cases("llada"), ids=lambda c: c["name"])
def test_llada_matches_official(case):
    s = case["settings"]
    model = trained() if case["checkpoint"] == "trained" else tiny_model("llada")
    out = generate(
        model,
        torch.tensor(case["prompt_ids"]),
        gen_length=s["gen_length"],
        steps=s["steps"],
        block_length=s["block_length"],
        output_history=True,
        **options(s),
    )
    assert_official(out, case)


@pytest.mark.parametrize("case", cases("dream"), ids=lambda c: c["name"])
def test_dream_matches_official(case):
    s = case["settings"]
    out = generate(
        tiny_model("dream"),
        torch.tensor(case["prompt_ids"]),
        max_new_tokens=s["max_new_tokens"],
        steps=s["steps"],
        output_history=True,
        **options(s),
    )
    assert_official(out, case)


def test_the_cases_commit_in_parallel():
    parallel = [c for f in ("llada", "dream") for c in cases(f) if any(r[0] > 1 for r in c["transfer_counts_per_step"])]
    assert len(parallel) >= 8


def test_kl_is_zero_for_equal_distributions_and_large_against_nothing():
    p = torch.softmax(torch.randn(3, 50, dtype=torch.float64), dim=-1)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(3, dtype=torch.float64))
    assert bool((kl_divergence(p, torch.zeros_like(p)) > 20).all())
