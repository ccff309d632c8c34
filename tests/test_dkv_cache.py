"""dKV-Cache: token-exact parity with the official code, and what each option promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_matches_case, tiny_model

from dllm_accel import build_method, generate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dkv_cache"
FAMILIES = ("llada", "dream")
# (family, fixture file): decode on both families, Dream prefill, Dream pd
DOCUMENTS = (("llada", "llada_dkv_cache"), ("dream", "dream_dkv_cache"), ("dream", "dream_dkv_cache_pd"))
DREAM_VARIANTS = {"decoded": "decode", "prefill": "prefill", "pd": "pd"}


def _load(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["cases"]


def _cases():
    return [(family, case) for family, name in DOCUMENTS for case in _load(name)]


def _strategy(family: str, case: dict):
    s = case["settings"]
    if family == "llada":
        return build_method("dkv_cache", refresh_interval=s["cache_reloading_step"])
    variant = DREAM_VARIANTS[s["cache_type"]]
    options = {"variant": variant, "shift_type": s["shift_type"]}
    if variant != "prefill":
        options["refresh_interval"] = s["cache_steps"]
    return build_method("dkv_cache", **options)


def _settings(family: str, case: dict) -> dict:
    s = case["settings"]
    if family == "llada":
        # the official sampler scores in float64 and passes no attention mask to the model
        names = ("steps", "gen_length", "block_length", "temperature", "remasking", "mask_id")
        return {**{k: s[k] for k in names}, "confidence_dtype": "float64", "legacy_ignore_attention_mask": True}
    # the official call leaves top_k unset, so Dream's generation config takes the model config's 50
    names = ("max_new_tokens", "steps", "temperature", "alg", "alg_temp")
    return {**{k: s[k] for k in names}, "top_k": case["effective_top_k"], "top_p": case["effective_top_p"]}


def _run(family: str, case: dict, strategy, prompt: torch.Tensor, mask: torch.Tensor | None):
    return generate(tiny_model(family), prompt, mask, method=strategy, output_history=True, **_settings(family, case))


@pytest.mark.parametrize(("family", "case"), _cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_matches_official(family, case):
    strategy = _strategy(family, case)
    prompt = torch.tensor(case["prompt_ids"])
    mask = None if case["attention_mask"] is None else torch.tensor(case["attention_mask"])
    out = _run(family, case, strategy, prompt, mask)
    assert_matches_case(out, case, prompt, tiny_model(family).spec.tokens.mask)
    # every pass fed exactly the rows the official forward was fed
    assert strategy.widths == case["input_widths"]
    if "official_cache_ratio" in case:
        assert out.stats["rows_computed"] / out.stats["rows_dense"] == pytest.approx(case["official_cache_ratio"])


@pytest.mark.parametrize("family", FAMILIES)
def test_refresh_every_step_is_vanilla(family):
    """refresh_interval=1: every pass is full, so the output is the vanilla sampler's."""
    prompt = torch.randint(0, 1600, (2, 10), generator=torch.Generator().manual_seed(3))
    settings = {"gen_length": 16, "steps": 16, "block_length": 8 if family == "llada" else None}
    model = tiny_model(family)
    plain = generate(model, prompt, method="vanilla", **settings)
    strategy = build_method("dkv_cache", refresh_interval=1)
    cached = generate(model, prompt, method=strategy, **settings)
    assert torch.equal(plain.sequences, cached.sequences)
    assert cached.stats["cached_passes"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_row_equals_its_batch_of_one(family):
    """Rows recompute the batch's widest uncached set; the extra rows change nothing."""
    model = tiny_model(family)
    prompt = torch.randint(0, 1600, (2, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0
    prompt[0, :4] = model.spec.tokens.pad
    settings = (
        {"gen_length": 16, "steps": 8, "threshold": 0.5} if family == "llada" else {"gen_length": 16, "steps": 16}
    )
    batch = generate(model, prompt, mask, method=build_method("dkv_cache", refresh_interval=4), **settings)
    for row in range(2):
        keep = mask[row].bool()
        alone = generate(
            model, prompt[row : row + 1, keep], method=build_method("dkv_cache", refresh_interval=4), **settings
        )
        assert torch.equal(batch.sequences[row, prompt.shape[1] :], alone.sequences[0, int(keep.sum()) :])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variant": "greedy"}, "unknown dkv_cache variant 'greedy' (accepted: decode, prefill, pd)"),
        ({"refresh_interval": 0}, "dkv_cache refresh_interval=0 must be a positive integer"),
        ({"shift_type": "left"}, "unknown dkv_cache shift_type 'left' (accepted: un, right, un_right)"),
        (
            {"variant": "pd", "first_pass_caches": False},
            "dkv_cache variant 'pd' caches the prompt in the first pass: first_pass_caches must be null or true",
        ),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_method("dkv_cache", **options)


def test_right_shift_is_refused_on_dream():
    """The official 'right' shift scores masks from rows it did not compute (-inf logits)."""
    prompt = torch.randint(0, 1600, (1, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=re.escape("dkv_cache shift_type='right' on dream caches the row")):
        generate(tiny_model("dream"), prompt, method=build_method("dkv_cache", shift_type="right"), gen_length=8)


def test_pd_is_refused_on_llada():
    prompt = torch.randint(0, 1600, (1, 8), generator=torch.Generator().manual_seed(1))
    message = (
        "dkv_cache variant 'pd' is Dream's (the official code has it for Dream only), got llada: use variant 'decode'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(tiny_model("llada"), prompt, method=build_method("dkv_cache", variant="pd"), gen_length=8)
