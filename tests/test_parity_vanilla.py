"""Token-exact parity with the official LLaDA and Dream code on the tiny checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches_case, load_cases, tiny_model
from safetensors.torch import load_file

from dllm_accel import generate
from dllm_accel.paths import fixtures_dir

FAMILIES = ("llada", "dream")


def _forward_cases():
    return [(fam, case) for fam in FAMILIES for case in load_cases(f"{fam}_forward.json")]


@pytest.mark.parametrize(("family", "case"), _forward_cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_forward_logits_and_hidden_states(family, case):
    model = tiny_model(family)
    expected = load_file(fixtures_dir() / "cases" / f"{family}_forward.safetensors")
    mask = case.get("attention_mask") or case.get("attention_mask_2d")
    positions = case.get("position_ids")
    with torch.no_grad():
        logits, hidden = model(
            torch.tensor(case["input_ids"]),
            positions=None if positions is None else torch.tensor(positions),
            key_mask=None if mask is None else torch.tensor(mask).bool(),
            output_hidden_states=True,
        )
    valid = torch.tensor(case["valid_positions"]).bool()
    reference = expected[case["logits_key"]]
    assert (logits - reference).abs()[valid].max() <= 1e-3
    assert torch.equal(logits.argmax(-1)[valid], reference.argmax(-1)[valid])
    for i, key in enumerate(case["hidden_states_keys"]):
        assert (hidden[i] - expected[key]).abs().max() <= 1e-4, key


def _generate_cases():
    return [(fam, case) for fam in FAMILIES for case in load_cases(f"{fam}_generate.json")]


@pytest.mark.parametrize(("family", "case"), _generate_cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_generation_matches_official(family, case):
    model = tiny_model(family)
    prompt = torch.tensor(case["prompt_ids"])
    mask = None if case["attention_mask"] is None else torch.tensor(case["attention_mask"])
    if case.get("rng_dependent"):
        torch.manual_seed(case["torch_manual_seed"])
    out = generate(model, prompt, mask, output_history=True, **case["settings"])
    assert_matches_case(out, case, prompt, model.spec.tokens.mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_reproduce_alone(family):
    """Each row of a deterministic batched case equals its batch-1 run."""
    case = next(c for c in load_cases(f"{family}_generate.json") if not c.get("rng_dependent") and c["attention_mask"] is None)
    model = tiny_model(family)
    prompt = torch.tensor(case["prompt_ids"])
    for row in range(prompt.shape[0]):
        out = generate(model, prompt[row : row + 1], **case["settings"])
        assert out.sequences[0].tolist() == case["expected_output_ids"][row]
