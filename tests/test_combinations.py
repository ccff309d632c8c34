"""Combinations: every strategy with every decoding policy, and the stacked methods.

- the compatibility matrix: each strategy x policy x family x layout either fills the whole
  generation or fails with its documented error;
- degenerate limits that pin the semantics: reuse switched off equals the same decoding on
  vanilla (or on the parent strategy), token for token; one token per step equals the plain
  strategy's official fixture;
- what the stacked DyLLM-in-dual-cache recomputes on which pass;
- the combined presets: they build, decode with the policy they name, and run on both families.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_cases, tiny_model, transfer_counts

from dllm_accel import build_method, generate
from dllm_accel.generation import Canvas, SamplerSettings, SettingsError
from dllm_accel.generation.parallel import (
    DreamBlockPolicy,
    DyLLMThresholdPolicy,
    QuotaThresholdPolicy,
    ThresholdPolicy,
)
from dllm_accel.generation.policy_choice import build_policy
from dllm_accel.generation.rules import available_rules, rule_class
from dllm_accel.generation.rules.certainty_prior import CertaintyPriorPolicy
from dllm_accel.methods.combined_dyllm_dual import DyLLMDualCache
from dllm_accel.methods.dyllm import FULL, SPARSE
from dllm_accel.methods.fast_dllm import UntilBlockDone
from dllm_accel.methods.vanilla import Vanilla

FAMILIES = ("llada", "dream")
CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
PRESETS = sorted(CONF.glob("combined_*.yaml"))


def prompts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1600, (batch, length), generator=torch.Generator().manual_seed(seed))


def masks_left(out, family: str) -> int:
    return int((out.sequences == tiny_model(family).spec.tokens.mask).sum())


# -- the compatibility matrix ---------------------------------------------------------------

# Strategies come from the registry. A registered strategy runs under its name with its default
# options unless listed here: option sets under which its reuse really happens within 8 generated
# tokens (one matrix label each).
TUNED = {
    "dllm_cache": {"dllm_cache": {"prompt_interval_steps": 4, "gen_interval_steps": 2, "transfer_ratio": 0.25}},
    "fast_dllm": {
        "fast_dllm_none": {"mode": "none"},
        "fast_dllm_prefix": {"mode": "prefix"},
        "fast_dllm_dual": {"mode": "dual"},
    },
    "sparse_dllm": {"sparse_dllm": {"delay": 0}},
    "dyllm": {"dyllm": {"num_full_steps": 1}},
    # the first pass of a block already caches, so two-step blocks reuse too
    "dkv_cache": {
        "dkv_cache": {"refresh_interval": 4, "first_pass_caches": True},
        "dkv_cache_prefill": {"variant": "prefill", "first_pass_caches": True},
        "dkv_cache_pd": {"variant": "pd", "refresh_interval": 4},
    },
    "d2_cache": {"d2_cache": {"current_k": 2}},
    "dkv_cache_greedy": {"dkv_cache_greedy": {"refresh_interval": 2, "window_size": 1}},
}
# strategies that decode with one registered rule only, and the error they give for any other
ONLY_RULE = {
    "d2_cache": ("certainty_prior", "decode it with policy='certainty_prior'"),
    "dkv_cache_greedy": ("random_order", "decode it with policy='random_order'"),
}


def matrix_strategies() -> dict[str, tuple[str, dict]]:
    """{matrix label: (registered name, options)} for every registered strategy."""
    from dllm_accel.methods import available_methods

    return {
        label: (name, options)
        for name in available_methods()
        for label, options in TUNED.get(name, {name: {}}).items()
    }


STRATEGIES = matrix_strategies()
# the samplers' own rules, then every registered decoding rule (generation/rules) at its defaults
POLICIES = (
    "fixed",
    "threshold",
    "factor",
    "tokens_per_step",
    "dyllm_engine",
    "dyllm_engine_threshold",
    *available_rules(),
)
LAYOUTS = {"blocks": {"gen_length": 8, "steps": 8, "block_length": 4}, "whole": {"gen_length": 8, "steps": 8}}
# strategies whose cached passes start at the block: LLaDA/Dream block samplers only
CACHED_BLOCK_PASSES = {"fast_dllm_prefix", "fast_dllm_dual", "combined_dyllm_dual", "streaming_dllm"}
# with a fixed count of steps every reuse strategy does reuse something (the stat that shows it)
REUSED = {
    "dllm_cache": lambda stats: stats["recompute_fraction"] < 1,
    "fast_dllm_prefix": lambda stats: stats["cached_passes"] > 0,
    "fast_dllm_dual": lambda stats: stats["cached_passes"] > 0,
    "sparse_dllm": lambda stats: stats["sparse_passes"] > 0,
    "dyllm": lambda stats: stats["dyllm_sparse_steps"] + stats["dyllm_pruned_steps"] > 0,
    "combined_dyllm_dual": lambda stats: stats["dyllm_sparse_steps"] > 0 and stats["salient_fraction_mean"] < 1,
    "dkv_cache": lambda stats: stats["cached_passes"] > 0,
    "dkv_cache_prefill": lambda stats: stats["cached_passes"] > 0,
    "dkv_cache_pd": lambda stats: stats["cached_passes"] > 0,
    "d2_cache": lambda stats: stats["cached_passes"] > 0,
    "streaming_dllm": lambda stats: stats["cached_passes"] > 0,
    "dkv_cache_greedy": lambda stats: stats["cached_passes"] > 0,
}


def policy_settings(policy: str, family: str) -> dict:
    """Sampler settings of each policy; thresholds low enough for the tiny random models to commit in parallel."""
    if policy in available_rules():
        return {"policy": policy}
    return {
        "fixed": {},
        "threshold": {"threshold": 0.5} if family == "llada" else {"alg": "confidence_threshold", "threshold": 0.5},
        "factor": {"factor": 1.0},
        "tokens_per_step": {"transfer_schedule": "constant", "steps": 4},
        "dyllm_engine": {"sampler": "dyllm"},
        # the engine's Dream score is a negative entropy (between -3 and 0 for these models, median -1.1)
        "dyllm_engine_threshold": {"sampler": "dyllm", "confidence_threshold": 0.5 if family == "llada" else -1.0},
    }[policy]


def documented_error(strategy: str, policy: str, family: str) -> str | None:
    """The error a pair that cannot compose must raise (None: it must run)."""
    name, options = STRATEGIES[strategy]
    # sampler settings are checked first, then whether the strategy runs on the model, then the pair
    if policy == "factor" and family == "dream":
        return "factor=1.0 is a LLaDA rule; Dream's parallel decoding is alg='confidence_threshold'"
    if policy in available_rules() and family not in rule_class(policy).samplers:
        return rule_error(strategy, policy, family)
    refusal = build_method(name, **options).model_refusal(tiny_model(family).spec)
    if refusal is not None:  # the strategy does not run on this family, whatever the policy
        return refusal
    if policy in available_rules():
        error = rule_error(strategy, policy, family)
        if error is None and name in ONLY_RULE and policy != ONLY_RULE[name][0]:
            return ONLY_RULE[name][1]
        return error
    if name in ONLY_RULE:
        return ONLY_RULE[name][1]
    if strategy in CACHED_BLOCK_PASSES and policy.startswith("dyllm_engine"):
        return "decodes with sampler 'llada' or 'dream', got 'dyllm'"
    if strategy in CACHED_BLOCK_PASSES and policy == "tokens_per_step" and family == "dream":
        return "transfer_schedule='constant' cannot apply"
    if strategy == "sparse_dllm" and policy == "tokens_per_step" and family == "dream":
        return "the constant count of gen_length // steps = 2 per step cannot fill the generation in steps=4 steps"
    return None


def rule_error(strategy: str, policy: str, family: str) -> str | None:
    """A registered rule refuses the samplers and strategies it declares it cannot serve."""
    rule = rule_class(policy)
    if family not in rule.samplers:
        return f"policy {policy!r} is defined for sampler {' / '.join(rule.samplers)}, got {family!r}"
    if rule.strategies is not None and STRATEGIES[strategy][0] not in rule.strategies:
        return f"policy {policy!r} cannot decode from method {STRATEGIES[strategy][0]!r}"
    return None


def test_the_matrix_covers_every_registered_strategy():
    from dllm_accel.methods import available_methods

    assert set(TUNED) <= set(available_methods()), "TUNED lists a strategy that is not registered"
    assert {name for name, _ in STRATEGIES.values()} == set(available_methods())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_strategy_with_every_policy(family, strategy, policy, layout):
    model = tiny_model(family)
    name, options = STRATEGIES[strategy]
    settings = {**LAYOUTS[layout], **policy_settings(policy, family)}
    prompt = prompts(2, 6)
    error = documented_error(strategy, policy, family)
    if error is not None:
        with pytest.raises(ValueError, match=re.escape(error)):
            generate(model, prompt, method=build_method(name, **options), **settings)
        return
    out = generate(model, prompt, method=build_method(name, **options), **settings)
    assert torch.equal(out.sequences[:, :6], prompt)
    assert out.sequences.shape == (2, 14)
    assert masks_left(out, family) == 0
    assert 1 <= out.nfe <= 8
    if policy == "tokens_per_step":
        assert out.nfe == 4
    if policy in ("fixed", "tokens_per_step", "dyllm_engine") and strategy in REUSED:
        assert REUSED[strategy](out.stats)


# -- the DyLLM engine's threshold rule --------------------------------------------------------


def test_engine_threshold_ignores_the_step_budget():
    """With confidence_threshold the engine commits until the block is full, whatever ``steps`` says."""
    model = tiny_model("llada")
    settings = {"sampler": "dyllm", "gen_length": 8, "block_length": 4, "steps": 2, "output_history": True}
    out = generate(model, prompts(1, 6), method="vanilla", confidence_threshold=1.0, **settings)
    assert out.nfe == 8  # one per step (no probability reaches 1.0), past steps=2
    start = torch.cat([prompts(1, 6), torch.full((1, 8), model.spec.tokens.mask)], dim=1)
    assert transfer_counts(out.trajectory, start, model.spec.tokens.mask) == [[1]] * 8


def test_engine_threshold_compares_in_the_score_dtype():
    """The engine casts the threshold to the score's dtype: a bf16 score 0.8984375 reaches a 0.9 threshold."""
    spec = tiny_model("llada").spec
    x = torch.cat([prompts(1, 4), torch.full((1, 4), spec.tokens.mask)], dim=1)
    settings = SamplerSettings(sampler="dyllm", gen_length=4, confidence_threshold=0.9).resolve(spec, 4)
    canvas = Canvas.start(x[:, :4], None, settings, spec)
    policy = DyLLMThresholdPolicy(0.9)
    score = torch.full((1, 8), -torch.inf, dtype=torch.bfloat16)
    score[0, 4:] = torch.tensor([0.95, 0.8984375, 0.3, 0.89], dtype=torch.bfloat16)  # 0.89 is 0.890625 in bf16
    policy.propose = lambda logits, rows, canvas: (x, score)
    assert policy.select(None, slice(0, 8), canvas).index[0, 4:].tolist() == [True, True, False, False]
    score[0, 4:6] = 0.25  # nothing reaches it: the best one alone
    assert policy.select(None, slice(0, 8), canvas).index[0, 4:].tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"confidence_threshold": 0.9},
            "confidence_threshold=0.9 is the DyLLM engine's rule (sampler='dyllm', got 'llada')",
        ),
        (
            {"sampler": "dyllm", "confidence_threshold": float("inf")},
            "confidence_threshold=inf must be a finite number",
        ),
        ({"sampler": "dyllm", "confidence_threshold": "high"}, "confidence_threshold='high' must be a finite number"),
    ],
)
def test_bad_engine_threshold_is_named(settings, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        SamplerSettings(gen_length=8, **settings).resolve(tiny_model("llada").spec, 4)


# -- reuse switched off: the same decoding on vanilla -------------------------------------------


class DenseWith(Vanilla):
    """Vanilla passes decoded as ``parent`` decodes (its policy wrapper), to isolate the parent's reuse."""

    def __init__(self, parent) -> None:
        super().__init__()
        self.parent = parent

    def decoding_policy(self, policy, canvas):
        return self.parent.decoding_policy(policy, canvas)


def _same(a, b) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert a.nfe == b.nfe
    assert torch.equal(torch.stack(a.trajectory), torch.stack(b.trajectory))


def composing(strategy: str, policies: tuple[str, ...]) -> list[tuple[str, str]]:
    """(family, policy) pairs of ``strategy`` that run (the matrix checks the others' errors)."""
    return [(f, p) for f in FAMILIES for p in policies if documented_error(strategy, p, f) is None]


PARALLEL = ("threshold", "factor", "tokens_per_step")


@pytest.mark.parametrize(("family", "policy"), composing("sparse_dllm", PARALLEL))
def test_sparse_without_eviction_equals_its_decoding_on_vanilla(family, policy):
    """keep_ratio 1 and a selection step never reached: every pass dense, so Sparse-dLLM is vanilla."""
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, "output_history": True}
    settings |= policy_settings(policy, family)
    sparse = build_method("sparse_dllm", keep_ratio=1.0, delay=8)
    model = tiny_model(family)
    _same(
        generate(model, prompts(2, 7), method=sparse, **settings),
        generate(model, prompts(2, 7), method=DenseWith(sparse), **settings),
    )


