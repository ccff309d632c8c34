"""Family adapters: official ``config.json`` -> ``ModelSpec``, official key names -> core names.

Adding a family (a future dLLM with this block layout) means adding one adapter here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import ModelSpec, SpecialTokens


class CheckpointError(ValueError):
    """A checkpoint directory, file, key or config value that cannot be used."""


# core names of one block's tensors, keyed by a role shared by both families
_BLOCK_ROLES = (
    "attn_norm_layer.weight",
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
    "mlp_norm_layer.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "down_proj.weight",
)


@dataclass(frozen=True)
class Slot:
    """Where a stored tensor goes: a core parameter or one expert of a stacked one; ``rows``
    takes part of the stored tensor (a fused projection split over several core parameters)."""

    name: str
    expert: int | None = None
    rows: slice | None = None


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_types: tuple[str, ...]
    spec_from_config: Callable[[dict[str, Any], Path | None], ModelSpec]
    # official name (with {i} for the layer) -> core name (with {i})
    block_keys: dict[str, str]
    global_keys: dict[str, str]
    format_chat: Callable[[str, str | None], str]
    # families whose layout differs per layer (MoE, fused qkv) map keys themselves
    layer_slots: Callable[[ModelSpec, int], dict[str, list[Slot]]] | None = None
    # another family whose model_type this one shares, told apart by the config's keys
    claims: Callable[[dict[str, Any]], bool] | None = None

    def key_map(self, spec: ModelSpec) -> dict[str, list[Slot]]:
        """Every stored tensor name -> the slots it fills."""
        mapping = {official: [Slot(core)] for official, core in self.global_keys.items()}
        for i in range(spec.n_layers):
            if self.layer_slots is not None:
                mapping.update(self.layer_slots(spec, i))
                continue
            for official, core in self.block_keys.items():
                if core.endswith(".bias") and not spec.qkv_bias:
                    continue
                mapping[official.format(i=i)] = [Slot(f"blocks.{i}." + core)]
        return mapping


def _require(config: dict[str, Any], key: str, family: str) -> Any:
    if key not in config:
        raise CheckpointError(f"{family} config.json has no '{key}'")
    return config[key]


def _expect(config: dict[str, Any], key: str, allowed: tuple[Any, ...], family: str) -> None:
    value = config.get(key, allowed[0])
    if value not in allowed:
        raise CheckpointError(
            f"{family} config.json: {key}={value!r} is not supported (accepted: {', '.join(map(repr, allowed))})"
        )


def _added_token_id(directory: Path | None, content: str) -> int | None:
    """Look a special token up in a tokenizer_config.json shipped beside the weights."""
    if directory is None or not (directory / "tokenizer_config.json").is_file():
        return None
    decoder = json.loads((directory / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
    for token_id, entry in decoder.items():
        if entry.get("content") == content:
            return int(token_id)
    return None


# ---------------------------------------------------------------------------------- LLaDA
_LLADA_VOCAB = 126464
_LLADA_EOT_FROM_END = _LLADA_VOCAB - 126348  # <|eot_id|> keeps its distance from the vocab end
_LLADA_BOS_FROM_END = _LLADA_VOCAB - 126080


def _llada_spec(config: dict[str, Any], directory: Path | None) -> ModelSpec:
    fam = "llada"
    for key, allowed in (
        ("block_type", ("llama",)),
        ("activation_type", ("silu",)),
        ("layer_norm_type", ("rms",)),
        ("rope", (True,)),
        ("alibi", (False,)),
        ("weight_tying", (False,)),
        ("include_bias", (False,)),
        ("scale_logits", (False,)),
        ("input_emb_norm", (False,)),
        ("attention_layer_norm", (False,)),
        ("bias_for_layer_norm", (False, None)),
    ):
        _expect(config, key, allowed, fam)
    d_model = _require(config, "d_model", fam)
    n_heads = _require(config, "n_heads", fam)
    vocab = config.get("embedding_size") or _require(config, "vocab_size", fam)
    eos = _require(config, "eos_token_id", fam)
    eot = config.get("eot_token_id") or _added_token_id(directory, "<|eot_id|>") or vocab - _LLADA_EOT_FROM_END
    bos = _generation_bos(directory) or _added_token_id(directory, "<|startoftext|>") or vocab - _LLADA_BOS_FROM_END
    return ModelSpec(
        family="llada",
        vocab_size=vocab,
        d_model=d_model,
        n_layers=_require(config, "n_layers", fam),
        n_heads=n_heads,
        n_kv_heads=config.get("n_kv_heads") or n_heads,
        mlp_hidden=config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d_model,
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        max_seq_len=config.get("max_sequence_length", 4096),
        tokens=SpecialTokens(
            mask=_require(config, "mask_token_id", fam),
            eos=eos,
            pad=config.get("pad_token_id", eos),
            bos=bos,
            eot=eot,
        ),
        rope_in_fp32=bool(config.get("rope_full_precision", True)),
        qkv_bias=bool(config.get("include_qkv_bias", False)),
        logit_shift=False,
        pad_shifts_positions=False,
    )


def _generation_bos(directory: Path | None) -> int | None:
    if directory is None or not (directory / "generation_config.json").is_file():
        return None
    return json.loads((directory / "generation_config.json").read_text()).get("bos_token_id")


def _llada_chat(content: str, system: str | None = None) -> str:
    turns = [] if system is None else [("system", system)]
    turns.append(("user", content))
    text = "<|startoftext|>"
    for role, body in turns:
        text += f"<|start_header_id|>{role}<|end_header_id|>\n\n{body.strip()}<|eot_id|>"
    return text + "<|start_header_id|>assistant<|end_header_id|>\n\n"


LLADA = FamilyAdapter(
    name="llada",
    model_types=("llada",),
    spec_from_config=_llada_spec,
    block_keys={
        "model.transformer.blocks.{i}.attn_norm.weight": "attn_norm_layer.weight",
        "model.transformer.blocks.{i}.q_proj.weight": "q_proj.weight",
        "model.transformer.blocks.{i}.k_proj.weight": "k_proj.weight",
        "model.transformer.blocks.{i}.v_proj.weight": "v_proj.weight",
        "model.transformer.blocks.{i}.q_proj.bias": "q_proj.bias",
        "model.transformer.blocks.{i}.k_proj.bias": "k_proj.bias",
        "model.transformer.blocks.{i}.v_proj.bias": "v_proj.bias",
        "model.transformer.blocks.{i}.attn_out.weight": "o_proj.weight",
        "model.transformer.blocks.{i}.ff_norm.weight": "mlp_norm_layer.weight",
        "model.transformer.blocks.{i}.ff_proj.weight": "gate_proj.weight",
        "model.transformer.blocks.{i}.up_proj.weight": "up_proj.weight",
        "model.transformer.blocks.{i}.ff_out.weight": "down_proj.weight",
    },
    global_keys={
        "model.transformer.wte.weight": "embed.weight",
        "model.transformer.ln_f.weight": "final_norm.weight",
        "model.transformer.ff_out.weight": "head.weight",
    },
    format_chat=_llada_chat,
)


# ---------------------------------------------------------------------------------- Dream
_DREAM_DEFAULT_SYSTEM = "You are a helpful assistant."


def _dream_spec(config: dict[str, Any], directory: Path | None) -> ModelSpec:
    fam = "dream"
    for key, allowed in (
        ("hidden_act", ("silu",)),
        ("tie_word_embeddings", (False,)),
        ("use_sliding_window", (False,)),
        ("use_mrope", (False,)),
    ):
        _expect(config, key, allowed, fam)
    scaling = 1.0
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None:
        kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
        if kind != "linear":
            raise CheckpointError(f"dream config.json: rope_scaling type {kind!r} is not supported (accepted: 'linear', null)")
        scaling = float(rope_scaling["factor"])
    eos = _require(config, "eos_token_id", fam)
    return ModelSpec(
        family="dream",
        vocab_size=_require(config, "vocab_size", fam),
        d_model=_require(config, "hidden_size", fam),
        n_layers=_require(config, "num_hidden_layers", fam),
        n_heads=_require(config, "num_attention_heads", fam),
        n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        mlp_hidden=_require(config, "intermediate_size", fam),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        max_seq_len=config.get("max_position_embeddings", 131072),
        tokens=SpecialTokens(
            mask=_require(config, "mask_token_id", fam),
            eos=eos,
            pad=config.get("pad_token_id", eos),
            bos=config.get("bos_token_id"),
            eot=_added_token_id(directory, "<|im_end|>") or eos + 2,
        ),
        rope_in_fp32=False,
        qkv_bias=True,
        logit_shift=True,
        pad_shifts_positions=True,
        rope_scaling=scaling,
    )


def _dream_chat(content: str, system: str | None = None) -> str:
    system = _DREAM_DEFAULT_SYSTEM if system is None else system
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    )


DREAM = FamilyAdapter(
    name="dream",
    model_types=("Dream", "dream"),
    spec_from_config=_dream_spec,
    block_keys={
        "model.layers.{i}.input_layernorm.weight": "attn_norm_layer.weight",
        "model.layers.{i}.self_attn.q_proj.weight": "q_proj.weight",
        "model.layers.{i}.self_attn.q_proj.bias": "q_proj.bias",
        "model.layers.{i}.self_attn.k_proj.weight": "k_proj.weight",
        "model.layers.{i}.self_attn.k_proj.bias": "k_proj.bias",
        "model.layers.{i}.self_attn.v_proj.weight": "v_proj.weight",
        "model.layers.{i}.self_attn.v_proj.bias": "v_proj.bias",
        "model.layers.{i}.self_attn.o_proj.weight": "o_proj.weight",
        "model.layers.{i}.post_attention_layernorm.weight": "mlp_norm_layer.weight",
        "model.layers.{i}.mlp.gate_proj.weight": "gate_proj.weight",
        "model.layers.{i}.mlp.up_proj.weight": "up_proj.weight",
        "model.layers.{i}.mlp.down_proj.weight": "down_proj.weight",
    },
    global_keys={
        "model.embed_tokens.weight": "embed.weight",
        "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "head.weight",
    },
    format_chat=_dream_chat,
)

from .families_moe import LLADA2, LLADA_MOE  # noqa: E402  (they build on the helpers above)

FAMILIES: dict[str, FamilyAdapter] = {"llada": LLADA, "dream": DREAM, "llada_moe": LLADA_MOE, "llada2": LLADA2}


def adapter_for(config: dict[str, Any], source: str) -> FamilyAdapter:
    model_type = config.get("model_type")
    for adapter in FAMILIES.values():
        if adapter.claims is not None and adapter.claims(config):
            return adapter
    for adapter in FAMILIES.values():
        if model_type in adapter.model_types:
            return adapter
    accepted = sorted(t for a in FAMILIES.values() for t in a.model_types)
    raise CheckpointError(f"{source}: unknown model_type {model_type!r} (accepted: {', '.join(accepted)})")


def adapter_named(family: str) -> FamilyAdapter:
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r} (accepted: {', '.join(FAMILIES)})")
    return FAMILIES[family]
