"""Checkpoint resolution and strict safetensors loading onto the target device.

The model is built on the meta device and each tensor is read from disk straight to
its device and dtype, so an 8B model never has an fp32 copy in host memory.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .core import DiffusionTransformer
from .families import CheckpointError, FamilyAdapter, Slot, adapter_for
from .spec import ModelSpec

_WEIGHT_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (accepted: {', '.join(_DTYPES)})")
    return _DTYPES[dtype]


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id, downloaded once into the HF cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_local = path.is_absolute() or text.startswith(".") or text.count("/") != 1
    if looks_local:
        raise CheckpointError(f"checkpoint directory {text!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated: say which id failed and why
        raise CheckpointError(f"could not fetch hub checkpoint {text!r}: {err}") from err


# config.json keys read as integers (sizes, counts, token ids) and as real numbers
_INT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "mlp_hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "n_heads",
    "n_kv_heads",
    "n_layers",
    "d_model",
    "vocab_size",
    "embedding_size",
    "max_position_embeddings",
    "max_sequence_length",
    "mask_token_id",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
)
_REAL_KEYS = ("rope_theta", "rms_norm_eps", "layer_norm_eps")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or a one-line ``CheckpointError`` naming the file and the fault."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}, column {err.colno})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _check_types(config: dict, path: Path) -> None:
    """Integers where the model needs integers, numbers where it needs numbers (no strings, no booleans)."""
    for key, value in config.items():
        if key in _INT_KEYS and value is not None:
            values = value if isinstance(value, list) and value else [value]
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
                raise CheckpointError(f"{path}: '{key}' is {value!r}; expected a non-negative integer")
        if key in _REAL_KEYS and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise CheckpointError(f"{path}: '{key}' is {value!r}; expected a positive number")


def read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: missing config.json")
    config = read_json(config_path)
    _check_types(config, config_path)
    return config


@contextmanager
def _safetensors(path: Path, device: str = "cpu"):
    """``safe_open`` whose failures (a truncated or corrupt file) are one line naming the file."""
    try:
        with safe_open(path, framework="pt", device=device) as handle:
            yield handle
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from None


def load_spec(name_or_path: str | os.PathLike) -> tuple[ModelSpec, FamilyAdapter, Path]:
    directory = resolve_checkpoint_dir(name_or_path)
    config = read_config(directory)
    adapter = adapter_for(config, str(directory / "config.json"))
    try:
        return adapter.spec_from_config(config, directory), adapter, directory
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{directory / 'config.json'}: unusable value ({type(err).__name__}: {err})") from None


def weight_files(directory: Path) -> dict[str, Path]:
    """Map every stored tensor name to the file that holds it."""
    index = directory / _INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map'")
        files = {name: directory / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index}: shard file {shard.name} is missing")
        return files
    single = directory / _WEIGHT_FILE
    if not single.is_file():
        raise CheckpointError(f"{directory}: missing {_WEIGHT_FILE} (or {_INDEX_FILE})")
    with _safetensors(single) as handle:
        return {name: single for name in handle.keys()}


def _slot_shape(slot: Slot, params: dict[str, torch.Tensor]) -> tuple[int, ...]:
    shape = tuple(params[slot.name].shape)
    return shape[1:] if slot.expert is not None else shape


def _check_keys(
    files: dict[str, Path], key_map: dict[str, list[Slot]], model: DiffusionTransformer, family: str
) -> None:
    unexpected = sorted(set(files) - set(key_map))
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(f"{files[name]}: unexpected tensor '{name}' (not part of a {family} model)")
    missing = sorted(set(key_map) - set(files))
    if missing:
        where = next(iter(files.values())).parent if files else "checkpoint"
        raise CheckpointError(f"{where}: missing tensor '{missing[0]}'")
    params = dict(model.named_parameters())
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with _safetensors(path) as handle:
            stored = set(handle.keys())
            for name in names:
                if name not in stored:
                    raise CheckpointError(f"{path}: tensor '{name}' listed in the index is not in the file")
                shape = tuple(handle.get_slice(name).get_shape())
                slots = key_map[name]
                expected = _slot_shape(slots[0], params)
                if len(slots) > 1:  # a fused projection: the parts stack along the rows
                    expected = (sum(_slot_shape(slot, params)[0] for slot in slots), *expected[1:])
                if shape != expected:
                    raise CheckpointError(f"{path}: tensor '{name}' has shape {shape}, expected {expected}")


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    seed: int = 0,
    rope_scaling: float | None = None,
) -> DiffusionTransformer:
    """Build the model a checkpoint describes and fill it from its safetensors.

    ``dtype=None`` keeps the stored dtype. ``random_weights=True`` needs only config.json
    and draws N(0, 0.02) weights (norms at 1), for speed and memory benchmarks.
    """
    spec, adapter, directory = load_spec(name_or_path)
    if rope_scaling is not None:
        spec = _with_rope_scaling(spec, rope_scaling)
    device = torch.device(device)
    target = resolve_dtype(dtype)
    with torch.device("meta"):
        model = DiffusionTransformer(spec)
    if random_weights:
        return _randomize(model, target or torch.bfloat16, device, seed)
    files = weight_files(directory)
    key_map = adapter.key_map(spec)
    _check_keys(files, key_map, model, adapter.name)
    model.load_state_dict(_read_state(files, key_map, model, target, device), strict=True, assign=True)
    return model.requires_grad_(False).eval()


def _read_state(
    files: dict[str, Path],
    key_map: dict[str, list[Slot]],
    model: DiffusionTransformer,
    target: torch.dtype | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Core state dict: whole tensors as read; stacked experts and split projections filled in place."""
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for path in sorted(set(files.values())):
        with _safetensors(path, str(device)) as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                tensor = tensor if target is None else tensor.to(target)
                for slot in key_map[name]:
                    part = tensor if slot.rows is None else tensor[slot.rows]
                    if slot.expert is None:
                        state[slot.name] = part
                        continue
                    if slot.name not in state:
                        state[slot.name] = torch.empty(params[slot.name].shape, dtype=tensor.dtype, device=device)
                    state[slot.name][slot.expert].copy_(part)
    return state


def _with_rope_scaling(spec: ModelSpec, factor: float) -> ModelSpec:
    from dataclasses import replace

    if factor <= 0:
        raise ValueError(f"rope_scaling must be > 0, got {factor}")
    return replace(spec, rope_scaling=float(factor))


def _randomize(model: DiffusionTransformer, dtype: torch.dtype, device: torch.device, seed: int) -> DiffusionTransformer:
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm_layer.weight") or name == "final_norm.weight":
                param.fill_(1.0)
            elif name.endswith((".bias", "expert_bias")):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.requires_grad_(False).eval()