@pytest.mark.parametrize(("family", "policy"), composing("dllm_cache", PARALLEL))
def test_dllm_cache_refreshing_every_step_equals_vanilla(family, policy):
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, "output_history": True}
    settings |= policy_settings(policy, family)
    cache = build_method("dllm_cache", prompt_interval_steps=1, gen_interval_steps=1, transfer_ratio=0.25)
    model = tiny_model(family)
    _same(
        generate(model, prompts(2, 7), method=cache, **settings),
        generate(model, prompts(2, 7), method="vanilla", **settings),
    )


def _frozen_layer0_keys(family: str):
    """fp64 copy whose layer-0 keys do not depend on the tokens, so that DyLLM's layer-0 approximation
    (only the rows decoded last step recompute K/V) is exact, as in test_dyllm."""
    model = copy.deepcopy(tiny_model(family)).double()
    with torch.no_grad():
        model.blocks[0].k_proj.weight.zero_()
    return model


@pytest.mark.parametrize("policy", ["threshold", "dyllm_engine_threshold"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dyllm_with_every_token_salient_equals_vanilla(family, policy):
    model = _frozen_layer0_keys(family)
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, "output_history": True}
    settings |= policy_settings(policy, family)
    every = build_method("dyllm", threshold=2.0, num_full_steps=1, prune_period=1, dream_packed_shift=False)
    out = generate(model, prompts(2, 7), method=every, **settings)
    _same(out, generate(model, prompts(2, 7), method="vanilla", **settings))
    assert out.stats["salient_fraction_mean"] == 1.0
    assert out.stats["dyllm_sparse_steps"] == out.nfe - 1


@pytest.mark.parametrize("family", FAMILIES)
def test_dyllm_all_dense_with_engine_threshold_equals_vanilla(family):
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, "output_history": True}
    settings |= policy_settings("dyllm_engine_threshold", family)
    dense = build_method("dyllm", num_full_steps=16)
    _same(
        generate(tiny_model(family), prompts(2, 7), method=dense, **settings),
        generate(tiny_model(family), prompts(2, 7), method="vanilla", **settings),
    )


