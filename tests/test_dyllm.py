"""DyLLM: exact agreement with its specification (spec B) and the invariants it promises.

The official engine needs CUDA (flash-attn and custom kernels), so there are no CPU
fixtures. Fidelity is shown by invariants on the tiny checkpoints, hand-derived kernel
examples, and a step-by-step trace checked against an unoptimised reference written here
from the spec's pseudo-steps (B.7), independently of ``dllm_accel.methods.dyllm``.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model, transfer_counts

from dllm_accel import build_method, generate, load_model
from dllm_accel.generation import SamplerSettings, SettingsError
from dllm_accel.generation.dyllm_sampler import _top_p, dyllm_sample
from dllm_accel.methods.base import ForwardStrategy
from dllm_accel.methods.dyllm import DyLLM, _shift, step_kind
from dllm_accel.methods.dyllm_kernel import (
    KERNELS,
    KernelQuirks,
    compute_dtype,
    context_delta,
    update_context,
    update_context_torch,
)
from dllm_accel.paths import tiny_checkpoint
from dllm_accel.profiling import OpCounter

FAMILIES = ("llada", "dream")
CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
SHORT = {"gen_length": 8, "steps": 8, "block_length": 4}  # steps 3, 4 and 8 sparse; 5-7 pruned


@cache
def model_in(family: str, dtype: torch.dtype):
    return tiny_model(family) if dtype == torch.float32 else copy.deepcopy(tiny_model(family)).to(dtype)


def engine_sampler(**overrides) -> dict:
    """The sampler section of conf/method/dyllm.yaml, with a short generation."""
    sampler = yaml.safe_load((CONF / "dyllm.yaml").read_text())["sampler"]
    return {**sampler, "gen_length": 16, "steps": 16, "block_length": 8, **overrides}


def prompts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1600, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- schedule ---------------------------------------------------------------------------


def test_step_kinds_follow_the_engine_table():
    # spec B.4 / B.8 item 1 with num_full_steps = 4: 1-4 dense, then pruned except multiples of 4
    expected = ["full"] * 4 + ["pruned"] * 3 + ["sparse"] + ["pruned"] * 3 + ["sparse"] + ["pruned"] * 3 + ["sparse"]
    assert [step_kind(c, 4) for c in range(1, 17)] == expected
    # the period counts from step 1, independently of the dense steps
    assert [step_kind(c, 2) for c in range(1, 9)] == ["full", "full", "sparse", "sparse"] + ["pruned"] * 3 + ["sparse"]
    # the first step is dense even without dense steps (requests start in the full queue)
    assert step_kind(1, 0) == "full" and step_kind(2, 0) == "sparse"
    assert [step_kind(c, 1, period=3) for c in range(1, 8)] == [
        "full",
        "sparse",
        "sparse",
        "pruned",
        "pruned",
        "sparse",
        "pruned",
    ]
    assert all(step_kind(c, 2, period=1) == "sparse" for c in range(3, 20))


def test_constant_count_runs_out_of_steps_with_masks_left():
    """gen 12, steps 4: 3 per step, clipped at block ends; after 4 steps the third block is untouched."""
    model = tiny_model("llada")
    prompt = prompts(1, 6)
    out = generate(model, prompt, sampler="dyllm", gen_length=12, steps=4, block_length=4, output_history=True)
    mask = model.spec.tokens.mask
    start = torch.cat([prompt, torch.full((1, 12), mask)], dim=1)
    assert transfer_counts(out.trajectory, start, mask) == [[3], [1], [3], [1]]
    assert out.nfe == 4
    assert (out.sequences[0, -4:] == mask).all()


def test_constant_schedule_settings_are_checked():
    spec = tiny_model("llada").spec
    with pytest.raises(SettingsError, match="gen_length=16 is not a multiple of steps=5"):
        SamplerSettings(gen_length=16, steps=5, sampler="dyllm").resolve(spec, 4)
    # steps need not divide into blocks under the constant count
    assert SamplerSettings(gen_length=12, steps=4, block_length=4, transfer_schedule="constant").resolve(spec, 4)
    with pytest.raises(SettingsError, match="unknown transfer_schedule 'fixed'"):
        SamplerSettings(gen_length=8, transfer_schedule="fixed").resolve(spec, 4)
    with pytest.raises(SettingsError, match="alg='origin'"):
        SamplerSettings(gen_length=8, sampler="dream", alg="origin", transfer_schedule="constant").resolve(spec, 4)


@pytest.mark.parametrize(
    ("method", "steps", "expected"),
    [
        ("dyllm", 8, [False, False, False, True]),  # only the 4th dense step is followed by a sparse one
        ("dyllm", 2, [False, False]),  # every step dense: no cache is ever read, none is allocated
        ("combined_dyllm_dual", 16, [True, True]),  # each block's refresh precedes its block passes
    ],
)
def test_dense_steps_write_caches_only_for_a_sparse_step_after_them(monkeypatch, method, steps, expected):
    refills = []
    full = DyLLM._full

    def spy(self, model, ids, refill):
        refills.append(refill)
        return full(self, model, ids, refill)

    monkeypatch.setattr(DyLLM, "_full", spy)
    strategy = build_method(method)
    sampler = (
        engine_sampler(gen_length=steps * 2, steps=steps, block_length=min(8, steps * 2))
        if method == "dyllm"
        else {"gen_length": 16, "steps": 16, "block_length": 8}
    )
    generate(tiny_model("llada"), prompts(1, 8), method=strategy, **sampler)
    assert refills == expected
    caches = strategy.saliency.caches if method == "combined_dyllm_dual" else strategy.caches
    assert len(caches) == (tiny_model("llada").spec.n_layers if any(expected) else 0)


# -- sampler ------------------------------------------------------------------------------


def test_engine_filters_top_k_before_top_p():
    """logits [2, 1, 0], top_k 2, top_p 0.7, on paper.

    Engine order: top-k leaves [2, 1] -> probs [0.731, 0.269]; the first already passes 0.7,
    so only token 0 survives and its probability is 1. Dream's order (top-p first) would
    keep tokens 0 and 1 (cumulative 0.665 then 0.910), scoring 0.731.
    """
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    score, token = dyllm_sample(logits, "llada", 0.0, top_k=2, top_p=0.7)
    assert token.item() == 0 and score.item() == pytest.approx(1.0)
    score, _ = dyllm_sample(logits, "llada", 0.0, top_k=None, top_p=None)
    assert score.item() == pytest.approx(math.exp(2) / (math.exp(2) + math.e + 1))
    entropy, _ = dyllm_sample(logits, "dream", 0.0, top_k=None, top_p=None)
    p = torch.softmax(logits, -1)
    assert entropy.item() == pytest.approx(float((p * torch.log(p + 1e-10)).sum()))


def test_top_p_one_still_cuts_a_rounding_tail():
    """B.8 item 10: at top_p = 1.0 a token after the cumulative sum has rounded past 1 is cut."""
    logits = torch.tensor([[0.5, 0.25, -3.0, -30.0]])
    cumulative = torch.softmax(logits, -1).cumsum(-1)  # already in descending order
    assert cumulative[0, -2] > 1.0  # fp32 rounding: 0.5528 + 0.4305 + 0.0167 -> 1.0000001
    filtered = _top_p(logits, 1.0)
    assert (filtered[0, :-1] == logits[0, :-1]).all()
    assert filtered[0, -1] == torch.finfo(torch.float32).min


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5, 0.05])
def test_top_p_equals_the_engines_mask_of_the_unsorted_logits(dtype, top_p):
    """The engine's formulation, literally: a drop mask over the sorted order, shifted right by
    one, scattered to the unsorted positions, then a masked fill. Ours cuts in sorted order and
    scatters the values back; every value must be the same, ties included."""
    g = torch.Generator().manual_seed(11)
    logits = (torch.randint(-8, 9, (64, 50), generator=g) * 0.5 + torch.randn(64, 50, generator=g) * 1e-3).to(dtype)
    logits[:8] = logits[:8].round()  # rows of exact ties
    ordered, order = torch.sort(logits, descending=True)
    bound = torch.full((logits.shape[0], 1), top_p, dtype=torch.float32)
    drop = torch.softmax(ordered, dim=-1).cumsum(dim=-1) > bound
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    expected = logits.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), torch.finfo(dtype).min)
    ours = _top_p(logits, top_p)
    assert ours.dtype == dtype and torch.equal(ours, expected)
    if top_p < 1.0:
        assert (ours == torch.finfo(dtype).min).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.0, None, 1.0), (0.7, 5, 0.9), (0.0, 3, 0.5)])
def test_llada_engine_scores_of_a_row_ignore_the_other_rows(dtype, temperature, top_k, top_p):
    """The DyLLM sampler scores every row of a LLaDA block and drops the decided ones, where the
    engine scores only the masked rows: equal only if a row's token and score depend on it alone,
    bit for bit (ties included: the logits take few distinct values)."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randint(-6, 7, (3, 8, 40), generator=g) * 0.75).to(dtype)
    masked = torch.rand(3, 8, generator=g) < 0.5
    score, token = dyllm_sample(logits.reshape(-1, 40), "llada", temperature, top_k, top_p)
    alone_score, alone_token = dyllm_sample(logits[masked], "llada", temperature, top_k, top_p)
    assert torch.equal(score.view(3, 8)[masked], alone_score)
    assert torch.equal(token.view(3, 8)[masked], alone_token)


