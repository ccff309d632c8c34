"""The registry of decoding rules: what it lists, what it refuses before any forward, how runs are named."""

from __future__ import annotations

import re

import pytest
from conftest import tiny_model

from analysis.catalog import method_label
from dllm_accel.generation import SamplerSettings, SettingsError
from dllm_accel.generation.rules import available_rules


def test_every_rule_is_registered():
    assert {"frechet", "klass", "pc_sampler", "wino"} <= set(available_rules())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policy": "beam"}, "unknown policy 'beam' (accepted: "),
        (
            {"policy": "wino", "policy_options": {"tau": 0.5}},
            "policy 'wino' has no option 'tau' (accepted: threshold, threshold_back)",
        ),
        ({"policy_options": {"margin": 0.1}}, "policy_options={'margin': 0.1} given without a policy"),
        (
            {"policy": "frechet", "threshold": 0.9},
            "policy='frechet' replaces the count rule; threshold=0.9 cannot be set beside it",
        ),
        (
            {"policy": "klass", "policy_options": {"unmask_strategy": "random"}},
            "unknown klass unmask_strategy 'random'",
        ),
        (
            {"policy": "frechet", "policy_options": {"margin": float("nan")}},
            "frechet margin=nan must be a finite number",
        ),
    ],
)
def test_bad_rule_settings_are_named(settings, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        SamplerSettings(gen_length=8, **settings).resolve(tiny_model("llada").spec, 4)


def test_runs_are_named_after_the_rule_and_the_cache():
    assert method_label("vanilla", {}, {"policy": "wino"}) == "wino"
    assert method_label("fast_dllm", {"mode": "none"}, {"policy": "frechet"}) == "frechet"
    assert method_label("fast_dllm", {"mode": "prefix"}, {"policy": "frechet"}) == "fast_dllm_prefix_frechet"
    assert method_label("dllm_cache", {}, {"policy": "klass"}) == "dllm_cache_klass"
