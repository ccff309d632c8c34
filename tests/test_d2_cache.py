"""d2Cache and certainty-prior decoding: token-exact parity with the official code, and invariants."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_matches_case, tiny_model

from dllm_accel import build_method, generate
from dllm_accel.generation.rules.certainty_prior import certainty_density

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "d2_cache"
FAMILIES = ("llada", "dream")


def _cases():
    out = []
    for family in FAMILIES:
        path = FIXTURES / f"{family}_d2_cache.json"
        out += [(family, case) for case in json.loads(path.read_text())["cases"]]
    return out


def _settings(case: dict) -> dict:
    s = case["settings"]
    return {
        "gen_length": s["gen_length"],
        "steps": s["gen_length"],
        "block_length": s["block_length"],
        "alg": s["alg"],
        "temperature": s["temperature"],
        "top_p": s["top_p"],
        "policy": "certainty_prior",
        "policy_options": {"sigma": s["sigma"], "num_transfer_tokens": s["num_transfer_tokens"]},
    }


@pytest.mark.parametrize(("family", "case"), _cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_matches_official(family, case):
    strategy = build_method("d2_cache", **case["cache_args"], record_rows=True)
    prompt = torch.tensor(case["prompt_ids"])
    out = generate(tiny_model(family), prompt, method=strategy, output_history=True, **_settings(case))
    assert_matches_case(out, case, prompt, tiny_model(family).spec.tokens.mask)
    # every pass computed exactly the rows the official pass computed
    assert strategy.widths == case["input_widths"]
    assert strategy.computed_rows == case["computed_rows"]


@pytest.mark.parametrize("family", FAMILIES)
def test_certainty_prior_on_vanilla_decodes_left_to_right_sooner(family):
    """The prior favours masks next to decoded text: the first commit of a fresh response is its first position."""
    prompt = torch.randint(0, 1600, (1, 8), generator=torch.Generator().manual_seed(2))
    settings = {"gen_length": 12, "steps": 12, "alg": "maskgit_plus", "output_history": True}
    out = generate(
        tiny_model(family),
        prompt,
        method="vanilla",
        policy="certainty_prior",
        policy_options={"sigma": 0.5},
        **settings,
    )
    first = (out.trajectory[0][0, 8:] != tiny_model(family).spec.tokens.mask).nonzero().flatten().tolist()
    assert first == [0]


def test_certainty_density_is_high_beside_decoded_text_and_falls_off():
    """Left of the region counts as decoded; right of it does not while the last position is a mask."""
    decoded = torch.tensor([[True] * 4 + [False] * 8])
    density = certainty_density(decoded, sigma=2.0)[0]
    assert density[0] > 0.9 and density[-1] < 0.1
    assert torch.all(density[:-1] >= density[1:])
    assert certainty_density(torch.ones(1, 12, dtype=torch.bool), sigma=2.0).min() > 0.999


def test_d2_cache_needs_the_certainty_rule():
    prompt = torch.randint(0, 1600, (1, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=re.escape("decode it with policy='certainty_prior'")):
        generate(tiny_model("llada"), prompt, method="d2_cache", gen_length=8, steps=8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rollout_p": 1.5}, "d2_cache rollout_p=1.5 must be a number in [0, 1]"),
        ({"current_k": 0}, "d2_cache current_k=0 must be an integer >= 1"),
        ({"sigma": 0}, "d2_cache sigma=0 must be a positive number"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_method("d2_cache", **options)