def test_dream_packed_shift_on_paper():
    raw = torch.arange(12.0).view(2, 3, 2)  # two requests, three rows, two vocab entries
    packed, alone = _shift(raw, packed=True), _shift(raw, packed=False)
    assert packed[0].tolist() == [[0, 1], [0, 1], [2, 3]]
    assert packed[1].tolist() == [[4, 5], [6, 7], [8, 9]]  # its first row is request 0's last
    assert alone[1].tolist() == [[6, 7], [6, 7], [8, 9]]


# -- EOS early exit -----------------------------------------------------------------------


class _Scripted(ForwardStrategy):
    """Fixed logits: at each response position one token with a given strength."""

    name = "scripted"

    def __init__(self, plan: dict[tuple[int, int], tuple[int, float]]) -> None:
        super().__init__()
        self.plan = plan

    def forward(self, model, canvas):
        logits = torch.zeros(*canvas.x.shape, model.spec.vocab_size)
        for (row, offset), (token, strength) in self.plan.items():
            logits[row, canvas.prompt_length + offset, token] = strength
        canvas.nfe += 1
        return logits, slice(0, canvas.length)


def test_eos_early_exit_as_the_engine_scheduler():
    model = tiny_model("llada")
    eos, mask = model.spec.tokens.eos, model.spec.tokens.mask
    plan = {
        # row 0: EOS first in rank, nothing masked before it -> stops after step 1
        (0, 0): (eos, 9.0),
        (0, 1): (5, 8.0),
        (0, 2): (6, 1.0),
        (0, 3): (7, 1.0),
        # row 1: EOS at the end with masks before it -> runs on
        (1, 3): (eos, 9.0),
        (1, 0): (5, 8.0),
        (1, 1): (6, 1.0),
        (1, 2): (7, 1.0),
        # row 2: two EOS; the higher-ranked one (offset 2) has a mask before it, the other has
        # none. The engine checks only the first EOS of its ranking, so the row runs on.
        (2, 2): (eos, 9.0),
        (2, 0): (eos, 8.0),
        (2, 1): (6, 1.0),
        (2, 3): (7, 1.0),
    }
    out = generate(
        model,
        prompts(3, 4),
        method=_Scripted(plan),
        sampler="dyllm",
        eos_early_exit=True,
        gen_length=4,
        steps=2,
        block_length=4,
    )
    response = out.sequences[:, 4:].tolist()
    assert response[0] == [eos, 5, mask, mask]
    assert response[1] == [5, 6, 7, eos]
    assert response[2] == [eos, 6, eos, 7]
    assert out.nfe == 2

    alone = generate(
        model,
        prompts(1, 4),
        method=_Scripted({k: v for k, v in plan.items() if k[0] == 0}),
        sampler="dyllm",
        eos_early_exit=True,
        gen_length=4,
        steps=2,
        block_length=4,
    )
    assert alone.nfe == 1  # every row stopped: the loop ends early


