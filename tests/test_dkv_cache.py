"""dKV-Cache: token-exact parity with the official code, and what each option promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_matches_case, tiny_model

from dllm_accel import build_method, generate
from dllm_accel.generation import SamplerSettings
from dllm_accel.generation.loop import denoise
from dllm_accel.generation.rules.random_order import RandomOrderPolicy

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
    if "torch_manual_seed" in case:  # a sampled case: the official draws come from torch's global generator
        torch.manual_seed(case["torch_manual_seed"])
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


# -- dKV-Cache-Greedy (LLaDA) ---------------------------------------------------------------------


def _greedy_settings(case: dict) -> dict:
    s = case["settings"]
    names = ("steps", "gen_length", "block_length", "temperature", "mask_id")
    return {**{k: s[k] for k in names}, "policy": "random_order", "legacy_ignore_attention_mask": True}


@pytest.mark.parametrize("case", _load("llada_dkv_cache_greedy"), ids=lambda case: case["name"])
def test_greedy_matches_official(case):
    """The official order is one torch.rand per block from the global generator: seeded as recorded."""
    s = case["settings"]
    strategy = build_method(
        "dkv_cache_greedy", refresh_interval=s["cache_reloading_step"], window_size=s["window_size"]
    )
    prompt = torch.tensor(case["prompt_ids"])
    mask = None if case["attention_mask"] is None else torch.tensor(case["attention_mask"])
    torch.manual_seed(case["torch_manual_seed"])
    out = generate(tiny_model("llada"), prompt, mask, method=strategy, output_history=True, **_greedy_settings(case))
    assert_matches_case(out, case, prompt, tiny_model("llada").spec.tokens.mask)
    assert strategy.widths == case["input_widths"]


class FixedOrder(RandomOrderPolicy):
    """The same commit order, relative to the block, in every row and every run (no random draw)."""

    def __init__(self) -> None:
        self.strategy = None

    def begin_block(self, canvas):
        super().begin_block(canvas)
        block = canvas.settings.block_length
        offsets = torch.randperm(block, generator=torch.Generator().manual_seed(canvas.block))
        self.order = (canvas.block_start + offsets).expand(canvas.batch, -1)


def _fixed_order_run(prompt, mask, **options):
    settings = SamplerSettings(gen_length=16, steps=16, block_length=8).resolve(
        tiny_model("llada").spec, prompt.shape[1]
    )
    strategy = build_method("dkv_cache_greedy", **options)
    return denoise(tiny_model("llada"), prompt, mask, strategy, settings, policy=FixedOrder()), strategy


def test_greedy_padded_row_equals_its_batch_of_one():
    """With one order for every row, a left-padded batch (mask-aware) gives each row its batch-1 answer:
    rows with fewer rows to compute than the batch's widest change nothing."""
    prompt = torch.randint(0, 1600, (2, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0
    prompt[0, :4] = tiny_model("llada").spec.tokens.pad
    batch, strategy = _fixed_order_run(prompt, mask, refresh_interval=4, window_size=3)
    assert strategy.widths[1] < prompt.shape[1] + 16  # greedy passes ran
    for row in range(2):
        keep = mask[row].bool()
        alone, _ = _fixed_order_run(prompt[row : row + 1, keep], None, refresh_interval=4, window_size=3)
        assert torch.equal(batch.sequences[row, prompt.shape[1] :], alone.sequences[0, int(keep.sum()) :])


def test_greedy_window_takes_the_nearest_masks_left_first():
    """Rows computed before the second step: the step's commit, the next one, and the next one's
    window_size nearest masks, alternating left and right of it, skipping what is already in."""
    prompt = torch.randint(0, 1600, (1, 6), generator=torch.Generator().manual_seed(2))
    fed = []

    class Spy(FixedOrder):
        def begin_block(self, canvas):
            super().begin_block(canvas)
            self.order = torch.tensor([[10, 11, 13, 6, 7, 8, 9, 12]]) + canvas.block_start - 6

    strategy = build_method("dkv_cache_greedy", refresh_interval=8, window_size=3)
    original = strategy.after_commit
    strategy.after_commit = lambda canvas, commit: (original(canvas, commit), fed.append(strategy.fed.clone()))
    settings = SamplerSettings(gen_length=8, steps=8).resolve(tiny_model("llada").spec, 6)
    denoise(tiny_model("llada"), prompt, None, strategy, settings, policy=Spy())
    # step 0 commits 10, step 1 commits 11: window of 11 among masks 12, 9 (10 is in), 13 -> 12, 9, 13
    assert fed[0][0].nonzero().flatten().tolist() == [9, 10, 11, 12, 13]
    # step 1 commits 11, step 2 commits 13: its window 12, 14 (past the end: none), 9, 8 -> 12, 9, 8
    assert fed[1][0].nonzero().flatten().tolist() == [8, 9, 11, 12, 13]


@pytest.mark.parametrize(
    ("family", "policy", "message"),
    [
        ("dream", "random_order", "dkv_cache_greedy computes the rows of the positions it commits, and dream's row p"),
        ("llada", None, "dkv_cache_greedy computes only the rows its decoding order commits next"),
        ("llada", "klass", "decode it with policy='random_order'"),
    ],
)
def test_greedy_refuses_what_it_cannot_run(family, policy, message):
    prompt = torch.randint(0, 1600, (1, 8), generator=torch.Generator().manual_seed(1))
    settings = {"gen_length": 8} | ({"policy": policy} if policy else {})
    if family == "dream":
        settings["sampler"] = "llada"  # past the rule's sampler check, to the strategy's own
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(tiny_model(family), prompt, method=build_method("dkv_cache_greedy"), **settings)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"refresh_interval": 0}, "dkv_cache_greedy refresh_interval=0 must be an integer >= 1"),
        ({"window_size": -1}, "dkv_cache_greedy window_size=-1 must be an integer >= 0"),
        ({"window_size": 1.5}, "dkv_cache_greedy window_size=1.5 must be an integer >= 0"),
    ],
)
def test_greedy_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_method("dkv_cache_greedy", **options)
