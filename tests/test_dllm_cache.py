"""dLLM-Cache: token-exact parity with the official hooks (both code eras, both families) and its invariants."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_cases, tiny_model, transfer_counts
from safetensors.torch import load_file

from dllm_accel import generate
from dllm_accel.generation import SamplerSettings
from dllm_accel.generation.scoring import gumbel_max_logits
from dllm_accel.generation.settings import SettingsError
from dllm_accel.methods import build_method
from dllm_accel.methods.dllm_cache_layer import Refresh
from dllm_accel.paths import REPO_ROOT, fixtures_dir

FAMILIES = ("llada", "dream")
# The fixtures README: below this similarity margin the official pick is a tie and not meaningful.
TIE_MARGIN = 1e-6


def _cases():
    return [(fam, case) for fam in FAMILIES for case in load_cases(f"dllm_cache/{fam}_dllm_cache.json")]


def _strategy(case: dict, **overrides):
    options = {
        **case["cache"],
        "layer0_refresh": case["era"],
        "dream_k_scatter": case.get("dream_k_scatter", "kv_width"),
        **overrides,
    }
    strategy = build_method("dllm_cache", **options)
    strategy.trace = []
    return strategy


def _run(family: str, case: dict, strategy, **extra):
    """The official call: LLaDA through dLLM-Cache's copy of generate(), Dream through the hub sampler."""
    settings = dict(case["settings"])
    if family == "llada":
        settings["gumbel_variant"] = "dllm_cache"
    return generate(tiny_model(family), torch.tensor(case["prompt_ids"]), method=strategy, **settings, **extra)


@pytest.mark.parametrize(("family", "case"), _cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_matches_official(family, case):
    """Output ids, NFE, transfer counts, trajectories, branches and similarity picks."""
    model = tiny_model(family)
    strategy = _strategy(case)
    out = _run(family, case, strategy, output_history=True)
    prompt = torch.tensor(case["prompt_ids"])
    expected = torch.tensor(case["expected_output_ids"])
    assert torch.equal(out.sequences, expected)
    assert out.sequences[:, prompt.shape[1] :].tolist() == case["expected_generated_ids"]
    assert out.nfe == case["nfe"]
    start = torch.cat([prompt, torch.full_like(expected[:, prompt.shape[1] :], model.spec.tokens.mask)], dim=1)
    assert transfer_counts(out.trajectory, start, model.spec.tokens.mask) == case["transfer_counts_per_step"]
    if "trajectory" in case:
        assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]["states"]))
    assert len(strategy.trace) == len(case["selection_trace"])
    for step, (ours, official) in enumerate(zip(strategy.trace, case["selection_trace"], strict=True)):
        assert [r.branch.value for r in ours] == [o["branch"] for o in official], f"step {step}"
        for layer, (record, reference) in enumerate(zip(ours, official, strict=True)):
            if "selected_gen_idx" not in reference:
                assert record.selected is None, f"step {step} layer {layer}"
                continue
            for row, (picked, margin) in enumerate(
                zip(reference["selected_gen_idx"], reference["similarity_margin"], strict=True)
            ):
                if margin >= TIE_MARGIN:
                    assert set(record.selected[row].tolist()) == set(picked), f"step {step} layer {layer} row {row}"
    if "trajectory_tensors" in case:
        _check_similarity(family, case, strategy.trace)


@cache
def _trajectory_tensors(family: str) -> dict[str, torch.Tensor]:
    return load_file(fixtures_dir() / "cases" / "dllm_cache" / f"{family}_dllm_cache_trajectory.safetensors")


def _check_similarity(family: str, case: dict, trace: list) -> None:
    """The V cosine vectors against the official ones; layer 0 of the paper era bit for bit.

    In the paper era an unchanged position reaches layer 0 with bit-identical input, so its
    cosine is 1 up to rounding and the picks among them are ties: they reproduce only with
    the official float32 cosine over the flat K/V width and the same top-k. Deeper layers
    carry the core's last-ulp differences from the official modeling code.
    """
    tensors = _trajectory_tensors(family)
    checked = 0
    for step, records in enumerate(trace):
        for layer, record in enumerate(records):
            key = f"{case['name']}.step{step:03d}.layer{layer}.v_cos_sim"
            if key not in tensors:
                assert record.similarity is None, key
                continue
            if case["era"] == "paper" and layer == 0:
                assert torch.equal(record.similarity, tensors[key]), key
            else:
                assert (record.similarity - tensors[key]).abs().max() <= 1e-6, key
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("era", ("head", "paper"))
def test_refresh_every_step_equals_vanilla(family, era):
    """Kp = Kr = 1 recomputes everything: the output is vanilla's, whatever rho."""
    model = tiny_model(family)
    plain = [
        c for c in load_cases(f"{family}_generate.json") if c["attention_mask"] is None and not c.get("rng_dependent")
    ]
    for case in plain[:2]:
        prompt = torch.tensor(case["prompt_ids"])
        vanilla = generate(model, prompt, **case["settings"])
        cached = generate(
            model,
            prompt,
            method="dllm_cache",
            prompt_interval_steps=1,
            gen_interval_steps=1,
            transfer_ratio=0.25,
            layer0_refresh=era,
            **case["settings"],
        )
        assert torch.equal(cached.sequences, vanilla.sequences), case["name"]
        assert cached.stats["recompute_fraction"] == 1.0


