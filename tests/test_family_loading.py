"""Loading the MoE families: what loads, and the one-line error for what does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_accel.models import CheckpointError, load_model, load_spec
from dllm_accel.models.moe import route
from dllm_accel.models.spec import MoESpec

FIXTURES = Path(__file__).parent / "fixtures"
MOE = ("llada-moe-tiny", "llada2-mini-tiny")


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target, ignore=shutil.ignore_patterns("cases.json", "forward.safetensors"))
    return target


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_llada_moe_hub_config_says_llada_and_still_loads_as_moe(tmp_path):
    """The hub config of LLaDA-MoE keeps model_type 'llada'; its MoE keys tell it apart."""
    target = _copy("llada-moe-tiny", tmp_path)
    _edit_config(target, model_type="llada")
    spec, adapter, _ = load_spec(target)
    assert adapter.name == "llada_moe" and spec.moe is not None and spec.moe.layers == (False, True, True)


@pytest.mark.parametrize("name", MOE)
def test_every_stored_expert_lands_in_its_stacked_slot(name):
    model = load_model(FIXTURES / name)
    stored = load_file(FIXTURES / name / "model.safetensors")
    block = model.blocks[1]
    assert torch.equal(block.moe.experts_up[3], stored["model.layers.1.mlp.experts.3.up_proj.weight"])
    assert torch.equal(block.moe.experts_down[7], stored["model.layers.1.mlp.experts.7.down_proj.weight"])
    assert model.blocks[0].moe is None  # the dense first layer


def test_llada2_fused_qkv_is_split_into_q_k_v():
    model = load_model(FIXTURES / "llada2-mini-tiny")
    fused = load_file(FIXTURES / "llada2-mini-tiny" / "model.safetensors")[
        "model.layers.2.attention.query_key_value.weight"
    ]
    block = model.blocks[2]
    assert torch.equal(torch.cat([block.q_proj.weight, block.k_proj.weight, block.v_proj.weight]), fused)


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("llada-moe-tiny", {"moe_layer_freq": [1, 1]}, "moe_layer_freq must list one entry per layer (3)"),
        ("llada-moe-tiny", {"num_experts_per_tok": 9}, "num_experts_per_tok=9 exceeds num_experts=8"),
        ("llada-moe-tiny", {"num_experts": 0}, "num_experts=0 must be a positive integer"),
        ("llada-moe-tiny", {"clip_qkv": 8.0}, "clip_qkv=8.0 is not supported"),
        ("llada-moe-tiny", {"partial_rotary_factor": -1}, "partial_rotary_factor=-1 must be in (0, 1]"),
        (
            "llada2-mini-tiny",
            {"score_function": "softmax"},
            "score_function='softmax' is not supported (accepted: 'sigmoid')",
        ),
        ("llada2-mini-tiny", {"n_group": 3}, "n_group=3 must divide num_experts=16"),
        ("llada2-mini-tiny", {"topk_group": 1, "num_experts_per_tok": 5}, "topk_group=1 must be in [1, n_group=4]"),
        ("llada2-mini-tiny", {"first_k_dense_replace": 7}, "first_k_dense_replace=7 must be in [0, 3]"),
        ("llada2-mini-tiny", {"norm_topk_prob": False}, "norm_topk_prob=False is not supported"),
    ],
)
def test_unsupported_moe_config_value_is_named(name, changes, message, tmp_path):
    target = _copy(name, tmp_path)
    _edit_config(target, **changes)
    with pytest.raises(CheckpointError) as err:
        load_model(target)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "drop", "reshape"),
    [
        ("llada-moe-tiny", "model.layers.2.mlp.experts.5.up_proj.weight", None),
        ("llada-moe-tiny", "model.layers.1.shared_expert.down_proj.weight", None),
        ("llada2-mini-tiny", "model.layers.1.mlp.gate.expert_bias", None),
        ("llada2-mini-tiny", None, "model.layers.2.mlp.experts.0.gate_proj.weight"),
        ("llada2-mini-tiny", None, "model.layers.1.attention.query_key_value.weight"),
    ],
)
def test_missing_or_misshapen_expert_tensor_is_named(name, drop, reshape, tmp_path):
    target = _copy(name, tmp_path)
    tensors = load_file(target / "model.safetensors")
    if drop is not None:
        del tensors[drop]
    else:
        tensors[reshape] = tensors[reshape][:-1]
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(target)
    text = str(err.value)
    assert (f"missing tensor '{drop}'" in text) if drop else (f"tensor '{reshape}' has shape" in text)


@pytest.mark.parametrize("name", MOE)
def test_random_weights_need_only_the_config(name, tmp_path):
    target = tmp_path / name
    target.mkdir()
    shutil.copy(FIXTURES / name / "config.json", target)
    model = load_model(target, random_weights=True, dtype="float32")
    logits, _ = model(torch.randint(0, 500, (1, 16)))
    assert torch.isfinite(logits).all() and model.blocks[1].moe.experts_gate.std() > 0.01


def test_group_limited_routing_stays_inside_the_best_groups():
    """Experts come only from the topk_group groups whose two best (biased) scores sum highest."""
    moe = MoESpec(n_experts=8, top_k=2, expert_hidden=4, layers=(True,), n_group=4, topk_group=1, normalize=True)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.2, 0.2, 0.95, 0.0]])  # group sums: 1.0, 1.0, 0.4, 0.95
    bias = torch.tensor([0.0, 0.0, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0])  # lifts group 1 to 1.2
    ids, weights = route(scores, bias, moe)
    assert sorted(ids[0].tolist()) == [2, 3]
    assert torch.allclose(weights, torch.tensor([[0.5, 0.5]]))  # unbiased scores, renormalised


@pytest.mark.parametrize(
    ("name", "total", "active", "embeddings_counted"),
    [
        ("llada-moe-7b-a1b", 7.0e9, 1.4e9, 1),  # LLaDA-MoE paper: 7B total, 1.4B activated (the output head counted)
        ("llada2-mini", 16.26e9, 0.789e9, 0),  # Ling-mini-2.0 lineage: 16B total, 789M non-embedding activated
    ],
)
def test_full_size_configs_build_with_the_stated_sizes(name, total, active, embeddings_counted):
    """The benchmark configs (experiments/full_size) describe models of the published sizes."""
    from dllm_accel.models.core import DiffusionTransformer

    spec, _, _ = load_spec(Path(__file__).parents[1] / "experiments" / "full_size" / name)
    with torch.device("meta"):
        model = DiffusionTransformer(spec)
    count = sum(p.numel() for p in model.parameters())
    moe = spec.moe
    idle = sum(moe.layers) * (moe.n_experts - moe.top_k) * 3 * spec.d_model * moe.expert_hidden
    embedding = spec.vocab_size * spec.d_model
    assert abs(count - total) / total < 0.06
    assert abs(count - idle - (2 - embeddings_counted) * embedding - active) / active < 0.03