@pytest.mark.parametrize("policy", ["fixed", "threshold"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dyllm_dual_with_every_token_salient_equals_the_dual_cache(family, policy):
    """Every block row salient: the block passes are Fast-dLLM's dual passes (layer 0 made exact as above)."""
    model = _frozen_layer0_keys(family)
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, "output_history": True}
    settings |= policy_settings(policy, family)
    stacked = build_method("combined_dyllm_dual", saliency_threshold=2.0)
    out = generate(model, prompts(2, 7), method=stacked, **settings)
    _same(out, generate(model, prompts(2, 7), method="fast_dllm", mode="dual", **settings))
    assert out.stats["salient_fraction_mean"] == 1.0


@pytest.mark.parametrize("policy", ["fixed", "threshold"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dyllm_dual_refreshing_every_pass_equals_its_decoding_on_vanilla(family, policy):
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, "output_history": True}
    settings |= policy_settings(policy, family)
    stacked = build_method("combined_dyllm_dual", refresh_steps=8)
    out = generate(tiny_model(family), prompts(2, 7), method=stacked, **settings)
    _same(out, generate(tiny_model(family), prompts(2, 7), method=DenseWith(stacked), **settings))
    assert out.stats["dyllm_sparse_steps"] == 0


# -- one token per step: the plain strategy's official output -----------------------------------

ONE_PER_STEP = {"threshold": 1.0}  # no probability of these models reaches 1.0: only each step's best


def _one_per_step(cases: list[dict]) -> list[dict]:
    return [c for c in cases if c["settings"]["steps"] == c["settings"]["gen_length"] and not c.get("rng_dependent")]


SPARSE_CASES = _one_per_step(load_cases("sparse_dllm/llada_sparse_generate.json"))
CACHE_CASES = _one_per_step(load_cases("dllm_cache/llada_dllm_cache.json"))


def _assert_case(out, case: dict, prompt: torch.Tensor) -> None:
    mask = tiny_model("llada").spec.tokens.mask
    assert out.sequences.tolist() == case["expected_output_ids"]
    assert out.nfe == case["nfe"]
    start = torch.cat([prompt, torch.full((prompt.shape[0], case["settings"]["gen_length"]), mask)], dim=1)
    assert transfer_counts(out.trajectory, start, mask) == case["transfer_counts_per_step"]


@pytest.mark.parametrize("case", SPARSE_CASES, ids=[c["name"] for c in SPARSE_CASES])
def test_sparse_threshold_at_one_token_per_step_matches_official_sparse(case):
    config = case["model_config"]
    strategy = build_method("sparse_dllm", keep_ratio=config["keep_ratio"], kernel_size=config["kernel_size"])
    prompt = torch.tensor(case["prompt_ids"])
    settings = {**case["settings"], "block_length": case["block_length"], **ONE_PER_STEP}
    _assert_case(generate(tiny_model("llada"), prompt, method=strategy, output_history=True, **settings), case, prompt)


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c["name"] for c in CACHE_CASES])
def test_dllm_cache_threshold_at_one_token_per_step_matches_official_dllm_cache(case):
    strategy = build_method("dllm_cache", **case["cache"], layer0_refresh=case["era"])
    prompt = torch.tensor(case["prompt_ids"])
    settings = {**case["settings"], "gumbel_variant": "dllm_cache", **ONE_PER_STEP}
    _assert_case(generate(tiny_model("llada"), prompt, method=strategy, output_history=True, **settings), case, prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_dyllm_engine_threshold_at_one_token_per_step_equals_plain_dyllm(family):
    """No CPU fixture exists for DyLLM (CUDA-only): the reference is plain DyLLM at one token per step."""
    settings = {"sampler": "dyllm", "top_p": 1.0, "gen_length": 16, "steps": 16, "block_length": 8}
    plain = generate(tiny_model(family), prompts(2, 7), method=build_method("dyllm", num_full_steps=2), **settings)
    one = 1.0 if family == "llada" else 0.0  # above every score: max probabilities < 1, negative entropies < 0
    stacked = generate(
        tiny_model(family),
        prompts(2, 7),
        method=build_method("dyllm", num_full_steps=2),
        confidence_threshold=one,
        **settings,
    )
    assert torch.equal(stacked.sequences, plain.sequences)
    assert stacked.nfe == plain.nfe == 16


# -- what the stacked DyLLM-in-dual-cache recomputes ---------------------------------------------


class _Watched(DyLLMDualCache):
    """Records each pass's rows and whether anything outside the block changed in the caches."""

    def begin(self, model, canvas):
        super().begin(model, canvas)
        self.passes = []

    def forward(self, model, canvas):
        before = [_outside(cache, canvas) for cache in self.saliency.caches]
        logits, rows = super().forward(model, canvas)
        after = [_outside(cache, canvas) for cache in self.saliency.caches]
        untouched = len(before) == len(after) and all(
            torch.equal(x, y) for b, a in zip(before, after, strict=True) for x, y in zip(b, a, strict=True)
        )
        self.passes.append((canvas.block, canvas.block_step, canvas.pass_rows, untouched))
        return logits, rows


def _outside(cache, canvas) -> tuple[torch.Tensor, ...]:
    outside = torch.ones(canvas.length, dtype=torch.bool)
    outside[canvas.block_slice] = False
    rows = slice(0, canvas.length)  # K, V and FFN caches end with a write-only sink row
    return tuple(
        t[..., rows, :][..., outside, :].clone() if t.dim() == 4 else t[:, rows][:, outside].clone()
        for t in (cache.k, cache.v, cache.c, cache.f)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_dyllm_dual_refreshes_each_block_then_touches_only_the_block(family):
    strategy = _Watched(DyLLMDualCache.Config(saliency_threshold=0.99, record_salient=True))
    model = tiny_model(family)
    settings = {"gen_length": 16, "steps": 16, "block_length": 8}
    out = generate(model, prompts(2, 7), method=strategy, **settings)
    assert masks_left(out, family) == 0
    length = 7 + 16
    for block, step, rows, untouched in strategy.passes:
        block_rows = slice(7 + 8 * block, 7 + 8 * block + 8)
        if step == 0:
            assert rows == slice(0, length)
        else:
            assert rows == block_rows
            assert untouched  # prefix and suffix K, V, context and FFN stay as the refresh left them
    kinds = [record.kind for record in strategy.trace]
    assert kinds == [FULL if step == 0 else SPARSE for _, step, _, _ in strategy.passes]
    for record, (block, step, _, _) in zip(strategy.trace, strategy.passes, strict=True):
        if step:
            for salient in record.salient:  # salient rows are block rows
                assert not salient[:, : 7 + 8 * block].any() and not salient[:, 7 + 8 * block + 8 :].any()
    fractions = strategy.saliency.salient_fractions
    assert 0 < float(fractions.mean()) < 1  # the tiny models do skip rows at tau 0.99


def test_dyllm_dual_refresh_steps_are_dense_passes_per_block():
    strategy = DyLLMDualCache(DyLLMDualCache.Config(refresh_steps=3))
    generate(tiny_model("llada"), prompts(1, 7), method=strategy, gen_length=16, steps=16, block_length=8)
    kinds = [record.kind for record in strategy.trace]
    assert kinds == ([FULL] * 3 + [SPARSE] * 5) * 2


@pytest.mark.parametrize(("family", "policy"), [("llada", "fixed"), ("llada", "threshold"), ("dream", "threshold")])
def test_dyllm_dual_padded_batch_equals_each_row_alone(family, policy):
    """Left padding as DyLLM: each row keeps its own positions and kernel tiles."""
    model = copy.deepcopy(tiny_model(family)).double()
    long, short = prompts(1, 10, seed=1), prompts(1, 7, seed=2)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    settings = {"gen_length": 16, "steps": 16, "block_length": 8, **policy_settings(policy, family)}
    out = generate(model, batch, mask, method="combined_dyllm_dual", **settings)
    for row, (prompt, pad) in enumerate([(long, 0), (short, 3)]):
        alone = generate(model, prompt, method="combined_dyllm_dual", **settings)
        assert torch.equal(out.sequences[row, pad:], alone.sequences[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"refresh_steps": 0}, "refresh_steps=0 must be an integer >= 1"),
        ({"saliency_threshold": float("nan")}, "dyllm threshold=nan must be finite"),
        ({"kernel": "cuda"}, "unknown dyllm kernel 'cuda'"),
        ({"dual_step_cap": "yes"}, "fast_dllm dual_step_cap='yes' must be true or false"),
        ({"threshold": 0.9}, "has no setting 'threshold'"),
    ],
)
def test_bad_dyllm_dual_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_method("combined_dyllm_dual", **options)


