"""Write tiny random checkpoints of the newer families in their official on-disk formats.

Each is a ``config.json`` with the official configuration class's keys (sizes shrunk, special
ids kept at their distance from the end of the vocabulary, as ``shared/fixtures`` does) and a
float32 ``model.safetensors`` under the official state-dict names. Scales are chosen so that
routing spreads over the experts and the sampler's confidence rules take both branches.

    python experiments/make_tiny_checkpoints.py tests/fixtures
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_VOCAB = 1024
LING_VOCAB = 157184  # LLaDA-MoE and LLaDA2 share the Ling tokenizer
QWEN_VOCAB = 152064  # Dream, Dream-Coder and DiffuCoder (Qwen2.5 embeddings)


def tiny_id(official: int, official_vocab: int) -> int:
    """Keep a special token's distance from the end of the vocabulary."""
    return official - official_vocab + TINY_VOCAB


def llada_moe_config() -> dict:
    mask, eos = tiny_id(156895, LING_VOCAB), tiny_id(156892, LING_VOCAB)
    return {
        "architectures": ["LLaDAMoEModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
            "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
            "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
        },
        "model_type": "lladamoe",
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "dense_intermediate_size": 128,
        "expert_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-05,
        "use_cache": False,
        "pad_token_id": eos,
        "bos_token_id": None,
        "eos_token_id": eos,
        "mask_token_id": mask,
        "tie_word_embeddings": False,
        "rope_theta": 50000,
        "partial_rotary_factor": 0.5,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": None,
        "num_experts_per_tok": 2,
        "num_experts": 8,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.01,
        "norm_topk_prob": False,
        "qk_layernorm": True,
        "moe_layer_freq": [0, 1, 1],
        "moe_router_enable_expert_bias": True,
        "moe_router_score_function": "softmax",
        "routed_scaling_factor": 1,
        "router_num_group": -2,
        "router_topk_group": -2,
        "torch_dtype": "float32",
    }


def llada2_config(model_type: str = "llada2_moe") -> dict:
    mask, eos = tiny_id(156895, LING_VOCAB), tiny_id(156892, LING_VOCAB)
    prefix = "configuration_llada21_moe" if model_type == "llada21_moe" else "configuration_llada2_moe"
    modeling = prefix.replace("configuration", "modeling")
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {
            "AutoConfig": f"{prefix}.LLaDA2MoeConfig",
            "AutoModel": f"{modeling}.LLaDA2MoeModelLM",
            "AutoModelForCausalLM": f"{modeling}.LLaDA2MoeModelLM",
        },
        "model_type": model_type,
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_qk_norm": True,
        "use_bias": False,
        "rms_norm_eps": 1e-06,
        "norm_head": False,
        "tie_word_embeddings": False,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "output_dropout": 0.0,
        "initializer_range": 0.02,
        "max_position_embeddings": 512,
        "rope_theta": 600000,
        "use_cache": False,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "rope_scaling": None,
        "pad_token_id": eos,
        "eos_token_id": eos,
        "mask_token_id": mask,
        "num_experts": 16,
        "num_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 2.5,
        "moe_intermediate_size": 16,
        "first_k_dense_replace": 1,
        "head_dim": 16,
        "output_router_logits": False,
        "partial_rotary_factor": 0.5,
        "score_function": "sigmoid",
        "norm_topk_prob": True,
        "moe_router_enable_expert_bias": True,
        "torch_dtype": "float32",
    }


def dream_config(name: str, mask: int, eos: int, pad: int, bos: int) -> dict:
    """Dream's schema (DiffuCoder and Dream-Coder ship Dream's modeling code unchanged)."""
    return {
        "_name_or_path": name,
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": tiny_id(bos, QWEN_VOCAB),
        "eos_token_id": tiny_id(eos, QWEN_VOCAB),
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "mask_token_id": tiny_id(mask, QWEN_VOCAB),
        "max_position_embeddings": 131072,
        "max_window_layers": 3,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "pad_token_id": tiny_id(pad, QWEN_VOCAB),
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": TINY_VOCAB,
    }


