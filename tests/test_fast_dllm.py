"""Fast-dLLM: token-exact parity with the official v1 code, batching, cache, rules, presets."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml
from conftest import case_ids, load_cases, tiny_model, transfer_counts
from safetensors.torch import load_file

from dllm_accel import generate
from dllm_accel.generation import SamplerSettings, SettingsError
from dllm_accel.generation.parallel import factor_counts, threshold_commit
from dllm_accel.methods import build_method
from dllm_accel.paths import REPO_ROOT, fixtures_dir

LLADA_CASES = load_cases("fast_dllm/llada_fast_dllm.json")
DREAM_CASES = load_cases("fast_dllm/dream_fast_dllm.json")
LLADA_MODES = {"generate": "none", "generate_with_prefix_cache": "prefix", "generate_with_dual_cache": "dual"}
PRESETS = sorted((REPO_ROOT / "conf" / "method").glob("fast_dllm*.yaml"))



def official_call(family: str, case: dict) -> tuple[str, dict]:
    """Our mode and settings for a recorded official call."""
    settings = {k: v for k, v in case["settings"].items() if k not in ("return_dict_in_generate", "dual_cache")}
    if family == "llada":
        settings["confidence_dtype"] = "float64"  # Fast-dLLM's softmax
        return LLADA_MODES[case["sampler_function"]], settings
    if "generation_utils_block" not in case["sampler_file"]:
        return "none", settings
    return ("dual" if case["settings"]["dual_cache"] else "prefix"), settings


def run_recorded(family: str, case: dict, method: str = "fast_dllm"):
    """Generate as the case's official call did; returns (output, strategy, per pass: the logits
    of the rows the policy read, the pass's input ids, and where those rows sit in the pass)."""
    mode, settings = official_call(family, case)
    strategy = build_method("fast_dllm", mode=mode) if method == "fast_dllm" else build_method(method)
    passes = []
    forward = strategy.forward

    def recording(model, canvas):
        logits, rows = forward(model, canvas)
        computed = canvas.pass_rows or rows
        scored = slice(rows.start - computed.start, rows.stop - computed.start)
        passes.append((logits.clone(), canvas.x[:, computed].clone(), scored))
        return logits, rows

    strategy.forward = recording
    settings["output_history"] = True
    out = generate(tiny_model(family), torch.tensor(case["prompt_ids"]), method=strategy, **settings)
    return out, strategy, passes


def assert_matches_case(family: str, case: dict, out) -> None:
    mask = tiny_model(family).spec.tokens.mask
    prompt = torch.tensor(case["prompt_ids"])
    expected = torch.tensor(case["expected_output_ids"])
    assert torch.equal(out.sequences, expected)
    assert out.nfe == case["nfe"]
    assert int((out.sequences == mask).sum()) == case["masks_left_in_output"]
    start = torch.cat([prompt, torch.full_like(expected[:, prompt.shape[1] :], mask)], dim=1)
    assert transfer_counts(out.trajectory, start, mask) == case["transfer_counts_per_step"]
    if "trajectory" in case:
        assert torch.equal(torch.stack(out.trajectory), torch.tensor(case["trajectory"]["states"]))


@pytest.mark.parametrize(
    ("family", "case"),
    [("llada", c) for c in LLADA_CASES] + [("dream", c) for c in DREAM_CASES],
    ids=[f"llada-{n}" for n in case_ids(LLADA_CASES)] + [f"dream-{n}" for n in case_ids(DREAM_CASES)],
)
def test_matches_official(family, case):
    out, strategy, passes = run_recorded(family, case)
    assert_matches_case(family, case, out)
    assert [p.kind for p in strategy.passes] == case["forward_kinds"]
    assert [[p.start, p.stop] for p in strategy.passes] == case["forward_windows"]
    if "trajectory" not in case:
        return
    diagnostics = load_file(fixtures_dir() / "cases" / "fast_dllm" / f"{family}_fast_dllm_trajectory.safetensors")
    logits_key = "top2_logits" if family == "llada" else "top2_shifted_logits"
    for i, (logits, inputs, scored) in enumerate(passes):
        key = f"{case['name']}.step{i:03d}."
        assert torch.equal(inputs, diagnostics[key + "input_ids"]), key
        # the head ran only over the rows the policy read (``scored`` within the pass)
        official = {name: diagnostics[key + name][:, scored] for name in ("top2_ids", logits_key)}
        top2 = logits.topk(2, dim=-1)
        assert torch.equal(top2.indices[..., 0], official["top2_ids"][..., 0]), key
        assert (top2.values - official[logits_key]).abs().max() <= 1e-4, key
        if family == "llada":
            confidence = torch.softmax(logits.double(), dim=-1).max(dim=-1).values
            assert (confidence - diagnostics[key + "confidence"][:, scored]).abs().max() <= 1e-4, key
        else:
            probs = torch.softmax(logits, dim=-1)
            assert (probs.max(dim=-1).values - diagnostics[key + "max_prob"][:, scored]).abs().max() <= 1e-4, key


