"""Write a model in LLaDA's hub format, so ``load_model`` reads it like LLaDA-8B."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.core import DiffusionTransformer
from ..models.families import LLADA
from ..models.spec import ModelSpec


def llada_config(spec: ModelSpec) -> dict:
    """config.json in the schema of GSAI-ML/LLaDA-8B-Instruct (no remote-code ``auto_map``: no code ships)."""
    if spec.family != "llada" or spec.logit_shift or spec.qkv_bias:
        raise ValueError(f"only LLaDA-layout specs can be written as a LLaDA checkpoint (got family {spec.family!r})")
    return {
        "activation_type": "silu",
        "alibi": False,
        "architectures": ["LLaDAModelLM"],
        "attention_layer_norm": False,
        "bias_for_layer_norm": False,
        "block_type": "llama",
        "d_model": spec.d_model,
        "embedding_size": spec.vocab_size,
        "eos_token_id": spec.tokens.eos,
        "include_bias": False,
        "include_qkv_bias": False,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "mask_token_id": spec.tokens.mask,
        "max_sequence_length": spec.max_seq_len,
        "mlp_hidden_size": spec.mlp_hidden,
        "model_type": "llada",
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.n_kv_heads,
        "n_layers": spec.n_layers,
        "pad_token_id": spec.tokens.pad,
        "rms_norm_eps": spec.norm_eps,
        "rope": True,
        "rope_full_precision": spec.rope_in_fp32,
        "rope_theta": spec.rope_theta,
        "scale_logits": False,
        "use_cache": False,
        "vocab_size": spec.vocab_size,
        "weight_tying": False,
    }


def official_state_dict(model: DiffusionTransformer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's tensors under LLaDA's official names, contiguous, in ``dtype``."""
    # a plain LLaDA stores each core parameter whole under one name (no experts, no fused projections)
    core_to_official = {slots[0].name: official for official, slots in LLADA.key_map(model.spec).items()}
    state = model.state_dict()
    missing = sorted(set(state) - set(core_to_official))
    if missing:
        raise ValueError(f"core tensor {missing[0]!r} has no official LLaDA name")
    return {core_to_official[name]: t.detach().to(dtype).contiguous().cpu() for name, t in state.items()}


def write_llada_checkpoint(model: DiffusionTransformer, directory: str | Path, dtype: torch.dtype) -> Path:
    """config.json, generation_config.json and model.safetensors; returns the weights path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    _write_json(directory / "config.json", llada_config(spec))
    generation = {"bos_token_id": spec.tokens.bos, "eos_token_id": spec.tokens.eos, "pad_token_id": spec.tokens.pad}
    _write_json(directory / "generation_config.json", generation)
    weights = directory / "model.safetensors"
    save_file(official_state_dict(model, dtype), str(weights), metadata={"format": "pt"})
    return weights


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
