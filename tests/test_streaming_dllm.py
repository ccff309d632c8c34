"""Streaming-dLLM: token-exact parity with the official code (tests/fixtures/streaming_dllm/, made by
its generate.py), and what the pruning, the dynamic threshold and the early exit promise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from dllm_accel import build_method, generate
from dllm_accel.generation.settings import SettingsError
from dllm_accel.methods.streaming_dllm import pruned_layout

CASES = Path(__file__).parent / "fixtures" / "streaming_dllm"
FAMILIES = ("llada", "dream")


def cases(family: str) -> list[dict]:
    return json.loads((CASES / f"{family}.json").read_text())["cases"]


def _all_cases():
    return [(family, case) for family in FAMILIES for case in cases(family)]


def run_case(family: str, case: dict, **rule_options):
    """Our streaming_dllm strategy with the streaming_threshold rule, at the case's official settings."""
    s = case["settings"]
    strategy = build_method("streaming_dllm", window_size=s["window_size"])
    options = {"threshold": s["threshold"], "alpha": s["confidence_alpha"], "batch_coupled": case["batch_size"] > 1}
    options["eos_id"] = s["eos_id"] if family == "llada" else s["eos"]
    options |= rule_options
    common = {"steps": s["steps"], "block_length": s["block_length"], "temperature": s["temperature"]}
    if family == "llada":
        # the official sampler scores in float64 and passes the model no attention mask
        common |= {"gen_length": s["gen_length"], "confidence_dtype": "float64", "legacy_ignore_attention_mask": True}
    else:
        common |= {"gen_length": s["max_new_tokens"], "top_p": s["top_p"], "top_k": s["top_k"]}
    prompt = torch.tensor(case["prompt_ids"])
    mask = None if case.get("attention_mask") is None else torch.tensor(case["attention_mask"])
    if case.get("torch_manual_seed") is not None:
        torch.manual_seed(case["torch_manual_seed"])
    out = generate(
        tiny_model(family),
        prompt,
        mask,
        method=strategy,
        policy="streaming_threshold",
        policy_options=options,
        output_history=True,
        **common,
    )
    return out, strategy


@pytest.mark.parametrize(("family", "case"), _all_cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_matches_official(family, case):
    out, strategy = run_case(family, case)
    assert torch.equal(out.sequences, torch.tensor(case["expected_output_ids"]))
    assert out.nfe == case["nfe"]
    assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]))
    # every pass fed the official number of rows, at the official position ids
    assert strategy.widths == case["input_widths"]
    assert strategy.pass_positions() == case["position_ids"]


def _case(family: str, name: str) -> dict:
    return next(c for c in cases(family) if c["name"].startswith(name))


def test_the_cases_exercise_what_they_claim():
    """The dynamic threshold, the early exit and the official batch rule each decide some case."""
    for family, name in (("llada", "gen64_block16_w16_t07_a05"), ("dream", "new64_block16_w8_t09_a03")):
        case = _case(family, name)
        fixed, _ = run_case(family, case, alpha=0.0)
        assert not torch.equal(fixed.sequences, torch.tensor(case["expected_output_ids"]))
    for family, name in (("llada", "gen64_block16_w8_t09_a03_eos"), ("dream", "new64_block16_w8_t09_a03_eos")):
        case = _case(family, name)
        running, _ = run_case(family, case, eos_exit=False)
        assert running.nfe > case["nfe"]
    case = _case("llada", "b2_leftpad")
    alone, _ = run_case("llada", case, batch_coupled=False)
    assert not torch.equal(alone.sequences, torch.tensor(case["expected_output_ids"]))