def test_recompute_fraction_follows_the_schedule():
    """Rows through attention and FFN: L (both), G (gen), P + r (prompt), r (neither), per layer."""
    case = next(
        c for c in load_cases("dllm_cache/llada_dllm_cache.json") if c["name"].startswith("llada_head_kp8_kr3_rho0.25")
    )
    out = _run("llada", case, _strategy(case))
    prompt, gen, layers = case["prompt_length"], case["settings"]["gen_length"], tiny_model("llada").spec.n_layers
    kp, kr, picked = 8, 3, int(gen * 0.25)
    rows = 0
    for step in range(case["nfe"]):
        for layer in range(layers):
            forced = layer == 0
            refresh_prompt, refresh_gen = forced or step % kp == 0, forced or step % kr == 0
            if refresh_gen:
                rows += prompt + gen if refresh_prompt else gen
            else:
                rows += picked + (prompt if refresh_prompt else 0)
    total = case["nfe"] * layers * (prompt + gen)
    assert out.stats["rows_recomputed"] == rows
    assert out.stats["rows_total"] == total
    assert out.stats["recompute_fraction"] == pytest.approx(rows / total)
    assert 0 < out.stats["recompute_fraction"] < 1


def test_empty_selection_still_replaces_the_gen_values():
    """r = int(G * rho) = 0: no row is picked, but the official code still swaps in the new V."""
    prompt = torch.tensor([[1664, 81, 914, 264, 73, 428]])
    model = tiny_model("llada")
    settings = {"gen_length": 3, "steps": 3, "block_length": 3, "prompt_interval_steps": 2, "gen_interval_steps": 3}
    runs = {}
    for rho in (0.0, 0.25):
        strategy = build_method(
            "dllm_cache", transfer_ratio=rho, **{k: v for k, v in settings.items() if "interval" in k}
        )
        strategy.trace = []
        out = generate(model, prompt, method=strategy, **{k: v for k, v in settings.items() if "interval" not in k})
        assert not (out.sequences == model.spec.tokens.mask).any()
        runs[rho] = strategy
    picks = runs[0.25].trace[1][1]
    assert picks.branch is Refresh.NEITHER and picks.selected.shape == (1, 0)
    gen_values = [runs[rho].caches[1].v[:, prompt.shape[1] :] for rho in (0.0, 0.25)]
    assert not torch.equal(*gen_values)


def _leftpad_case(family: str) -> dict:
    name = "leftpad_gen32_steps16_block8" if family == "llada" else "entropy_leftpad_new32_steps16"
    return next(c for c in load_cases(f"{family}_generate.json") if c["name"] == name)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_mask_is_ignored_unless_asked(family):
    """The hooks attend to pads; ``honour_padding_mask`` hides them as the vanilla model does."""
    model, case = tiny_model(family), _leftpad_case(family)
    prompt, mask = torch.tensor(case["prompt_ids"]), torch.tensor(case["attention_mask"])
    every_step = {"prompt_interval_steps": 1, "gen_interval_steps": 1}
    honoured = generate(
        model, prompt, mask, method="dllm_cache", honour_padding_mask=True, **every_step, **case["settings"]
    )
    assert honoured.sequences.tolist() == case["expected_output_ids"]
    ignored = generate(model, prompt, mask, method="dllm_cache", **every_step, **case["settings"])
    if family == "llada":  # LLaDA keeps positions 0..L-1, so ignoring the mask is the legacy no-mask run
        legacy = generate(model, prompt, mask, legacy_ignore_attention_mask=True, **case["settings"])
        assert torch.equal(ignored.sequences, legacy.sequences)
    assert not torch.equal(ignored.sequences, honoured.sequences)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_reproduce_alone(family):
    """The similarity top-k is per row: each row of a batched case equals its batch-1 run."""
    case = next(c for c in load_cases(f"dllm_cache/{family}_dllm_cache.json") if "kp8_kr3_rho0.25" in c["name"])
    for row in range(len(case["prompt_ids"])):
        single = {**case, "prompt_ids": case["prompt_ids"][row : row + 1]}
        out = _run(family, single, _strategy(case))
        assert out.sequences[0].tolist() == case["expected_output_ids"][row]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt_interval_steps": 0}, "prompt_interval_steps=0"),
        ({"gen_interval_steps": -2}, "gen_interval_steps=-2"),
        ({"gen_interval_steps": 2.5}, "gen_interval_steps=2.5"),
        ({"prompt_interval_steps": True}, "prompt_interval_steps=True"),
        ({"transfer_ratio": 1.5}, "transfer_ratio=1.5"),
        ({"transfer_ratio": -0.1}, "transfer_ratio=-0.1"),
        ({"layer0_refresh": "v2"}, "layer0_refresh 'v2'"),
        ({"dream_k_scatter": "hidden"}, "dream_k_scatter 'hidden'"),
    ],
)
def test_bad_settings_are_named(options, message):
    with pytest.raises(SettingsError, match=message):
        build_method("dllm_cache", **options)


