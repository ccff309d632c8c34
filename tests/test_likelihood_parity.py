"""The Monte Carlo log-likelihood against LLaDA's official lm-eval wrapper, number for number.

Cases from ``tests/fixtures/llada_loglikelihood/generate.py`` (``eval_llada.py`` of ML-GSAI/LLaDA
run unmodified on CPU in float32, see its docstring). Seeded as the official run was seeded, our
estimator draws the same masks from the same random stream and gives the same float64 value (bit
for bit on the machine the fixture was made on; the bound below only leaves room for another CPU's
float32 reduction order). Our lm-eval model reseeds per request instead of drawing one stream
across a whole run, so that a resumed run gives the numbers an uninterrupted one gave; that is the
one difference by design, and why these cases call the estimator with the official seeding.
"""

from __future__ import annotations

import json

import pytest
import torch

from dllm_accel.eval.likelihood import (
    LikelihoodSettings,
    elbo_loglikelihood,
    encode_pair,
    greedy_reproduces,
    mask_draw,
)
from dllm_accel.models import load_model, load_tokenizer
from dllm_accel.paths import REPO_ROOT, tiny_checkpoint

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "llada_loglikelihood" / "llada.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
TRAINED = REPO_ROOT / "checkpoints" / "tiny-llada"
# relative: float32 sums in another reduction order; a different mask draw moves an estimate by > 1e-3
TOLERANCE = 1e-6


class Bytes:
    """The fixture's tokenizer for the random-weight checkpoint: UTF-8 bytes, no special tokens."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return {
        "trained": load_model(TRAINED, dtype=torch.float32),
        "llada-tiny": load_model(tiny_checkpoint("llada"), dtype=torch.float32),
    }


@pytest.fixture(scope="module")
def tokenizers():
    return {"trained": load_tokenizer(TRAINED), "llada-tiny": Bytes()}


def _settings(case: dict) -> tuple[LikelihoodSettings, float]:
    s = case["settings"]
    return LikelihoodSettings(s["mc_num"], s["batch_size"], s["is_check_greedy"]), s["cfg"]


def _close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= TOLERANCE * max(1.0, abs(theirs))


def test_the_fixture_covers_the_settings():
    settings = [c["settings"] for c in CASES]
    assert {s["cfg"] > 0 for s in settings} == {True, False}
    assert {s["is_check_greedy"] for s in settings} == {True, False}
    assert len({s["batch_size"] for s in settings}) >= 4 and any(s["mc_num"] > s["batch_size"] for s in settings)
    assert any(r["is_greedy"] for c in CASES for r in c["requests"])  # a continuation greedy decoding reproduces
    assert any(r["context"] != r["context"].rstrip() for c in CASES for r in c["requests"])  # a trailing space


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_context_and_continuation_split_as_the_official_wrapper_splits_them(case, tokenizers):
    for request in case["requests"]:
        prefix, target = encode_pair(tokenizers[case["checkpoint"]], request["context"], request["continuation"])
        assert (prefix, target) == (request["prefix_ids"], request["target_ids"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_mask_draws_are_the_official_stream(case):
    settings, _ = _settings(case)
    torch.manual_seed(case["seed"])
    for request in case["requests"]:
        length = len(request["target_ids"])
        for expected in request["masked_positions"]:
            masked, ratio = mask_draw(settings.mc_batch_size, length, torch.device("cpu"))
            assert [row.nonzero().flatten().tolist() for row in masked] == expected
            assert torch.equal(ratio, masked.sum(dim=1) / length)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_estimates_and_greedy_flags_equal_the_official_ones(case, models):
    model = models[case["checkpoint"]]
    settings, cfg = _settings(case)
    torch.manual_seed(case["seed"])  # one stream across the case's requests, as the official call draws it
    for request in case["requests"]:
        ours = elbo_loglikelihood(model, request["prefix_ids"], request["target_ids"], settings, cfg)
        assert _close(ours, request["loglikelihood"]), (ours, request["loglikelihood"])
        greedy = settings.is_check_greedy and greedy_reproduces(
            model, request["prefix_ids"], request["target_ids"], cfg
        )
        assert float(greedy) == request["is_greedy"]


def test_another_seed_is_outside_the_tolerance(models):
    """The bound is tight enough to catch a different random stream."""
    case = next(c for c in CASES if c["name"] == "trained_copy_batch3")
    settings, cfg = _settings(case)
    request = case["requests"][0]
    torch.manual_seed(case["seed"] + 1)
    other = elbo_loglikelihood(models["trained"], request["prefix_ids"], request["target_ids"], settings, cfg)
    assert not _close(other, request["loglikelihood"])