@pytest.mark.parametrize(
    ("block_end", "length", "window", "tail", "expected"),
    [
        (20, 64, 8, 1, (28, 1)),  # window then the last position
        (20, 64, 8, 3, (28, 3)),
        (20, 26, 8, 1, (26, 0)),  # a suffix no longer than the window is kept whole
        (20, 29, 8, 1, (28, 1)),
        (64, 64, 8, 1, (64, 0)),  # the last block has no suffix
        (20, 64, 0, 1, (20, 1)),
    ],
)
def test_pruned_layout_is_the_official_window_and_tail(block_end, length, window, tail, expected):
    layout = pruned_layout(block_end, length, window, tail)
    assert (layout.head_end, layout.tail) == expected
    positions = layout.positions()
    assert positions[:block_end] == list(range(block_end)) and len(positions) == layout.rows


@pytest.mark.parametrize("family", FAMILIES)
def test_unpruned_with_a_fixed_threshold_is_the_fast_dllm_prefix_cache(family):
    """A window past the sequence end, alpha 0 and no early exit: Fast-dLLM's prefix cache with threshold decoding."""
    prompt = torch.randint(0, 1600, (2, 9), generator=torch.Generator().manual_seed(4))
    settings = {"gen_length": 32, "steps": 32, "block_length": 8, "confidence_dtype": "float64", "output_history": True}
    fixed = {"threshold": 0.5} if family == "llada" else {"alg": "confidence_threshold", "threshold": 0.5}
    model = tiny_model(family)
    prefix = generate(model, prompt, method=build_method("fast_dllm", mode="prefix"), **settings, **fixed)
    options = {"threshold": 0.5, "alpha": 0.0, "eos_exit": False}
    streaming = generate(
        model,
        prompt,
        method=build_method("streaming_dllm", window_size=64),
        policy="streaming_threshold",
        policy_options=options,
        **settings,
    )
    assert torch.equal(streaming.sequences, prefix.sequences)
    assert streaming.nfe == prefix.nfe
    assert torch.equal(torch.stack(streaming.trajectory), torch.stack(prefix.trajectory))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_decodes_as_alone_and_stops_at_its_own_eos(family):
    """batch_coupled off (the default): a left-padded row equals its batch of one, early exit included."""
    model = tiny_model(family)
    prompt = torch.randint(0, 1600, (2, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0
    prompt[0, :4] = model.spec.tokens.pad
    settings = {"gen_length": 48, "steps": 48, "block_length": 16, "confidence_dtype": "float64"}
    # tokens one row produces in its first block and the other never
    options = {"threshold": 0.6, "alpha": 0.3, "eos_id": 556 if family == "llada" else 1225}
    run = {"policy": "streaming_threshold", "policy_options": options, **settings}
    batch = generate(model, prompt, mask, method=build_method("streaming_dllm", window_size=8), **run)
    stopped = []
    for row in range(2):
        keep = mask[row].bool()
        alone = generate(
            model, prompt[row : row + 1, keep], method=build_method("streaming_dllm", window_size=8), **run
        )
        assert torch.equal(batch.sequences[row, prompt.shape[1] :], alone.sequences[0, int(keep.sum()) :])
        stopped.append(alone.nfe < batch.nfe and bool((alone.sequences[0, -16:] == options["eos_id"]).all()))
    assert stopped.count(True) == 1  # one row ended at its EOS, the other ran on


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_size": -1}, "streaming_dllm window_size=-1 must be a non-negative integer"),
        ({"tail_keep": 1.5}, "streaming_dllm tail_keep=1.5 must be a non-negative integer"),
        ({"noise_draw": "yes"}, "streaming_dllm noise_draw='yes' must be true or false"),
    ],
)
def test_bad_strategy_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_method("streaming_dllm", **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": float("nan")}, "streaming_threshold alpha=nan must be a finite number"),
        ({"eos_exit": 1}, "streaming_threshold eos_exit=1 must be true or false"),
        ({"eos_id": "eos"}, "streaming_threshold eos_id='eos' must be a token id or null"),
    ],
)
def test_bad_rule_options_are_named(options, message):
    prompt = torch.randint(0, 1600, (1, 6), generator=torch.Generator().manual_seed(1))
    with pytest.raises(SettingsError, match=re.escape(message)):
        generate(tiny_model("llada"), prompt, gen_length=8, policy="streaming_threshold", policy_options=options)