# -- the kernel ---------------------------------------------------------------------------


def dense_delta(q, keys, delta_v, starts, quirks, pv_dtype=None):
    """The kernel with dV given on every key column."""
    columns = torch.arange(keys.shape[2]).expand(keys.shape[0], -1)
    return context_delta(q, keys, delta_v, columns, starts, quirks, pv_dtype)


def _two_tile_example() -> tuple[torch.Tensor, ...]:
    """One request of 65 keys (a full tile and a tile with 1 real key), D = 4, q = 0.

    dV is e_2 on key 0 (tile 0) and e_1 on key 64 (tile 1), zero elsewhere.
    """
    q = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    keys = torch.randn(1, 1, 65, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    delta_v = torch.zeros(1, 1, 65, 4, dtype=torch.float64)
    delta_v[0, 0, 0, 1] = 1.0
    delta_v[0, 0, 64, 0] = 1.0
    return q, keys, delta_v, torch.zeros(1, dtype=torch.long)


def test_kernel_quirks_on_a_hand_derived_example():
    """With q = 0 every raw score is 0 and the scale is 1/sqrt(4) = 1/2.

    fixed: a uniform softmax over the 65 real keys -> dC = (1/65, 1/65, 0, 0).
    legacy: tile 0 scores 0, so P_0 = 1 on its 64 keys (row sum 64, max 0). Tile 1 scores
    (0 + P_0) / 2 = 1/2 on all 64 slots: its one real key and 63 zero-padded keys, unmasked.
    New max 1/2: row sum 64 e^-1/2 + 64, output e^-1/2 * e_2 + 1 * e_1, so
    dC = (1, e^-1/2, 0, 0) / (64 (1 + e^-1/2)).
    Each quirk alone: carried scores with masked padding -> (1, e^-1/2) / (64 e^-1/2 + 1);
    padding without carry -> tile 1 scores 0 on 64 slots -> (1, 1) / 128.
    """
    q, keys, delta_v, starts = _two_tile_example()
    e = math.exp(-0.5)

    def delta(quirks):
        return dense_delta(q, keys, delta_v, starts, quirks)[0, 0, 0, :2].tolist()

    assert delta(KERNELS["fixed"]) == pytest.approx([1 / 65, 1 / 65], abs=1e-15)
    assert delta(KERNELS["legacy"]) == pytest.approx([1 / (64 * (1 + e)), e / (64 * (1 + e))], abs=1e-15)
    assert delta(KernelQuirks(True, False)) == pytest.approx([1 / (64 * e + 1), e / (64 * e + 1)], abs=1e-15)
    assert delta(KernelQuirks(False, True)) == pytest.approx([1 / 128, 1 / 128], abs=1e-15)


@pytest.mark.parametrize(("length", "differ"), [(64, False), (40, True), (128, True)])
def test_legacy_differs_only_with_padded_keys_or_a_second_tile(length, differ):
    """One full tile: identical. A partial tile: padded keys count. Two tiles: scores carry."""
    g = torch.Generator().manual_seed(length)
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64, generator=g)
    keys = torch.randn(1, 2, length, 8, dtype=torch.float64, generator=g)
    delta_v = torch.randn(1, 2, length, 8, dtype=torch.float64, generator=g)
    starts = torch.zeros(1, dtype=torch.long)
    fixed = dense_delta(q, keys, delta_v, starts, KERNELS["fixed"])
    legacy = dense_delta(q, keys, delta_v, starts, KERNELS["legacy"])
    assert (not torch.allclose(fixed, legacy, atol=1e-6)) == differ