NO_CACHE = [("llada", c) for c in LLADA_CASES if c["sampler_function"] == "generate"] + [
    ("dream", c) for c in DREAM_CASES if "generation_utils_block" not in c["sampler_file"]
]


@pytest.mark.parametrize(("family", "case"), NO_CACHE, ids=[f"{f}-{c['name']}" for f, c in NO_CACHE])
def test_parallel_policies_under_vanilla(family, case):
    """Threshold, factor and Dream confidence_threshold are policies: vanilla runs them too."""
    out, _, _ = run_recorded(family, case, method="vanilla")
    assert_matches_case(family, case, out)


def _padded_batch(family: str, lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    spec = tiny_model(family).spec
    generator = torch.Generator().manual_seed(seed)
    first, ordinary = (1664, 1664) if family == "llada" else (1628, 1627)
    prompts = [
        torch.cat([torch.tensor([first]), torch.randint(0, ordinary, (n - 1,), generator=generator)]) for n in lengths
    ]
    width = max(lengths)
    ids = torch.full((len(lengths), width), spec.tokens.pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask, prompts


BATCH_SETTINGS = {
    "llada": [
        {"steps": 24, "confidence_dtype": "float64"},
        {"steps": 48, "threshold": 0.7, "confidence_dtype": "float64"},
    ],
    "dream": [{"steps": 24, "alg": "entropy"}, {"steps": 3, "alg": "confidence_threshold", "threshold": 0.5}],
}


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_padded_batch_equals_batch_one(family, mode):
    """Left-padded prompts of different lengths, batched: every row is its batch-1 run."""
    model = tiny_model(family)
    ids, mask, prompts = _padded_batch(family, [9, 17, 13], seed=5 if mode == "prefix" else 6)
    for settings in BATCH_SETTINGS[family]:
        settings = {"gen_length": 48, "block_length": 16, **settings}
        batched = build_method("fast_dllm", mode=mode)
        out = generate(model, ids, mask, method=batched, **settings)
        per_block = []
        for row, prompt in enumerate(prompts):
            alone = build_method("fast_dllm", mode=mode)
            single = generate(model, prompt[None], method=alone, **settings)
            assert torch.equal(out.sequences[row, ids.shape[1] :], single.sequences[0, prompt.shape[0] :]), (
                row,
                settings,
            )
            refreshes = [i for i, p in enumerate(alone.passes) if p.kind == "full"] + [len(alone.passes)]
            per_block.append([b - a for a, b in pairwise(refreshes)])
        # the batch runs each block until its slowest row is done
        assert out.nfe == sum(max(counts) for counts in zip(*per_block, strict=True)), settings


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_is_preallocated_and_written_in_place(mode):
    """One buffer for the whole generation; a pass rewrites only its own rows."""
    case = next(c for c in LLADA_CASES if c["name"] == "prefix_gen64_steps64_block16")
    strategy = build_method("fast_dllm", mode=mode)
    snapshots = []
    forward = strategy.forward

    def watching(model, canvas):
        logits, rows = forward(model, canvas)
        cache = strategy.cache
        # the pass's own rows: its logits cover only those the policy reads
        snapshots.append((cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.clone(), canvas.pass_rows, canvas.block_step))
        return logits, rows

    strategy.forward = watching
    _, settings = official_call("llada", case)
    generate(tiny_model("llada"), torch.tensor(case["prompt_ids"]), method=strategy, **settings)
    assert len({(k, v) for k, v, *_ in snapshots}) == 1
    length = snapshots[0][2].shape[3]
    for (_, _, before, _, _), (_, _, after, rows, step) in pairwise(snapshots):
        if step == 0:
            continue
        assert (rows.start, rows.stop) != (0, length)
        outside = torch.ones(length, dtype=torch.bool)
        outside[rows] = False
        assert torch.equal(before[:, :, :, outside], after[:, :, :, outside])
        assert not torch.equal(before[:, :, :, rows], after[:, :, :, rows])


def test_dual_step_cap_is_an_option():
    """The official cap leaves 49 masks in this case; without it every block is filled."""
    case = next(c for c in LLADA_CASES if c["name"].endswith("_capped"))
    _, settings = official_call("llada", case)
    prompt = torch.tensor(case["prompt_ids"])
    out = generate(tiny_model("llada"), prompt, method="fast_dllm", mode="dual", dual_step_cap=False, **settings)
    assert int((out.sequences == tiny_model("llada").spec.tokens.mask).sum()) == 0
    assert out.nfe > case["nfe"]


def test_prefix_noise_draw_consumes_the_official_extra_noise():
    settings = {"gen_length": 32, "block_length": 16, "steps": 32, "temperature": 0.5}
    prompt = torch.tensor([LLADA_CASES[0]["prompt_ids"][0]])
    after = {}
    for draw in (True, False):
        torch.manual_seed(0)
        generate(tiny_model("llada"), prompt, method="fast_dllm", mode="prefix", prefix_noise_draw=draw, **settings)
        after[draw] = torch.rand(1)
    assert not torch.equal(after[True], after[False])


def test_dream_entropy_option_ranks_by_alg():
    case = next(c for c in DREAM_CASES if c["name"] == "cache_entropy_new64_steps64_block32")
    mode, settings = official_call("dream", case)
    prompt = torch.tensor(case["prompt_ids"])
    official = generate(
        tiny_model("dream"), prompt, method="fast_dllm", mode=mode, **{**settings, "alg": "maskgit_plus"}
    )
    assert official.sequences.tolist() == case["expected_output_ids"]  # alg is ignored: entropy is hard-coded
    by_alg = generate(
        tiny_model("dream"),
        prompt,
        method="fast_dllm",
        mode=mode,
        dream_entropy=False,
        **{**settings, "alg": "maskgit_plus"},
    )
    assert by_alg.nfe == official.nfe
    assert not torch.equal(by_alg.sequences, official.sequences)


def _factor(ranked: list[float], quirk: bool = True, padding: int = 2) -> int:
    """factor_counts on one row whose candidates are followed by ``padding`` non-candidates."""
    row = torch.tensor([ranked + [-torch.inf] * padding], dtype=torch.float64)
    return int(factor_counts(row, torch.tensor([len(ranked)]), 1.0, quirk)[0])


def test_factor_rule_and_its_last_rank_quirk():
    ranked = [0.9, 0.8, 0.1]  # bounds -1, 1-1/3, 1-1/4
    assert _factor(ranked, quirk=True) == 3  # first failure is the last rank
    assert _factor(ranked, quirk=False) == 2
    assert _factor([0.9, 0.5, 0.1]) == 1
    assert _factor([0.99, 0.9, 0.8]) == 3  # no failure
    assert _factor([0.01]) == 1  # rank 1 always passes
    assert _factor([]) == 0
    assert _factor([0.9, 0.8, 0.1], padding=0) == 3


def test_factor_counts_are_per_row():
    """One call for the batch: each row's own candidates and failures."""
    ranked = torch.tensor([[0.9, 0.8, 0.1, -torch.inf], [0.99, 0.9, 0.8, 0.1]], dtype=torch.float64)
    assert factor_counts(ranked, torch.tensor([3, 3]), 1.0, True).tolist() == [3, 3]
    assert factor_counts(ranked, torch.tensor([3, 4]), 1.0, False).tolist() == [2, 3]


def test_threshold_rule_always_commits_the_best():
    confidence = torch.tensor([[0.2, 0.95, 0.5, 0.91], [0.3, 0.1, 0.4, -torch.inf]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, False], [True, True, True, False]])
    commit = threshold_commit(torch.zeros(2, 4, dtype=torch.long), confidence, candidates, 0.9)
    assert commit.index.tolist() == [[False, True, False, False], [False, False, True, False]]


@pytest.mark.parametrize(
    ("family", "settings", "message"),
    [
        ("llada", {"threshold": 1.5}, "threshold=1.5"),
        ("llada", {"factor": 0.0}, "factor=0.0"),
        ("dream", {"factor": 1.0}, "LLaDA rule"),
        ("dream", {"threshold": 0.9, "alg": "entropy"}, "alg='confidence_threshold'"),
        ("llada", {"threshold": 0.9, "transfer_schedule": "constant"}, "constant"),
    ],
)
def test_bad_parallel_settings_are_named(family, settings, message):
    with pytest.raises(SettingsError, match=message):
        SamplerSettings(gen_length=16, **settings).resolve(tiny_model(family).spec, 8)


def test_bad_method_use_is_named():
    prompt = torch.tensor([DREAM_CASES[0]["prompt_ids"][0]])
    with pytest.raises(ValueError, match="unknown fast_dllm mode 'both'"):
        build_method("fast_dllm", mode="both")
    with pytest.raises(ValueError, match="must be true or false"):
        build_method("fast_dllm", dual_step_cap="yes")
    with pytest.raises(ValueError, match="needs sampler 'dream'"):
        generate(tiny_model("dream"), prompt, method="fast_dllm", sampler="llada", gen_length=16, block_length=8)
    with pytest.raises(ValueError, match="cfg_scale"):
        generate(
            tiny_model("llada"), prompt, method="fast_dllm", mode="dual", cfg_scale=1.0, gen_length=16, block_length=8
        )
    with pytest.raises(SettingsError, match="divisible by its 3 steps"):
        generate(tiny_model("dream"), prompt, alg="confidence_threshold", gen_length=16, steps=3)


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_build_and_generate(path: Path):
    entry = yaml.safe_load(path.read_text())
    assert entry["name"] == "fast_dllm"
    assert set(entry["sampler"]) <= SamplerSettings.names()
    settings = {"gen_length": 32, "steps": 32, **entry["sampler"], **entry["options"]}
    for family, case in (("llada", LLADA_CASES[0]), ("dream", DREAM_CASES[0])):
        out = generate(tiny_model(family), torch.tensor(case["prompt_ids"]), method="fast_dllm", **settings)
        assert not bool((out.sequences == tiny_model(family).spec.tokens.mask).any()), (path.stem, family)