def test_dyllm_dual_rejects_what_either_parent_rejects():
    model = tiny_model("llada")
    with pytest.raises(ValueError, match="does not support cfg_scale > 0"):
        generate(model, prompts(1, 6), method="combined_dyllm_dual", gen_length=8, steps=8, cfg_scale=1.0)
    right_padded = torch.ones(1, 6, dtype=torch.long)
    right_padded[0, -2:] = 0
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, prompts(1, 6), right_padded, method="combined_dyllm_dual", gen_length=8, steps=8)


# -- the presets ---------------------------------------------------------------------------------


def _preset(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


EXPECTED_POLICY = {
    "combined_sparse_dllm_threshold": {"llada": ThresholdPolicy, "dream": DreamBlockPolicy},
    "combined_dllm_cache_threshold": {"llada": ThresholdPolicy, "dream": QuotaThresholdPolicy},
    "combined_dyllm_threshold": {"llada": DyLLMThresholdPolicy, "dream": DyLLMThresholdPolicy},
    "combined_dyllm_dual": {"llada": ThresholdPolicy, "dream": DreamBlockPolicy},
    "combined_dkv_cache_threshold": {"llada": ThresholdPolicy, "dream": QuotaThresholdPolicy},
    "combined_d2_cache_threshold": {"llada": CertaintyPriorPolicy, "dream": CertaintyPriorPolicy},
}


def test_every_preset_is_listed():
    assert {p.stem for p in PRESETS} == set(EXPECTED_POLICY)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_decodes_with_the_policy_it_names(path, family):
    """No silent fallback: the loop's policy is the threshold rule the preset asks for."""
    preset = _preset(path)
    strategy = build_method(preset["name"], **preset["options"])
    spec = tiny_model(family).spec
    settings = SamplerSettings(**{**preset["sampler"], "gen_length": 64, "steps": 64}).resolve(spec, 8)
    canvas = Canvas.start(prompts(1, 8), None, settings, spec)
    strategy.check(canvas)
    policy = strategy.decoding_policy(build_policy(canvas), canvas)
    if isinstance(policy, UntilBlockDone):
        policy = policy.inner
    assert type(policy) is EXPECTED_POLICY[path.stem][family]


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_options_and_sampler_share_no_name(path):
    """Flat settings (generate(**settings), make demo) give a name that is both to the method: a preset
    that set one name in both sections would lose its sampler value there."""
    preset = _preset(path)
    assert not set(preset["options"]) & set(preset["sampler"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_to_the_end(path, family):
    preset = _preset(path)
    settings = {**preset["sampler"], "gen_length": 32, "steps": 32, "eos_early_exit": False}
    if family == "dream" and "confidence_threshold" in settings:
        settings["confidence_threshold"] = -1.0  # the engine's Dream score is a negative entropy
    out = generate(
        tiny_model(family), prompts(1, 8), method=build_method(preset["name"], **preset["options"]), **settings
    )
    assert masks_left(out, family) == 0
    assert out.nfe <= 32
    if family == "dream" and "confidence_threshold" in settings:
        assert out.nfe < 32