def test_approximate_context_is_exact_when_only_values_change():
    """C_old + softmax(qK^T/sqrt(d)) dV = softmax(qK^T/sqrt(d)) V_new when keys are unchanged:
    two left-padded requests of 150 and 97 keys (three tiles), GQA 4:2, fp64."""
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 2, 4, 2, 150, 8
    q = torch.randn(batch, heads, 7, dim, dtype=torch.float64, generator=g)
    keys = torch.randn(batch, kv_heads, length, dim, dtype=torch.float64, generator=g)
    v_old = torch.randn(batch, kv_heads, length, dim, dtype=torch.float64, generator=g)
    changed = torch.zeros(batch, 1, length, 1, dtype=torch.bool)
    changed[0, :, [3, 70, 149]] = True
    changed[1, :, [60, 100, 130]] = True
    v_new = torch.where(changed, torch.randn(v_old.shape, dtype=torch.float64, generator=g), v_old)
    starts = torch.tensor([0, 53])
    key_mask = torch.arange(length)[None, :] >= starts[:, None]

    def attend(v):
        scores = q @ keys.repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(dim)
        scores = scores.masked_fill(~key_mask[:, None, None, :], -torch.inf)
        return torch.softmax(scores, -1) @ v.repeat_interleave(2, 1)

    approx = attend(v_old) + dense_delta(q, keys, v_new - v_old, starts, KERNELS["fixed"])
    assert (approx - attend(v_new)).abs().max() < 1e-10


# -- invariants on the tiny checkpoints ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_all_dense_steps_equal_vanilla(family, dtype):
    model = model_in(family, dtype)
    settings = engine_sampler(output_history=True, **SHORT)
    vanilla = generate(model, prompts(2, 9), method="vanilla", **settings)
    dyllm = generate(model, prompts(2, 9), method="dyllm", num_full_steps=8, **settings)
    assert torch.equal(dyllm.sequences, vanilla.sequences)
    assert dyllm.nfe == vanilla.nfe == 8
    assert torch.equal(torch.stack(dyllm.trajectory), torch.stack(vanilla.trajectory))


class _AgainstDense(DyLLM):
    """Measures every step's logits against a dense pass over the same sequence."""

    def begin(self, model, canvas):
        super().begin(model, canvas)
        self.worst = 0.0

    def forward(self, model, canvas):
        logits, rows = super().forward(model, canvas)
        dense, _ = model(canvas.x)
        dense = model.shift_logits(dense)
        self.worst = max(self.worst, float((logits - dense[:, rows]).abs().max()))
        return logits, rows


