"""The ``compile`` setting: token-identical to eager, a bounded number of compilations, fewer launches.

Compiling on CPU costs tens of seconds per graph, so ``make test`` runs the representative
checks (vanilla LLaDA over several prompt lengths: one graph; launches per layer; the compiled
norm and similarity equal eager bit for bit), and every
official fixture case, bf16 and the per-preset compile bound run under ``compiled_matrix``
(``make test-compiled``). The CUDA-graph path runs only on a GPU.
"""

from __future__ import annotations

import re
from functools import cache

import pytest
import test_dllm_cache
import test_fast_dllm
import test_parity_vanilla
import test_sparse_dllm
import torch
from conftest import load_cases, tiny_model
from torch._dynamo.utils import counters

from dllm_accel import generate, load_model
from dllm_accel.demo import method_configs
from dllm_accel.methods.fast_dllm_cache import BlockKVCache
from dllm_accel.models.compiled import compiling, cosine_similarity
from dllm_accel.models.core import rms_norm
from dllm_accel.paths import tiny_checkpoint
from dllm_accel.profiling import OpCounter, compiled_launches_per_layer

PROMPT_LENGTHS = (12, 16, 20)


@pytest.fixture(autouse=True)
def _never_fall_back_to_eager():
    """Past dynamo's recompile limit a pass would silently run eagerly, and a check would prove nothing."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_vanilla_matches_official_with_two_graphs_for_any_prompt_lengths():
    cases = [c for c in load_cases("llada_generate.json") if c["attention_mask"] is None and not c.get("rng_dependent")]
    by_length = {}  # one case per sequence length: each new length would be a recompilation
    for case in cases:
        if case["settings"].get("cfg_scale", 0) == 0:
            by_length.setdefault(len(case["prompt_ids"][0]) + case["settings"]["gen_length"], case)
    cases = list(by_length.values())[:4]
    assert len(cases) == 4
    before = _graphs()
    for case in cases:
        out = generate(tiny_model("llada"), torch.tensor(case["prompt_ids"]), compile=True, **case["settings"])
        assert out.sequences.tolist() == case["expected_output_ids"], case["name"]
    # dynamo compiles the first length static, then once more dynamic in length: 4 lengths, 2 graphs
    assert _graphs() - before <= 2


# -- reductions: bit-identical to eager ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_compiled_norm_and_similarity_are_bit_identical_to_eager(dtype):
    """A fused sum adds in another order than aten's (1 ulp), enough to flip dLLM-Cache's near-tied
    V-similarity picks; the compiled RMSNorm and cosine similarity must equal eager bit for bit."""
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 37, 128, generator=generator).mul(3).to(dtype) for _ in range(2))
    weight = torch.randn(128, generator=generator).to(dtype)
    with compiling(True):
        fused = torch.compile(lambda a, b, w: (rms_norm(a, w, 1e-5), cosine_similarity(a, b)), dynamic=True)
        norm, similarity = fused(x, y, weight)
    assert torch.equal(norm, rms_norm(x, weight, 1e-5))
    assert torch.equal(similarity, torch.nn.functional.cosine_similarity(x, y, dim=-1))


@pytest.mark.slow
@pytest.mark.compiled_matrix
def test_compiled_dllm_cache_holds_its_near_tied_case_and_stops_compiling():
    """The paper-era case whose V-similarity pick has near-ties (the fused sum flipped one), with every
    pass compiled; then two more prompt lengths: the second of them compiles nothing."""
    case = next(c for f, c in test_dllm_cache._cases() if c["name"].startswith("llada_paper_kp8_kr3_rho0.25"))
    with compiling(True):
        test_dllm_cache.test_matches_official("llada", case)
    model = tiny_model("llada")
    options = {"prompt_interval_steps": 8, "gen_interval_steps": 3, "transfer_ratio": 0.25, "layer0_refresh": "paper"}
    for i, length in enumerate(PROMPT_LENGTHS[1:]):
        prompt = torch.arange(5, 5 + length).view(1, length) + 10
        settings = {"method": "dllm_cache", "gen_length": 32, "steps": 32, "block_length": 8, **options}
        eager = generate(model, prompt, **settings)
        before = _graphs()
        compiled = generate(model, prompt, compile=True, **settings)
        assert torch.equal(compiled.sequences, eager.sequences), length
        if i == 1:
            assert _graphs() == before, "a third prompt length recompiled"


# -- every official fixture case, compiled ------------------------------------------------
def _fast_dllm_cases():
    cases = [("llada", c) for c in test_fast_dllm.LLADA_CASES] + [("dream", c) for c in test_fast_dllm.DREAM_CASES]
    return [(test_fast_dllm.test_matches_official, f, c) for f, c in cases]


FIXTURE_CASES = (
    [(test_parity_vanilla.test_generation_matches_official, f, c) for f, c in test_parity_vanilla._generate_cases()]
    + _fast_dllm_cases()
    + [(test_dllm_cache.test_matches_official, f, c) for f, c in test_dllm_cache._cases()]
    + [(test_sparse_dllm.test_matches_official, f, c) for f, c in test_sparse_dllm._cases()]
)


@pytest.mark.slow
@pytest.mark.compiled_matrix
@pytest.mark.parametrize(
    ("check", "family", "case"),
    FIXTURE_CASES,
    ids=[f"{check.__module__[5:]}-{family}-{case['name']}" for check, family, case in FIXTURE_CASES],
)
def test_every_fixture_case_holds_compiled(check, family, case):
    """The fixture test itself (ids, NFE, counts, trajectories, pass kinds), with every pass compiled."""
    with compiling(True):
        check(family, case)


# -- bf16 and the compile bound, for every method preset ----------------------------------
PRESETS = method_configs()


@cache
def _bf16_model(family: str):
    return load_model(tiny_checkpoint(family), dtype=torch.bfloat16)


def _settings(entry: dict) -> dict:
    # the preset's rules and options at one shared shape (its own block_length would not divide 16)
    return {
        **(entry.get("sampler") or {}),
        **(entry.get("options") or {}),
        "gen_length": 16,
        "steps": 16,
        "block_length": 8,
    }


@pytest.mark.slow
@pytest.mark.compiled_matrix
@pytest.mark.parametrize("family", ("llada", "dream"))
@pytest.mark.parametrize("entry", PRESETS, ids=[e["preset"] for e in PRESETS])
def test_bf16_compiled_equals_eager_and_stops_compiling(family, entry):
    """Every preset (the registry's methods through conf/method): same tokens and NFE in bf16,
    and once two prompt lengths have run, a third compiles nothing new."""
    model = _bf16_model(family)
    for length in PROMPT_LENGTHS:
        prompt = torch.arange(5, 5 + 2 * length).view(2, length) % 1500 + 10
        torch.manual_seed(0)
        try:
            eager = generate(model, prompt, method=entry["name"], **_settings(entry))
        except ValueError as refused:  # a preset for another family or layout: refused the same way
            with pytest.raises(type(refused), match=re.escape(str(refused))):
                generate(model, prompt, method=entry["name"], compile=True, **_settings(entry))
            return
        before = _graphs()
        torch.manual_seed(0)
        compiled = generate(model, prompt, method=entry["name"], compile=True, **_settings(entry))
        assert torch.equal(compiled.sequences, eager.sequences), length
        assert compiled.nfe == eager.nfe
        if length == PROMPT_LENGTHS[-1]:
            assert _graphs() == before, "a third prompt length recompiled"


# -- launches per layer --------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_pass_launches_at_most_half_of_eager():
    """Counted as the issue counts eager (OpCounter over a vanilla generation) against the kernel
    calls of the compiled trunk."""
    model = tiny_model("llada")
    prompt = torch.arange(2 * 16).view(2, 16) + 10
    with OpCounter(model) as counter:
        generate(model, prompt, gen_length=8, steps=4)
    eager = counter.counts.launches_per_layer
    compiled = compiled_launches_per_layer(model, torch.arange(2 * 24).view(2, 24) + 10)
    assert compiled <= eager / 2


# -- CUDA graphs ----------------------------------------------------------------------------
def test_block_start_as_a_device_index_equals_the_slice():
    """The CUDA-graph form of Fast-dLLM's pass (start as a 0-d tensor) computes what the slice form does."""
    model = tiny_model("llada")
    x = torch.arange(2 * 40).view(2, 40) % 1500 + 10
    rope = model.rope_table(torch.arange(40))
    by_slice, by_index = BlockKVCache(model, 2, 40), BlockKVCache(model, 2, 40)
    with torch.no_grad():
        for cache in (by_slice, by_index):
            cache.run(model, x, 0, rope, None)  # refresh
        plain = by_slice.run(model, x[:, 16:24], 16, rope, None)
        indexed = by_index.run(model, x[:, 16:24], torch.tensor(16), rope, None)
    assert torch.equal(plain, indexed)
    assert torch.equal(by_slice.keys, by_index.keys) and torch.equal(by_slice.values, by_index.values)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["fast_dllm_dual", "sparse_dllm", "fast_dllm_prefix"])
def test_cuda_graph_block_passes_equal_eager(method):
    entry = next(e for e in PRESETS if e["preset"] == method)
    model = load_model(tiny_checkpoint("llada"), dtype=torch.bfloat16, device="cuda")
    prompt = (torch.arange(32).view(2, 16) + 10).cuda()
    settings = {
        "gen_length": 64,
        "steps": 64,
        "block_length": 32,
        **(entry.get("sampler") or {}),
        **(entry.get("options") or {}),
    }
    eager = generate(model, prompt, method=entry["name"], **settings)
    for _ in range(3):  # warm-up, recording, replays
        compiled = generate(model, prompt, method=entry["name"], compile=True, **settings)
        assert torch.equal(compiled.sequences, eager.sequences)
