"""Sparse-dLLM: token-exact parity with the official code, and the invariants its options promise."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_matches_case, load_cases, tiny_model

from dllm_accel import build_method, generate, load_model
from dllm_accel.generation import Canvas, SamplerSettings
from dllm_accel.methods.base import ForwardStrategy
from dllm_accel.methods.sparse_dllm_cache import UNUSED_SLOT, SparseKVCache, max_pool
from dllm_accel.paths import tiny_checkpoint

FAMILIES = ("llada", "dream")
PASS_KIND = {0: "dense", 1: "dense+select", 2: "sparse"}  # the official cache_state of each forward


def _cases():
    return [(fam, case) for fam in FAMILIES for case in load_cases(f"sparse_dllm/{fam}_sparse_generate.json")]


def _settings(case: dict) -> dict:
    """The official call's sampler settings (Dream's official block is a hard-coded 32)."""
    settings = {k: v for k, v in case["settings"].items() if k not in ("return_dict_in_generate", "output_history")}
    return {**settings, "block_length": case["block_length"]}


def _strategy(case: dict, **overrides):
    config = case["model_config"]
    options = {"keep_ratio": config["keep_ratio"], "kernel_size": config["kernel_size"], "record_kept": True}
    return build_method("sparse_dllm", **{**options, **overrides})


def _run(family: str, prompt: torch.Tensor, strategy, settings: dict, mask: torch.Tensor | None = None, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return generate(tiny_model(family), prompt, mask, method=strategy, output_history=True, **settings)


def _candidate_index(positions: list[int], build: dict) -> list[int]:
    """Absolute kept positions -> indices into the official candidate array [prefix ; suffix]."""
    width = build["block_end"] - build["block_start"]
    return [p if p < build["block_start"] else p - width for p in positions]


@pytest.mark.parametrize(("family", "case"), _cases(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_matches_official(family, case):
    model = tiny_model(family)
    strategy = _strategy(case)
    prompt = torch.tensor(case["prompt_ids"])
    seed = case["torch_manual_seed"] if case.get("rng_dependent") else None
    out = _run(family, prompt, strategy, _settings(case), seed=seed)
    assert_matches_case(out, case, prompt, model.spec.tokens.mask)
    assert [r.kind for r in strategy.trace] == [PASS_KIND[s] for s in case["cache_state_per_step"]]
    assert out.stats["dense_passes"] == case["dense_forward_calls"]
    assert out.stats["sparse_passes"] == case["sparse_forward_calls"]
    builds = case["sparse_cache_builds"]
    assert len(strategy.kept_positions) == len(builds)
    for build, kept in zip(builds, strategy.kept_positions, strict=True):
        assert kept.shape[-1] == build["keep_num"]
        for layer, positions in enumerate(kept[:, 0].tolist()):
            # the cache holds the official top-k order, even through max-pool ties
            assert _candidate_index(positions, build) == build["kept_indices_topk_order"][layer]
            assert sorted(positions) == build["kept_positions_sorted"][layer]


def _robust_case(family: str) -> dict:
    return next(
        c for c in load_cases(f"sparse_dllm/{family}_sparse_generate.json") if c["tie_free"] and "trajectory" in c
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_rows_equal_their_batch_of_one(family):
    """Selection is per row: every row of a batch equals its own batch-1 run, kept keys included."""
    case = _robust_case(family)
    model = tiny_model(family)
    first = torch.tensor(case["prompt_ids"])
    others = torch.randint(
        0, model.spec.tokens.mask - 1, (2, first.shape[1]), generator=torch.Generator().manual_seed(7)
    )
    prompts = torch.cat([first, others])
    batched = _strategy(case)
    out = _run(family, prompts, batched, _settings(case))
    assert out.sequences[0].tolist() == case["expected_output_ids"][0]
    for row in range(prompts.shape[0]):
        alone = _strategy(case)
        single = _run(family, prompts[row : row + 1], alone, _settings(case))
        assert torch.equal(out.sequences[row], single.sequences[0])
        for kept_batched, kept_alone in zip(batched.kept_positions, alone.kept_positions, strict=True):
            assert torch.equal(kept_batched[:, row], kept_alone[:, 0])
    assert not torch.equal(batched.kept_positions[0][:, 0], batched.kept_positions[0][:, 1])


class NoEviction(ForwardStrategy):
    """LLaDA reference for keep_ratio 1: the delayed cache with every non-block key, in position order."""

    name = "no_eviction_reference"

    def forward(self, model, canvas):
        s, e = canvas.block_start, canvas.block_end
        rope = model.rope_table(canvas.positions)
        if canvas.block_step <= 1:
            x, self.kv = model.embed(canvas.x), []
            for blk in model.blocks:
                q, k, v = blk.qkv(blk.attn_norm(x))
                q, k = blk.rope(q, rope), blk.rope(k, rope)
                self.kv.append((torch.cat([k[:, :, :s], k[:, :, e:]], 2), torch.cat([v[:, :, :s], v[:, :, e:]], 2)))
                x = x + blk.attn_out(blk.attend(q, k, v))
                x = x + blk.mlp(blk.mlp_norm(x))
            canvas.nfe += 1
            return model.logits(x), slice(0, canvas.length)
        rope, x = rope.select(slice(s, e)), model.embed(canvas.x[:, s:e])
        for blk, (k_rest, v_rest) in zip(model.blocks, self.kv, strict=True):
            q, k, v = blk.qkv(blk.attn_norm(x))
            keys, values = torch.cat([k_rest, blk.rope(k, rope)], 2), torch.cat([v_rest, v], 2)
            x = x + blk.attn_out(blk.attend(blk.rope(q, rope), keys, values))
            x = x + blk.mlp(blk.mlp_norm(x))
        canvas.nfe += 1
        return model.logits(x), slice(s, e)


@pytest.mark.parametrize("options", [{}, {"kernel_size": None, "joint_selection": False}, {"kept_order": "position"}])
def test_keep_ratio_one_keeps_everything_and_equals_no_eviction(options):
    case = _robust_case("llada")
    prompt = torch.tensor(case["prompt_ids"])
    strategy = build_method("sparse_dllm", keep_ratio=1.0, record_kept=True, **options)
    out = _run("llada", prompt, strategy, _settings(case))
    reference = _run("llada", prompt, NoEviction(), _settings(case))
    assert torch.equal(out.sequences, reference.sequences)
    for build, kept in zip(case["sparse_cache_builds"], strategy.kept_positions, strict=True):
        everything = [p for p in range(out.sequences.shape[1]) if not build["block_start"] <= p < build["block_end"]]
        assert all(sorted(layer) == everything for layer in kept[:, 0].tolist())


@pytest.mark.parametrize("kernel_size", [None, 1, 2, 3, 4])
@pytest.mark.parametrize("keep_ratio", [0.3, 0.77])
def test_kept_count_is_the_floor_for_every_kernel(kernel_size, keep_ratio):
    """floor((L - B) * keep_ratio) distinct non-block keys, even kernels included (the official code crashes)."""
    prompt = torch.tensor(_robust_case("llada")["prompt_ids"])
    settings = {"gen_length": 48, "steps": 12, "block_length": 16}
    strategy = build_method("sparse_dllm", keep_ratio=keep_ratio, kernel_size=kernel_size, record_kept=True)
    out = _run("llada", prompt, strategy, settings)
    length = out.sequences.shape[1]
    assert strategy.cache.keep == int((length - 16) * keep_ratio)
    for block, kept in enumerate(strategy.kept_positions):
        start = prompt.shape[1] + 16 * block
        for layer in kept[:, 0].tolist():
            assert len(layer) == len(set(layer)) == strategy.cache.keep
            assert all(0 <= p < length and not start <= p < start + 16 for p in layer)


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5])
def test_max_pool_keeps_length_and_the_official_values(kernel_size):
    scores = torch.randn(2, 11, generator=torch.Generator().manual_seed(0))
    official = F.max_pool1d(scores.unsqueeze(1), kernel_size, stride=1, padding=kernel_size // 2).squeeze(1)
    ours = max_pool(scores, kernel_size)
    assert ours.shape == scores.shape
    assert torch.equal(ours, official[:, : scores.shape[1]])


def test_separate_budgets_split_the_same_total():
    case = _robust_case("llada")
    prompt = torch.tensor(case["prompt_ids"])
    strategy = build_method("sparse_dllm", keep_ratio=0.5, joint_selection=False, record_kept=True)
    out = _run("llada", prompt, strategy, _settings(case))
    assert strategy.cache.keep == int((out.sequences.shape[1] - 32) * 0.5)
    for build, kept in zip(case["sparse_cache_builds"], strategy.kept_positions, strict=True):
        for layer in kept[:, 0].tolist():
            in_prefix = sum(p < build["block_start"] for p in layer)
            assert in_prefix == int(build["block_start"] * 0.5)
    first = case["sparse_cache_builds"][0]  # joint selection spends the budget unevenly there
    joint_prefix = [sum(p < first["block_start"] for p in layer) for layer in first["kept_positions_sorted"]]
    assert joint_prefix != [int(first["block_start"] * 0.5)] * len(joint_prefix)


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_delay_moves_the_selecting_pass(delay):
    case = _robust_case("dream")
    strategy = build_method("sparse_dllm", delay=delay)
    out = _run("dream", torch.tensor(case["prompt_ids"]), strategy, _settings(case))
    per_block = ["dense"] * delay + ["dense+select"] + ["sparse"] * (32 - delay - 1)
    assert [r.kind for r in strategy.trace] == per_block * 2
    assert out.stats["dense_passes"] == 2 * (delay + 1)
    assert (out.sequences == tiny_model("dream").spec.tokens.mask).sum() == 0


def test_meter_counts_kept_keys_and_attention_flops():
    case = _robust_case("llada")
    spec = tiny_model("llada").spec
    strategy = _strategy(case)
    out = _run("llada", torch.tensor(case["prompt_ids"]), strategy, _settings(case))
    length, block, keep = out.sequences.shape[1], 32, case["sparse_cache_builds"][0]["keep_num"]
    per_key = 4 * spec.n_heads * spec.head_dim * spec.n_layers
    dense, sparse = per_key * length * length, per_key * block * (keep + block)
    assert out.stats["kept_keys_per_layer"] == keep
    assert [r.keys_per_layer for r in strategy.trace[:3]] == [(length,) * spec.n_layers] * 2 + [(keep + block,) * 3]
    assert [r.attention_flops for r in strategy.trace[:3]] == [dense, dense, sparse]
    assert out.stats["attention_flops"] == sum(r.attention_flops for r in strategy.trace) == 4 * dense + 60 * sparse
    assert out.stats["attention_flops_dense"] == 64 * dense


def test_block_passes_attend_to_one_preallocated_buffer(monkeypatch):
    """The cache is written in place: every block pass of every block sees the same storage."""
    pointers: dict[int, set[int]] = {}
    original = SparseKVCache.with_block

    def spy(self, layer, k_block, v_block):
        keys, values, mask = original(self, layer, k_block, v_block)
        pointers.setdefault(layer, set()).add((keys.data_ptr(), values.data_ptr()))
        return keys, values, mask

    monkeypatch.setattr(SparseKVCache, "with_block", spy)
    case = _robust_case("llada")
    _run("llada", torch.tensor(case["prompt_ids"]), _strategy(case), _settings(case))
    assert len(pointers) == tiny_model("llada").spec.n_layers
    assert all(len(p) == 1 for p in pointers.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_scaling_factor_scales_rope_theta(family):
    """The dense pass with scaling_factor f equals the plain model whose RoPE theta is f times larger."""
    scaled = load_model(tiny_checkpoint(family), dtype=torch.float32)
    scaled.spec = dataclasses.replace(scaled.spec, rope_theta=scaled.spec.rope_theta * 4.0)
    prompt = torch.tensor(_robust_case(family)["prompt_ids"])
    settings = SamplerSettings(gen_length=32, steps=32, block_length=32).resolve(scaled.spec, prompt.shape[1])
    canvas = Canvas.start(prompt, None, settings, scaled.spec)
    strategy = build_method("sparse_dllm", scaling_factor=4.0)
    model = tiny_model(family)
    strategy.begin(model, canvas)
    strategy.begin_block(model, canvas)
    with torch.no_grad():
        logits, rows = strategy.forward(model, canvas)
        expected = scaled.shift_logits(scaled(canvas.x)[0])[:, rows]
        plain = model.shift_logits(model(canvas.x)[0])[:, rows]
    assert (logits - expected).abs().max() <= 1e-4
    assert (logits - plain).abs().max() > 1e-2


def test_kept_order_position_changes_only_summation_order():
    case = _robust_case("llada")
    strategy = _strategy(case, kept_order="position")
    out = _run("llada", torch.tensor(case["prompt_ids"]), strategy, _settings(case))
    assert out.sequences.tolist() == case["expected_output_ids"]
    kept = strategy.kept_positions[0][:, 0]
    assert torch.equal(kept, kept.sort(dim=-1).values)


def _left_padded(prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(p.shape[0] for p in prompts)
    ids = torch.stack([F.pad(p, (width - p.shape[0], 0), value=pad) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (width - p.shape[0], 0)) for p in prompts])
    return ids, mask


@pytest.mark.parametrize(
    ("family", "options"),
    [("llada", {}), ("dream", {}), ("llada", {"joint_selection": False, "kernel_size": 2, "kept_order": "position"})],
)
def test_left_padded_rows_equal_their_batch_of_one(family, options):
    """A padded row keeps its own floor((L_row - B) * keep_ratio) keys, chosen among its own keys only."""
    case = _robust_case(family)
    model = tiny_model(family)
    generator = torch.Generator().manual_seed(11)
    first = torch.tensor(case["prompt_ids"][0])
    shorter = [torch.randint(0, model.spec.tokens.mask - 1, (n,), generator=generator) for n in (15, 8)]
    prompts = [first, *shorter]
    ids, mask = _left_padded(prompts, model.spec.tokens.pad)
    batched = _strategy(case, **options)
    out = _run(family, ids, batched, _settings(case), mask=mask)
    if not options:
        assert out.sequences[0].tolist() == case["expected_output_ids"][0]
    block, ratio = case["block_length"], case["model_config"]["keep_ratio"]
    kept_per_row = []
    for row, prompt in enumerate(prompts):
        pad = ids.shape[1] - prompt.shape[0]
        alone = _strategy(case, **options)
        single = _run(family, prompt[None], alone, _settings(case))
        assert torch.equal(out.sequences[row, pad:], single.sequences[0])
        budget = int((single.sequences.shape[1] - block) * ratio)
        for kept_batched, kept_alone in zip(batched.kept_positions, alone.kept_positions, strict=True):
            used = kept_batched[:, row, :budget]
            assert (kept_batched[:, row, budget:] == UNUSED_SLOT).all()
            assert torch.equal(used - pad, kept_alone[:, 0])  # pads never kept: every position is >= pad
        kept_per_row.append(budget)
    assert kept_per_row == sorted(set(kept_per_row), reverse=True)  # three different budgets
    assert batched.cache.keep == kept_per_row[0]
    assert out.stats["kept_keys_per_layer"] == sum(kept_per_row) / len(kept_per_row)


def test_a_row_below_the_largest_budget_hides_its_empty_slots():
    cache = SparseKVCache(1, 2, 1, 3, 2, 4, torch.float32, torch.device("cpu"), padded=True)
    k, v = torch.randn(2, 1, 6, 4), torch.randn(2, 1, 6, 4)
    cache.store_row(0, 1, torch.tensor([4, 0]), k, v)
    keys, values, mask = cache.with_block(0, torch.zeros(2, 1, 2, 4), torch.zeros(2, 1, 2, 4))
    assert torch.equal(keys[1, :, :2], k[1][:, [4, 0]]) and torch.equal(values[1, :, :2], v[1][:, [4, 0]])
    assert mask[1].tolist() == [True, True, False, True, True] and mask[0].all()
    assert cache.positions[0, 1].tolist() == [4, 0, UNUSED_SLOT]
    unpadded = SparseKVCache(1, 2, 1, 3, 2, 4, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="row 1 keeps 2 < 3 keys"):
        unpadded.store_row(0, 1, torch.tensor([4, 0]), k, v)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"keep_ratio": 1.5}, "keep_ratio=1.5"),
        ({"keep_ratio": -0.1}, "keep_ratio=-0.1"),
        ({"kernel_size": 0}, "kernel_size=0"),
        ({"kernel_size": 2.5}, "kernel_size=2.5"),
        ({"delay": -1}, "delay=-1"),
        ({"kept_order": "random"}, "'random'"),
        ({"scaling_factor": 0}, "scaling_factor=0"),
    ],
)
def test_bad_options_name_the_value(options, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build_method("sparse_dllm", **options)


def test_bad_sampler_settings_are_rejected():
    prompt = torch.tensor(_robust_case("dream")["prompt_ids"])
    with pytest.raises(ValueError, match="at least 2 steps per block"):
        generate(tiny_model("dream"), prompt, method="sparse_dllm", max_new_tokens=64, steps=2, block_length=32)
    with pytest.raises(ValueError, match="cfg_scale"):
        generate(tiny_model("llada"), prompt, method="sparse_dllm", gen_length=32, steps=32, cfg_scale=1.0)