def _frozen_layer0_keys(family: str) -> torch.nn.Module:
    """fp64 copy whose layer-0 keys do not depend on the tokens (k_proj weight zeroed)."""
    model = copy.deepcopy(model_in(family, torch.float64))
    with torch.no_grad():
        model.blocks[0].k_proj.weight.zero_()
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_everything_salient_equals_dense(family):
    """threshold above every cosine: all rows are salient after layer 0, so every layer >= 1 is
    exact. Two spec facts keep this from holding in general, and the test removes them:
    layer 0 recomputes only the decoded rows, so the others keep C_old + softmax(qK') dV,
    exact only when no key changed (here: layer-0 keys independent of the tokens); and query
    pruning freezes the prompt rows (here: prune_period = 1)."""
    config = DyLLM.Config(threshold=2.0, num_full_steps=2, prune_period=1, dream_packed_shift=False)
    strategy = _AgainstDense(config)
    out = generate(_frozen_layer0_keys(family), prompts(2, 9), method=strategy, **engine_sampler(**SHORT))
    assert strategy.worst < 1e-5
    assert out.stats["salient_fraction_mean"] == 1.0


@pytest.mark.parametrize(("frozen", "period"), [(False, 1), (True, 4)], ids=["layer0-keys-change", "pruned"])
def test_each_condition_is_needed_for_dense_equality(frozen, period):
    model = _frozen_layer0_keys("llada") if frozen else model_in("llada", torch.float64)
    strategy = _AgainstDense(DyLLM.Config(threshold=2.0, num_full_steps=2, prune_period=period))
    generate(model, prompts(1, 9), method=strategy, **engine_sampler(**SHORT))
    assert strategy.worst > 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_salient_fraction_is_recorded(family):
    model = tiny_model(family)
    # by name, ``threshold`` is the method's (saliency), not the sampler's (Fast-dLLM decoding)
    out = generate(model, prompts(1, 9), method="dyllm", threshold=2.0, num_full_steps=2, **engine_sampler(**SHORT))
    nothing = build_method("dyllm", threshold=-2.0, num_full_steps=2)
    generate(model, prompts(1, 9), method=nothing, **engine_sampler(**SHORT))
    assert nothing.salient_fractions.shape == (6, model.spec.n_layers)
    assert (nothing.salient_fractions == 0).all()
    assert out.stats["salient_fraction_mean"] == 1.0
    assert out.stats["dyllm_full_steps"] == 2
    assert out.stats["dyllm_pruned_steps"] == 3 and out.stats["dyllm_sparse_steps"] == 3
    assert out.stats["salient_fraction_p50"] == 1.0
    assert [out.stats[f"salient_fraction_layer{i}"] for i in range(model.spec.n_layers)] == [1.0] * model.spec.n_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_each_row_alone(family):
    """Rows behave as the engine's packed requests: own positions from 0, own tiles."""
    model = model_in(family, torch.float64)
    long, short = prompts(1, 10, seed=1), prompts(1, 7, seed=2)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    options = {"threshold": 0.99, "num_full_steps": 2, "record_salient": True, "dream_packed_shift": False}
    batched = build_method("dyllm", **options)
    out = generate(model, batch, mask, method=batched, **engine_sampler(**SHORT))
    for row, (prompt, pad) in enumerate([(long, 0), (short, 3)]):
        alone = build_method("dyllm", **options)
        single = generate(model, prompt, method=alone, **engine_sampler(**SHORT))
        assert torch.equal(out.sequences[row, pad:], single.sequences[0])
        for together, by_itself in zip(batched.trace, alone.trace, strict=True):
            for layer_batch, layer_alone in zip(together.salient, by_itself.salient, strict=True):
                assert torch.equal(layer_batch[row, pad:], layer_alone[0])


def test_packed_dream_shift_leaves_the_first_request_alone():
    model = model_in("dream", torch.float64)
    runs = [
        generate(
            model, prompts(2, 9), method="dyllm", num_full_steps=2, dream_packed_shift=packed, **engine_sampler(**SHORT)
        )
        for packed in (True, False)
    ]
    assert torch.equal(runs[0].sequences[0], runs[1].sequences[0])


def test_legacy_kernel_equals_fixed_on_one_full_tile():
    """A 64-token request fills exactly one tile: no padded keys, nothing to carry."""
    model = model_in("llada", torch.float64)
    out = {
        kernel: generate(
            model, prompts(1, 56), method="dyllm", kernel=kernel, num_full_steps=2, **engine_sampler(**SHORT)
        )
        for kernel in KERNELS
    }
    assert torch.equal(out["fixed"].sequences, out["legacy"].sequences)
    assert out["fixed"].stats == out["legacy"].stats


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown dyllm kernel 'cuda' \\(accepted: fixed, legacy\\)"):
        build_method("dyllm", kernel="cuda")
    with pytest.raises(ValueError, match="num_full_steps=-1"):
        build_method("dyllm", num_full_steps=-1)
    with pytest.raises(ValueError, match="prune_period=0"):
        build_method("dyllm", prune_period=0)
    with pytest.raises(ValueError, match="threshold=nan"):
        build_method("dyllm", threshold=float("nan"))
    right_padded = torch.ones(1, 6, dtype=torch.long)
    right_padded[0, -2:] = 0
    with pytest.raises(ValueError, match="left-padded"):
        generate(tiny_model("llada"), prompts(1, 6), right_padded, method="dyllm", **engine_sampler())


