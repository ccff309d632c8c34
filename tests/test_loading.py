"""Strict checkpoint loading: what loads, and the one-line error for what does not."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file

from dllm_accel.models import CheckpointError, load_model, load_spec
from dllm_accel.paths import tiny_checkpoint


def _copy(family: str, tmp_path):
    target = tmp_path / family
    shutil.copytree(tiny_checkpoint(family), target)
    target.chmod(0o755)
    for f in target.iterdir():
        f.chmod(0o644)
    return target


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_fixture_loads_every_tensor_unchanged(family):
    model = tiny_model(family)
    stored = load_file(tiny_checkpoint(family) / "model.safetensors")
    assert len(stored) == len(dict(model.named_parameters()))
    first = next(iter(stored))
    assert model.dtype == stored[first].dtype == torch.float32
    assert torch.equal(model.embed.weight, stored["model.transformer.wte.weight" if family == "llada" else "model.embed_tokens.weight"])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_sharded_copy_loads_same_tensors(family, tmp_path):
    target = _copy(family, tmp_path)
    tensors = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, target / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded = load_model(target)
    reference = tiny_model(family)
    for (name, a), (_, b) in zip(sharded.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_dtype_cast_on_load():
    model = load_model(tiny_checkpoint("dream"), dtype="bfloat16")
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.blocks[0].q_proj.bias.dtype == torch.bfloat16


def _rewrite(target, mutate):
    tensors = load_file(target / "model.safetensors")
    mutate(tensors)
    save_file(tensors, target / "model.safetensors")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_file", "missing model.safetensors"),
        ("missing_key", "missing tensor 'model.transformer.ln_f.weight'"),
        ("extra_key", "unexpected tensor 'model.transformer.extra.weight'"),
        ("wrong_shape", "tensor 'model.transformer.blocks.0.q_proj.weight' has shape (128, 64), expected (128, 128)"),
        ("unknown_model_type", "unknown model_type 'olmo'"),
        ("missing_config", "missing config.json"),
        ("missing_shard", "shard file model-00002.safetensors is missing"),
    ],
)
def test_broken_checkpoint_fails_with_one_line_naming_it(breakage, message, tmp_path):
    target = _copy("llada", tmp_path)
    if breakage == "missing_file":
        (target / "model.safetensors").unlink()
    elif breakage == "missing_key":
        _rewrite(target, lambda t: t.pop("model.transformer.ln_f.weight"))
    elif breakage == "extra_key":
        _rewrite(target, lambda t: t.__setitem__("model.transformer.extra.weight", torch.zeros(2)))
    elif breakage == "wrong_shape":
        _rewrite(target, lambda t: t.__setitem__("model.transformer.blocks.0.q_proj.weight", torch.zeros(128, 64)))
    elif breakage == "unknown_model_type":
        config = json.loads((target / "config.json").read_text())
        config["model_type"] = "olmo"
        (target / "config.json").write_text(json.dumps(config))
    elif breakage == "missing_config":
        (target / "config.json").unlink()
    elif breakage == "missing_shard":
        index = {"weight_map": {"model.transformer.wte.weight": "model-00002.safetensors"}}
        (target / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as err:
        load_model(target)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unsupported_config_value_is_named(tmp_path):
    target = _copy("llada", tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["weight_tying"] = True
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weight_tying=True is not supported"):
        load_model(target)


def test_missing_local_directory_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_random_weights_need_only_the_config(tmp_path):
    target = _copy("dream", tmp_path)
    (target / "model.safetensors").unlink()
    model = load_model(target, random_weights=True, dtype="float32", seed=3)
    again = load_model(target, random_weights=True, dtype="float32", seed=3)
    assert torch.equal(model.head.weight, again.head.weight)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    logits, _ = model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, 2048)


@pytest.mark.parametrize(
    ("family", "mask", "eos", "eot", "bos"),
    [("llada", 1920, 1665, 1932, 1664), ("dream", 1650, 1627, 1629, 1627)],
)
def test_special_tokens_follow_the_checkpoint(family, mask, eos, eot, bos):
    spec, _, _ = load_spec(tiny_checkpoint(family))
    assert (spec.tokens.mask, spec.tokens.eos, spec.tokens.eot, spec.tokens.bos) == (mask, eos, eot, bos)
    assert spec.vocab_size == 2048


def test_hub_id_is_downloaded_with_huggingface_hub(monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tiny_checkpoint("llada"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("GSAI-ML/LLaDA-8B-Instruct")
    assert calls[0][0] == "GSAI-ML/LLaDA-8B-Instruct"
    assert "*.safetensors" in calls[0][1]
    assert model.spec.family == "llada"


def test_hub_failure_names_the_id(monkeypatch):
    import huggingface_hub

    def offline(repo_id, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="could not fetch hub checkpoint 'Dream-org/Dream-v0-Base-7B': no network"):
        load_model("Dream-org/Dream-v0-Base-7B")