class _Init:
    """Seeded normal tensors; ``scale`` is the std times sqrt(fan_in) so layers keep activations O(1)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, scale: float = 1.0, fan_in: int | None = None) -> torch.Tensor:
        std = scale / (fan_in**0.5) if fan_in else scale
        return torch.randn(*shape, generator=self.generator) * std

    def norm(self, dim: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(dim, generator=self.generator)


def _mlp(init: _Init, prefix: str, d: int, f: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.gate_proj.weight": init.normal(f, d, fan_in=d),
        f"{prefix}.up_proj.weight": init.normal(f, d, fan_in=d),
        f"{prefix}.down_proj.weight": init.normal(d, f, fan_in=f),
    }


def _embeddings(init: _Init, config: dict, embed_key: str) -> dict[str, torch.Tensor]:
    d, vocab = config["hidden_size"], config["vocab_size"]
    head = init.normal(vocab, d, scale=6.0, fan_in=d)
    return {embed_key: init.normal(vocab, d, scale=0.5), "model.norm.weight": init.norm(d), "lm_head.weight": head}


def llada_moe_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    init = _Init(seed)
    d, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // heads
    tensors = _embeddings(init, config, "model.embed_tokens.weight")
    for i, freq in enumerate(config["moe_layer_freq"]):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = init.norm(d)
        tensors[f"{p}.post_attention_layernorm.weight"] = init.norm(d)
        tensors[f"{p}.self_attn.q_proj.weight"] = init.normal(heads * hd, d, scale=1.5, fan_in=d)
        tensors[f"{p}.self_attn.k_proj.weight"] = init.normal(kv * hd, d, scale=1.5, fan_in=d)
        tensors[f"{p}.self_attn.v_proj.weight"] = init.normal(kv * hd, d, fan_in=d)
        tensors[f"{p}.self_attn.o_proj.weight"] = init.normal(d, heads * hd, scale=3.0, fan_in=d)
        tensors[f"{p}.self_attn.q_norm.weight"] = init.norm(hd)
        tensors[f"{p}.self_attn.k_norm.weight"] = init.norm(hd)
        if freq == 0:
            tensors.update(_mlp(init, f"{p}.mlp", d, config["dense_intermediate_size"]))
            continue
        n_experts = config["num_experts"]
        tensors[f"{p}.mlp.gate.weight"] = init.normal(n_experts, d, scale=2.0, fan_in=d)
        tensors[f"{p}.mlp.expert_bias"] = init.normal(n_experts, scale=0.05)
        for e in range(n_experts):
            tensors.update(_mlp(init, f"{p}.mlp.experts.{e}", d, config["expert_intermediate_size"]))
        tensors.update(_mlp(init, f"{p}.shared_expert", d, config["shared_expert_intermediate_size"]))
    return tensors


def llada2_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    init = _Init(seed)
    d, heads, kv, hd = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )
    tensors = _embeddings(init, config, "model.word_embeddings.weight")
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = init.norm(d)
        tensors[f"{p}.post_attention_layernorm.weight"] = init.norm(d)
        qkv = torch.cat(
            [
                init.normal(heads * hd, d, scale=1.5, fan_in=d),
                init.normal(kv * hd, d, scale=1.5, fan_in=d),
                init.normal(kv * hd, d, fan_in=d),
            ]
        )
        tensors[f"{p}.attention.query_key_value.weight"] = qkv
        tensors[f"{p}.attention.dense.weight"] = init.normal(d, heads * hd, scale=3.0, fan_in=d)
        tensors[f"{p}.attention.query_layernorm.weight"] = init.norm(hd)
        tensors[f"{p}.attention.key_layernorm.weight"] = init.norm(hd)
        if i < config["first_k_dense_replace"]:
            tensors.update(_mlp(init, f"{p}.mlp", d, config["intermediate_size"]))
            continue
        n_experts, f = config["num_experts"], config["moe_intermediate_size"]
        tensors[f"{p}.mlp.gate.weight"] = init.normal(n_experts, d, scale=2.0, fan_in=d)
        tensors[f"{p}.mlp.gate.expert_bias"] = init.normal(n_experts, scale=0.05)
        for e in range(n_experts):
            tensors.update(_mlp(init, f"{p}.mlp.experts.{e}", d, f))
        tensors.update(_mlp(init, f"{p}.mlp.shared_experts", d, f * config["num_shared_experts"]))
    return tensors


def dream_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    init = _Init(seed)
    d, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // heads
    tensors = _embeddings(init, config, "model.embed_tokens.weight")
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = init.norm(d)
        tensors[f"{p}.post_attention_layernorm.weight"] = init.norm(d)
        for name, rows, scale in (("q", heads * hd, 1.5), ("k", kv * hd, 1.5), ("v", kv * hd, 1.0)):
            tensors[f"{p}.self_attn.{name}_proj.weight"] = init.normal(rows, d, scale=scale, fan_in=d)
            tensors[f"{p}.self_attn.{name}_proj.bias"] = init.normal(rows, scale=0.2)
        tensors[f"{p}.self_attn.o_proj.weight"] = init.normal(d, heads * hd, scale=3.0, fan_in=d)
        tensors.update(_mlp(init, f"{p}.mlp", d, config["intermediate_size"]))
    return tensors


# name -> (config, weights, seed). Dream-Coder and DiffuCoder take Dream-v0's ids (mask 151666, eos/pad/bos
# 151643): their hub configs could not be read here, so a real checkpoint's own config.json decides.
CHECKPOINTS = {
    "llada-moe-tiny": (llada_moe_config, llada_moe_weights, 19),
    "llada2-mini-tiny": (llada2_config, llada2_weights, 20),
    "llada21-mini-tiny": (lambda: llada2_config("llada21_moe"), llada2_weights, 21),
    "dream-coder-tiny": (
        lambda: dream_config("Dream-org/Dream-Coder-v0-Instruct-7B", mask=151666, eos=151643, pad=151643, bos=151643),
        dream_weights,
        22,
    ),
    "diffucoder-tiny": (
        lambda: dream_config("apple/DiffuCoder-7B-Instruct", mask=151666, eos=151643, pad=151643, bos=151643),
        dream_weights,
        23,
    ),
}


def write(name: str, root: Path) -> Path:
    make_config, make_weights, seed = CHECKPOINTS[name]
    config = make_config()
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.contiguous() for k, v in make_weights(config, seed).items()}
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to write <name>/ checkpoints into")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKPOINTS), help="a subset (default: all)")
    args = parser.parse_args()
    for name in args.only or sorted(CHECKPOINTS):
        print(write(name, args.root))


if __name__ == "__main__":
    main()