def test_configs_build():
    for path in sorted(CONF.glob("dyllm*.yaml")):
        config = yaml.safe_load(path.read_text())
        strategy = build_method(config["name"], **config["options"])
        SamplerSettings(**config["sampler"], gen_length=256, steps=256).resolve(tiny_model("llada").spec, 16)
        assert isinstance(strategy, DyLLM)


# -- the step-by-step reference (spec B.7) ------------------------------------------------


def _reference(model, prompt: list[int], gen: int, steps: int, block: int, full: int, tau: float, period: int):
    """B.7 for one request, unoptimised: every projection for every row, explicit softmaxes,
    caches as plain tensors. Returns the sequence, per step the per-layer salient positions,
    and the smallest |cos - tau| seen (how far every decision is from a tie)."""
    spec = model.spec
    mask = spec.tokens.mask
    P, L, n_u = len(prompt), len(prompt) + gen, gen // steps
    x = torch.tensor(prompt + [mask] * gen)
    rope = model.rope_table(torch.arange(L))
    group = spec.n_heads // spec.n_kv_heads
    K, V, C, FF = [None] * spec.n_layers, [None] * spec.n_layers, [None] * spec.n_layers, [None] * spec.n_layers
    decoded, trace, margin = [], [], math.inf
    for c in range(1, steps + 1):
        dense = c <= max(full, 1)
        pruned = not dense and c > period and c % period != 0
        rows = torch.arange(P if pruned else 0, L)
        salient = torch.zeros(L, dtype=torch.bool)
        salient[decoded] = True
        h = model.embed(x[rows])[None]
        layers = []
        for i, block_ in enumerate(model.blocks):
            q, k, v = block_.qkv(block_.attn_norm(h))
            table = rope.select(rows)
            q, k, v = block_.rope(q, table)[0], block_.rope(k, table)[0], v[0]
            if dense:
                K[i], V[i] = k, v
                weights = torch.softmax(
                    q @ K[i].repeat_interleave(group, 0).transpose(1, 2) / math.sqrt(spec.head_dim), -1
                )
                ctx = weights @ V[i].repeat_interleave(group, 0)
                C[i] = ctx
            else:
                update = salient[rows]
                delta_v = torch.zeros_like(V[i])
                delta_v[:, rows[update]] = v[:, update] - V[i][:, rows[update]]
                K[i][:, rows[update]], V[i][:, rows[update]] = k[:, update], v[:, update]
                weights = torch.softmax(
                    q @ K[i].repeat_interleave(group, 0).transpose(1, 2) / math.sqrt(spec.head_dim), -1
                )
                exact = weights @ V[i].repeat_interleave(group, 0)
                approx = C[i][:, rows] + weights @ delta_v.repeat_interleave(group, 0)
                ctx = torch.where(update[None, :, None], exact, approx)
                old = C[i][:, rows]
                cos = (ctx * old).sum((0, 2)) / (ctx.square().sum((0, 2)).sqrt() * old.square().sum((0, 2)).sqrt())
                margin = min(margin, float((cos - tau).abs().min()))
                C[i][:, rows] = ctx
                salient = torch.zeros(L, dtype=torch.bool)
                salient[rows[cos < tau]] = True
                layers.append(salient.nonzero().flatten().tolist())
            h = h + block_.attn_out(ctx[None])
            ffn = block_.mlp(block_.mlp_norm(h))[0]
            if dense:
                FF[i] = ffn
            else:
                FF[i][rows[salient[rows]]] = ffn[salient[rows]]
            h = h + FF[i][rows][None]
        logits = model.logits(h)[0]
        if spec.logit_shift:
            logits = torch.cat([logits[:1], logits[:-1]])
        filled = int((x[P:] != mask).sum())
        start = P + (filled // block) * block
        candidates = [p for p in range(start, min(start + block, L)) if x[p] == mask]
        cand_logits = logits[torch.tensor(candidates) - rows[0]]
        ordered, order = torch.sort(cand_logits, descending=True)  # top-p 1.0, as the config
        drop = torch.softmax(ordered, -1).cumsum(-1) > 1.0
        drop[:, 1:], drop[:, 0] = drop[:, :-1].clone(), False
        cand_logits = cand_logits.masked_fill(
            torch.zeros_like(drop).scatter(1, order, drop), torch.finfo(logits.dtype).min
        )
        probs = torch.softmax(cand_logits, -1)
        tokens = probs.argmax(-1)
        scores = probs.max(-1).values if spec.family == "llada" else (probs * torch.log(probs + 1e-10)).sum(-1)
        ranked = sorted(range(len(candidates)), key=lambda j: -float(scores[j]))[:n_u]
        decoded = [candidates[j] for j in ranked]
        for j in ranked:
            x[candidates[j]] = tokens[j]
        if not dense:
            trace.append(layers)
    return x, trace, margin


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_matches_the_reference_step_by_step(family):
    model = model_in(family, torch.float64)
    prompt = prompts(1, 10, seed=3)
    tau, full = 0.99, 2
    with torch.no_grad():
        expected, trace, margin = _reference(model, prompt[0].tolist(), 16, 16, 8, full, tau, period=4)
    assert margin > 1e-9  # no decision is a near tie, so both sides must agree exactly
    strategy = build_method("dyllm", threshold=tau, num_full_steps=full, record_salient=True)
    out = generate(model, prompt, method=strategy, **engine_sampler(eos_early_exit=False))
    assert torch.equal(out.sequences[0], expected)
    sparse = [r for r in strategy.trace if r.kind != "full"]
    assert [r.kind for r in sparse] == ["sparse", "sparse"] + ["pruned"] * 3 + ["sparse"] + ["pruned"] * 3 + [
        "sparse"
    ] + ["pruned"] * 3 + ["sparse"]
    ours = [[layer[0].nonzero().flatten().tolist() for layer in r.salient] for r in sparse]
    assert ours == trace
    assert any(layer for step in trace for layer in step)  # the case is not trivially empty
    assert any(len(layer) < 10 for step in trace for layer in step)


# -- the Triton kernel against the PyTorch path -----------------------------------------------


def _context_case(seed: int, dtype: torch.dtype, padded: bool):
    """A layer's update inputs: 2 requests, 4 query heads on 2 KV heads, 150 keys (3 tiles, the
    last partial), pruned queries from column 20, 5 salient rows (one request with 2 empty slots)."""
    g = torch.Generator().manual_seed(seed)
    batch, heads, kv_heads, length, dim, first = 2, 4, 2, 150, 16, 20
    rows = length - first
    q = torch.randn(batch, heads, rows, dim, generator=g).to(dtype).to(compute_dtype(dtype))
    keys = torch.randn(batch, kv_heads, length + 1, dim, generator=g).to(dtype)
    salient = torch.tensor([[25, 70, 100, 140, 149], [64, 128, 131, length, length]])
    delta_v = torch.randn(batch, kv_heads, 5, dim, generator=g).to(dtype)
    exact = torch.randn(batch, heads, 5, dim, generator=g).to(compute_dtype(dtype))
    cached = torch.randn(batch, heads, rows, dim, generator=g).to(dtype)
    starts = torch.tensor([0, 53]) if padded else None
    real = (torch.arange(first, length)[None, :] >= starts[:, None]) if padded else None
    return q, keys, delta_v, salient, exact, cached, real, starts, first


def check_triton_against_torch(device: str) -> None:
    """The Triton kernel against the PyTorch path on one device: fixed and legacy builds, fp32 and
    bf16 caches, with and without left padding; contexts within one ulp of the cache dtype, the
    salient sets equal. Imported by the interpreter run below (a subprocess: TRITON_INTERPRET must be
    set before triton loads) and run directly on CUDA."""
    from dllm_accel.methods.dyllm_triton import triton_update_context

    for kernel, quirks in (("fixed", (False, False)), ("legacy", (True, True))):
        for dtype in (torch.float32, torch.bfloat16):
            for padded in (False, True):
                case = [t.to(device) if isinstance(t, torch.Tensor) else t for t in _context_case(1, dtype, padded)]
                q, keys, delta_v, salient, exact, cached, real, starts, first = case
                args = (q, keys, delta_v, salient, exact)
                ours, theirs = cached.clone(), cached.clone()
                mask_t = update_context_torch(*args, ours, real, starts, first, 0.999, *quirks)
                mask_k = triton_update_context(*args, theirs, real, starts, first, 0.999, *quirks)
                tol = 1e-5 if dtype == torch.float32 else 2**-5  # one bf16 ulp of values below 8
                err = float((ours.float() - theirs.float()).abs().max())
                assert err <= tol, (kernel, dtype, padded, err)
                assert torch.equal(mask_t, mask_k), (kernel, dtype, padded)
                assert mask_t.any() and not mask_t.all(), (kernel, dtype, padded)
                print(kernel, dtype, padded, "max abs difference", err)


@pytest.mark.slow
def test_triton_kernel_matches_the_pytorch_path_interpreted():
    """The CUDA kernel, run by Triton's CPU interpreter, against the PyTorch path."""
    pytest.importorskip("triton")
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}"}
    check = "from test_dyllm import check_triton_against_torch; check_triton_against_torch('cpu')"
    run = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_kernel_matches_the_pytorch_path_on_cuda():
    pytest.importorskip("triton")
    check_triton_against_torch("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["dyllm", "combined_dyllm_dual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_on_cuda_runs_the_triton_kernel_once_per_sparse_layer(monkeypatch, method, dtype):
    """On CUDA a sparse layer's context update is one Triton launch (none where no key changed), and
    the run decodes every position in as many passes as the PyTorch path's run. Tokens are not
    compared: both sum in other orders, and a near-tied cosine may flip (spec B.8 items 6 and 14)."""
    pytest.importorskip("triton")
    from dllm_accel.methods import dyllm_triton

    calls = []
    kernel = dyllm_triton.triton_update_context

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    model = load_model(tiny_checkpoint("llada"), dtype=dtype, device="cuda")
    prompt = prompts(2, 12).cuda()
    settings = (
        engine_sampler(eos_early_exit=False)
        if method == "dyllm"
        else {"gen_length": 16, "steps": 16, "block_length": 8}
    )
    monkeypatch.setattr(dyllm_triton, "triton_update_context", counted)
    strategy = build_method(method)
    out = generate(model, prompt, method=strategy, **settings)
    sparse_layers = sum(len(r.counts) for r in strategy.trace if r.kind != "full")
    assert 0 < len(calls) <= sparse_layers
    assert not (out.sequences[:, 12:] == model.spec.tokens.mask).any()
    monkeypatch.setattr(dyllm_triton, "available", lambda: False)
    reference = generate(model, prompt, method=build_method(method), **settings)
    assert out.nfe == reference.nfe and not (reference.sequences[:, 12:] == model.spec.tokens.mask).any()


@pytest.mark.parametrize("padded", [False, True])
def test_context_operator_declaration_holds(padded):
    """The layer's one operator: its schema (``cached`` mutated, nothing else), its fake kernel
    (what torch.compile traces) and the CPU kernel agree, checked by ``torch.library.opcheck``;
    and it returns what the PyTorch path returns."""
    q, keys, delta_v, salient, exact, cached, real, starts, first = _context_case(2, torch.float32, padded)
    args = (q, keys, delta_v, salient, exact, cached.clone(), real, starts, first, 0.999, False, False)
    torch.library.opcheck(update_context, args, test_utils=("test_schema", "test_faketensor"))
    ours, theirs = cached.clone(), cached.clone()
    with torch.no_grad():
        mask = update_context(*args[:5], ours, *args[6:])
        expected = update_context_torch(*args[:5], theirs, *args[6:])
    assert torch.equal(mask, expected) and mask.any() and not mask.all()
    assert torch.equal(ours, theirs) and not torch.equal(ours, cached)


def test_categorical_draw_without_a_host_read_is_the_distributions():
    """The engine sampler draws as ``Categorical(probs).sample()`` (scoring.categorical_or_argmax)."""
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    expected = torch.distributions.Categorical(probs=torch.softmax(logits, dim=-1)).sample()
    torch.manual_seed(3)
    assert torch.equal(dyllm_sample(logits, "dream", 1.0, None, None)[1], expected)


# -- host reads and launches (issue 15) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["dyllm", "combined_dyllm_dual"])
def test_one_host_read_per_layer_and_launches_near_vanilla(method, family, batch):
    """Per step at most the loop's one read plus one per layer (the widest row's salient count);
    the statistics are read once, after the last step; launches per layer within 1.5x vanilla's."""
    model = tiny_model(family)
    ids = prompts(batch, 12)
    mask = torch.ones_like(ids)
    mask[1:, :3] = 0
    settings = {"gen_length": 32, "steps": 32, "block_length": 16}
    if method == "dyllm":
        settings |= {"sampler": "dyllm", "top_p": 1.0, "eos_early_exit": True, "temperature": 0.7}
    counted = {}
    for name in ("vanilla", method):
        torch.manual_seed(0)
        with OpCounter(model) as counter:
            generate(model, ids, mask if batch > 1 else None, method=name, **settings)
        counted[name] = counter.counts
    ours, layers = counted[method], model.spec.n_layers
    assert ours.max_syncs_per_layer == 1
    assert max(r.syncs for r in ours.steps[:-1]) <= 1 + layers
    assert ours.steps[-1].syncs <= 2 + layers  # the statistics' one read at the end
    assert ours.launches_per_layer <= 1.5 * counted["vanilla"].launches_per_layer
