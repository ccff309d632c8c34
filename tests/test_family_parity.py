"""Forward and generation parity with the official code of the newer families (tests/fixtures/<name>/).

The checkpoints come from ``experiments/make_tiny_checkpoints.py``; the cases from
``experiments/make_family_cases.py``, which ran the official modeling and sampling code.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dllm_accel import generate, load_model
from dllm_accel.methods import build_method

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINTS = sorted(p.parent.name for p in FIXTURES.glob("*/cases.json"))


@cache
def family_model(name: str):
    return load_model(FIXTURES / name, dtype=torch.float32)


@cache
def family_cases(name: str) -> dict:
    return json.loads((FIXTURES / name / "cases.json").read_text())


def block_causal_mask(length: int, block: int) -> torch.Tensor:
    blocks = torch.arange(length) // block
    return (blocks[:, None] >= blocks[None, :])[None, None]


def _cases(kind: str) -> list[tuple[str, dict]]:
    return [(name, case) for name in CHECKPOINTS for case in family_cases(name)[kind]]


def _ids(value):
    return value if isinstance(value, str) else value["name"]


def test_every_checkpoint_has_cases():
    written = {p.parent.name for p in FIXTURES.glob("*/config.json")}
    assert written and written == set(CHECKPOINTS)


@pytest.mark.parametrize(("name", "case"), _cases("forward"), ids=_ids)
def test_forward_logits_match_official(name, case):
    model = family_model(name)
    ids = torch.tensor(case["input_ids"])
    if case["block_causal_block"]:
        mask = block_causal_mask(ids.shape[1], case["block_causal_block"])
    else:
        mask = None if case["attention_mask_2d"] is None else torch.tensor(case["attention_mask_2d"]).bool()
    with torch.no_grad():
        logits, _ = model(ids, key_mask=mask)
    reference = load_file(FIXTURES / name / "forward.safetensors")[case["logits_key"]]
    valid = torch.tensor(case["valid_positions"])
    assert (logits - reference).abs()[valid].max() <= 1e-3
    assert torch.equal(logits.argmax(-1)[valid], reference.argmax(-1)[valid])


@pytest.mark.parametrize(("name", "case"), [c for c in _cases("generate") if "expected_output_ids" in c[1]], ids=_ids)
def test_generation_matches_official(name, case):
    model = family_model(name)
    prompt = torch.tensor(case["prompt_ids"])
    if case.get("rng_dependent"):
        torch.manual_seed(case["torch_manual_seed"])
    mask = case.get("attention_mask")
    mask = None if mask is None else torch.tensor(mask)
    out = generate(model, prompt, mask, output_history="trajectory" in case, **case["settings"])
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    if "trajectory" in case:
        assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))


@pytest.mark.parametrize(
    ("name", "case"), [c for c in _cases("generate") if "expected_generated_ids" in c[1]], ids=_ids
)
def test_block_diffusion_matches_official(name, case):
    """LLaDA2.x: the official ``generate`` returns the tokens after the prompt up to the first EOS."""
    model = family_model(name)
    prompt = torch.tensor(case["prompt_ids"])
    out = generate(model, prompt, **case["settings"])
    generated = out.sequences[0, prompt.shape[1] :]
    eos = (generated == case["settings"].get("eos_id", model.spec.tokens.eos)).nonzero()
    if len(eos):
        generated = generated[: eos[0, 0] + 1]
    assert generated.tolist() == case["expected_generated_ids"][0]
    if "nfe" in case:
        assert out.nfe == case["nfe"]


def _non_vanilla_methods() -> list[str]:
    from dllm_accel.methods import available_methods

    return [m for m in available_methods() if m != "vanilla"]


@pytest.mark.parametrize("method", _non_vanilla_methods())
def test_methods_other_than_the_block_sampler_refuse_block_causal_models(method):
    """Each method fails on LLaDA2 before any forward, saying why."""
    model = family_model("llada2-mini-tiny")
    with pytest.raises(ValueError, match=rf"method '{method}' cannot run on block-causal llada2: \S"):
        generate(model, torch.tensor([[5, 6, 7]]), method=method, gen_length=8, block_length=8)


def test_padded_prompts_and_unknown_settings_are_refused():
    model = family_model("llada2-mini-tiny")
    prompt = torch.tensor([[5, 6, 7], [0, 8, 9]])
    with pytest.raises(ValueError, match="unpadded prompts"):
        generate(model, prompt, torch.tensor([[1, 1, 1], [0, 1, 1]]), gen_length=8, block_length=8)
    with pytest.raises(ValueError, match="unknown block-diffusion setting 'alg'"):
        generate(model, prompt, gen_length=8, block_length=8, alg="maskgit_plus")
    # other samplers' options at their defaults (what the evaluator passes) are ignored
    out = generate(model, prompt, gen_length=8, block_length=8, alg="entropy", remasking="low_confidence")
    assert out.sequences.shape == (2, 11)


@pytest.mark.parametrize("method", ["vanilla", *_non_vanilla_methods()])
def test_every_method_runs_on_llada_moe(method):
    """LLaDA-MoE is bidirectional: every method composes the MoE block's primitives and fills every mask."""
    import yaml

    preset = yaml.safe_load((Path(__file__).parents[1] / "conf" / "method" / f"{method}.yaml").read_text())
    model = family_model("llada-moe-tiny")
    prompt = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(0))
    strategy = build_method(method, **(preset.get("options") or {}))
    settings = {**(preset.get("sampler") or {}), "gen_length": 16, "steps": 16, "block_length": 8}
    out = generate(model, prompt, method=strategy, **settings)
    assert out.sequences.shape == (2, 28) and not (out.sequences == model.spec.tokens.mask).any()


@pytest.mark.parametrize(
    ("method", "options"),
    [("fast_dllm", {"mode": "none"}), ("dllm_cache", {"prompt_interval_steps": 1, "gen_interval_steps": 1})],
)
def test_reuse_switched_off_equals_vanilla_on_llada_moe(method, options):
    model = family_model("llada-moe-tiny")
    prompt = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(1))
    settings = {"gen_length": 16, "steps": 16, "block_length": 8}
    vanilla = generate(model, prompt, **settings)
    assert torch.equal(generate(model, prompt, method=method, **options, **settings).sequences, vanilla.sequences)


@pytest.mark.parametrize(("name", "extra"), [("llada2-mini-tiny", {}), ("llada21-mini-tiny", {"max_post_steps": 3})])
def test_block_diffusion_rows_equal_their_batch_1_runs(name, extra):
    model = family_model(name)
    prompts = torch.randint(0, 900, (3, 13), generator=torch.Generator().manual_seed(2))
    settings = {"gen_length": 24, "block_length": 8, "steps": 8, "threshold": 0.3, **extra}
    batched = generate(model, prompts, **settings)
    for row in range(3):
        alone = generate(model, prompts[row : row + 1], **settings)
        assert torch.equal(batched.sequences[row], alone.sequences[0])
