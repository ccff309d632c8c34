"""WINO: token for token against the official ``decoding_wino`` (tests/fixtures/wino/, made by its
generate.py) on llada-tiny and the trained tiny LLaDA, re-masking included; and what it refuses."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from dllm_accel import build_method, generate, load_model
from dllm_accel.paths import REPO_ROOT

CASES = json.loads((Path(__file__).parent / "fixtures" / "wino" / "llada.json").read_text())["cases"]


@cache
def trained():
    return load_model(REPO_ROOT / "checkpoints" / "tiny-llada", dtype=torch.float32)


def run(case: dict, method="vanilla"):
    s = case["settings"]
    model = trained() if case["checkpoint"] == "trained" else tiny_model("llada")
    if case["rng_dependent"]:
        torch.manual_seed(case["torch_manual_seed"])
    return generate(
        model,
        torch.tensor(case["prompt_ids"]),
        method=method,
        gen_length=s["gen_length"],
        block_length=s["block_length"],
        temperature=s["temperature"],
        policy="wino",
        policy_options={"threshold": s["threshold"], "threshold_back": s["threshold_back"]},
        output_history=True,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_official(case):
    out = run(case)
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    assert out.nfe == case["nfe"]
    assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))


def test_the_cases_exercise_re_masking():
    assert sum(sum(row) for c in CASES for row in c["remask_counts_per_step"]) > 100


def test_padded_rows_equal_batch_one():
    """The official code is batch 1; here each row decides alone, so a left-padded batch equals its rows."""
    model = tiny_model("llada")
    prompts = torch.randint(0, 1600, (2, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    settings = dict(
        gen_length=16, block_length=8, policy="wino", policy_options={"threshold": 0.3, "threshold_back": 0.7}
    )
    both = generate(model, prompts, attention_mask=mask, **settings).sequences
    for row in range(2):
        alone = generate(model, prompts[row : row + 1, int((mask[row] == 0).sum()) :], **settings).sequences
        assert torch.equal(both[row, 10:], alone[0, -16:])


@pytest.mark.parametrize(
    ("family", "method", "message"),
    [
        ("dream", "vanilla", "policy 'wino' is defined for sampler llada, got 'dream'"),
        ("llada", build_method("fast_dllm", mode="prefix"), "policy 'wino' cannot decode from method 'fast_dllm'"),
    ],
)
def test_refusals_are_named(family, method, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(tiny_model(family), torch.zeros(1, 4, dtype=torch.long), method=method, gen_length=8, policy="wino")
