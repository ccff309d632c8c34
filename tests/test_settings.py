"""Impossible or unknown sampler settings fail before any forward, naming the value."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from dllm_accel import generate
from dllm_accel.generation import SettingsError

PROMPT = torch.tensor([[1664, 5, 6, 7]])



@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(gen_length=30, block_length=8, steps=30), "gen_length=30 is not a multiple of block_length=8"),
        (dict(gen_length=32, block_length=8, steps=6), "steps=6 is not divisible by the number of blocks 4"),
        (dict(gen_length=4096, steps=4096), "exceeds the model's context of 4096"),
        (dict(gen_length=32, steps=32, remasking="lowest"), "unknown remasking 'lowest' (accepted: low_confidence, random)"),
        (dict(gen_length=32, steps=32, alg="greedy"), "unknown alg 'greedy' (accepted: origin, maskgit_plus, topk_margin, entropy, confidence_threshold)"),
        (dict(gen_length=32, steps=0), "steps=0 must be a positive integer"),
        (dict(steps=8), "gen_length (or max_new_tokens) is required"),
        (dict(gen_length=32, max_new_tokens=16), "gen_length=32 and max_new_tokens=16 disagree"),
        (dict(gen_length=32, temperature=-1.0), "temperature=-1.0 must be >= 0"),
        (dict(gen_length=32, top_p=1.5), "top_p=1.5 must be in (0, 1]"),
        (dict(gen_length=32, sampler="mdlm"), "unknown sampler 'mdlm' (accepted: llada, dream, dyllm)"),
        (dict(gen_length=32, confidence_dtype="half"), "unknown confidence_dtype 'half'"),
    ],
)
def test_bad_settings_fail_before_any_forward(settings, message, monkeypatch):
    model = tiny_model("llada")
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: pytest.fail("a forward ran"))
    with pytest.raises(SettingsError) as err:
        generate(model, PROMPT, **settings)
    assert message in str(err.value)


def test_unknown_method_and_option_are_named():
    model = tiny_model("llada")
    with pytest.raises(ValueError, match=r"unknown method 'fastest' \(accepted: .*vanilla"):
        generate(model, PROMPT, method="fastest", gen_length=8)
    with pytest.raises(ValueError, match="method 'vanilla' has no setting 'threshhold'"):
        generate(model, PROMPT, gen_length=8, threshhold=0.9)


def test_steps_default_to_gen_length():
    out = generate(tiny_model("dream"), torch.tensor([[1628, 3, 4]]), max_new_tokens=8)
    assert out.nfe == 8
    assert not (out.sequences == 1650).any()


def test_count_above_candidates_never_remasks_decoded_tokens():
    """Uneven rows under Dream's batch-averaged count: the short row must keep its tokens."""
    from dllm_accel.generation import Canvas, SamplerSettings, top_k_commit

    model = tiny_model("dream")
    settings = SamplerSettings(max_new_tokens=4, steps=1).resolve(model.spec, 2)
    canvas = Canvas.start(torch.tensor([[1628, 3], [1628, 4]]), None, settings, model.spec)
    canvas.x[0, 2:5] = 7  # row 0 has one mask left, row 1 has four
    confidence = torch.zeros(2, 6).masked_fill(~canvas.masked(), -torch.inf)
    x0 = torch.full((2, 6), 9)
    commit = top_k_commit(confidence, x0, torch.tensor([4, 4]), canvas)
    canvas.write(commit)
    assert canvas.x[0].tolist() == [1628, 3, 7, 7, 7, 9]
    assert canvas.x[1].tolist() == [1628, 4, 9, 9, 9, 9]