def test_unsupported_runs_are_refused():
    model, prompt = tiny_model("llada"), torch.tensor([[1664, 81, 914]])
    with pytest.raises(ValueError, match="cfg_scale"):
        generate(model, prompt, method="dllm_cache", gen_length=4, steps=4, cfg_scale=1.0)
    with pytest.raises(SettingsError, match="Dream only"):
        generate(model, prompt, method="dllm_cache", gen_length=4, steps=4, dream_k_scatter="literal_hidden_div_7")


def test_dllm_cache_gumbel_variant():
    """dLLM-Cache's LLaDA sampler takes the argmax of exp(logits): overflowing logits tie."""
    logits = torch.tensor([[[0.0, 90.0, 95.0]]])
    assert gumbel_max_logits(logits, 0.0).argmax(-1).item() == 2
    assert gumbel_max_logits(logits, 0.0, "dllm_cache").argmax(-1).item() == 1
    torch.manual_seed(0)
    noisy = gumbel_max_logits(logits.half(), 1.0, "dllm_cache")
    assert noisy.dtype == torch.float16
    with pytest.raises(SettingsError, match="gumbel_variant 'bf16'"):
        SamplerSettings(gen_length=4, gumbel_variant="bf16").resolve(tiny_model("llada").spec, 3)


def _method_configs() -> list[Path]:
    method_dir = REPO_ROOT / "conf" / "method"
    return sorted(method_dir.glob("dllm_cache*.yaml")) + sorted((method_dir / "dllm_cache_presets").glob("*.yaml"))


def test_configs_and_presets_build_and_resolve():
    """Every dLLM-Cache config builds its strategy, and its sampler settings resolve on the family."""
    configs = _method_configs()
    assert len(configs) == 2 + 36
    for path in configs:
        entry = yaml.safe_load(path.read_text())
        assert entry["name"] == "dllm_cache", path.name
        strategy = build_method(entry["name"], **entry["options"])
        family = "dream" if path.name.startswith("dream") else "llada"
        sampler = entry["sampler"]
        if "gen_length" not in sampler and "max_new_tokens" not in sampler:
            sampler = {**sampler, "gen_length": 32}
        SamplerSettings(**sampler).resolve(tiny_model(family).spec, 1)
        assert strategy.config.transfer_ratio == 0.25, path.name


@pytest.mark.parametrize(
    ("preset", "kp", "kr", "sampler"),
    [
        ("llada_8b_instruct_gsm8k", 50, 7, {"gen_length": 256, "steps": 256, "block_length": 8}),
        ("llada_8b_instruct_mmlu_pro", 51, 3, {"gen_length": 256, "steps": 256, "block_length": 256}),
        ("llada_8b_base_mbpp_alt", 25, 4, {"gen_length": 256, "steps": 256, "block_length": 32}),
        ("dream_7b_instruct_gsm8k_cot", 25, 2, {"gen_length": 256, "temperature": 0.2, "top_p": 0.95}),
        ("dream_7b_base_humaneval", 5, 1, {"gen_length": 256, "steps": 256, "alg": "entropy"}),
    ],
)
def test_presets_hold_the_published_settings(preset, kp, kr, sampler):
    entry = yaml.safe_load((REPO_ROOT / "conf" / "method" / "dllm_cache_presets" / f"{preset}.yaml").read_text())
    assert (entry["options"]["prompt_interval_steps"], entry["options"]["gen_interval_steps"]) == (kp, kr)
    assert sampler.items() <= entry["sampler"].items()
