"""MoE family adapters: LLaDA-MoE (``modeling_lladamoe.py``) and LLaDA2.x (``modeling_llada2_moe.py``).

Both ship the same tokenizer (<|mask|> 156895, <|endoftext|> 156892 in a 157184 vocabulary);
a config without those ids keeps their distance from the vocabulary's end, as the tiny
fixtures do. Config keys the official modeling code never reads are accepted and ignored
(listed where they are), so a checkpoint loads exactly when the official code would run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .families import CheckpointError, FamilyAdapter, Slot, _expect, _require
from .spec import ModelSpec, MoESpec, SpecialTokens

_VOCAB = 157184
_MASK_FROM_END = _VOCAB - 156895
_EOS_FROM_END = _VOCAB - 156892


def _positive_int(config: dict[str, Any], key: str, family: str) -> int:
    value = _require(config, key, family)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{family} config.json: {key}={value!r} must be a positive integer")
    return value


def _tokens(config: dict[str, Any], vocab: int) -> SpecialTokens:
    eos = config.get("eos_token_id")
    eos = vocab - _EOS_FROM_END if eos is None else eos
    return SpecialTokens(
        mask=config.get("mask_token_id", vocab - _MASK_FROM_END),
        eos=eos,
        pad=config.get("pad_token_id", eos) if config.get("pad_token_id") is not None else eos,
        bos=config.get("bos_token_id"),
    )


def _rotary_dim(config: dict[str, Any], head_dim: int, family: str, default: float) -> int | None:
    factor = config.get("partial_rotary_factor", default)
    if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise CheckpointError(f"{family} config.json: partial_rotary_factor={factor!r} must be in (0, 1]")
    width = int(head_dim * factor)
    return None if width == head_dim else width


def _experts(config: dict[str, Any], family: str) -> tuple[int, int]:
    n_experts = _positive_int(config, "num_experts", family)
    top_k = _positive_int(config, "num_experts_per_tok", family)
    if top_k > n_experts:
        raise CheckpointError(f"{family} config.json: num_experts_per_tok={top_k} exceeds num_experts={n_experts}")
    return n_experts, top_k


def _mlp_slots(prefix: str, core: str) -> dict[str, list[Slot]]:
    return {f"{prefix}.{p}_proj.weight": [Slot(f"{core}.{p}_proj.weight")] for p in ("gate", "up", "down")}


def _expert_slots(prefix: str, core: str, n_experts: int) -> dict[str, list[Slot]]:
    return {
        f"{prefix}.{e}.{p}_proj.weight": [Slot(f"{core}.experts_{p}", expert=e)]
        for e in range(n_experts)
        for p in ("gate", "up", "down")
    }


def _shared_slots(prefix: str, core: str) -> dict[str, list[Slot]]:
    return {f"{prefix}.{p}_proj.weight": [Slot(f"{core}.shared_{p}.weight")] for p in ("gate", "up", "down")}


def _feed_forward_slots(
    spec: ModelSpec, i: int, official: str, core: str, expert_bias: str | None, shared: str
) -> dict[str, list[Slot]]:
    """Layer ``i``'s feed-forward: a dense MLP on non-MoE layers, else router, experts and the
    shared expert. ``expert_bias`` and ``shared`` are the family's checkpoint names for them."""
    moe = spec.moe
    if not moe.layers[i]:
        return _mlp_slots(f"{official}.mlp", core)
    slots = {f"{official}.mlp.gate.weight": [Slot(f"{core}.moe.router.weight")]}
    if expert_bias is not None:
        slots[expert_bias] = [Slot(f"{core}.moe.expert_bias")]
    slots.update(_expert_slots(f"{official}.mlp.experts", f"{core}.moe", moe.n_experts))
    if moe.shared_hidden:
        slots.update(_shared_slots(shared, f"{core}.moe"))
    return slots


_GLOBAL_KEYS_LLADA_MOE = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "final_norm.weight",
    "lm_head.weight": "head.weight",
}


# ------------------------------------------------------------------------------ LLaDA-MoE
# Read by modeling_lladamoe.py. Ignored there (and so here): norm_topk_prob (hard-coded off),
# moe_router_score_function (always softmax), routed_scaling_factor, router_num_group,
# router_topk_group, router_aux_loss_coef, output_router_logits, use_cache.
def _llada_moe_spec(config: dict[str, Any], directory: Path | None) -> ModelSpec:
    fam = "llada_moe"
    for key, allowed in (
        ("hidden_act", ("silu",)),
        ("tie_word_embeddings", (False,)),
        ("clip_qkv", (None,)),
        ("rope_scaling", (None,)),
        ("attention_bias", (False, True)),
        ("qk_layernorm", (None, False, True)),
        ("moe_router_enable_expert_bias", (None, False, True)),
    ):
        _expect(config, key, allowed, fam)
    d_model = _positive_int(config, "hidden_size", fam)
    n_heads = _positive_int(config, "num_attention_heads", fam)
    n_layers = _positive_int(config, "num_hidden_layers", fam)
    n_experts, top_k = _experts(config, fam)
    freq = _require(config, "moe_layer_freq", fam)
    if not isinstance(freq, list) or len(freq) != n_layers:
        raise CheckpointError(
            f"{fam} config.json: moe_layer_freq must list one entry per layer ({n_layers}), got {freq!r}"
        )
    layers = tuple(entry != 0 for entry in freq)
    shared = config.get("shared_expert_intermediate_size")
    if shared is not None and (not isinstance(shared, int) or shared < 1):
        raise CheckpointError(f"{fam} config.json: shared_expert_intermediate_size={shared!r} must be null or > 0")
    moe = MoESpec(
        n_experts=n_experts,
        top_k=top_k,
        expert_hidden=_positive_int(config, "expert_intermediate_size", fam),
        layers=layers,
        shared_hidden=shared or 0,
        score="softmax",
        expert_bias=bool(config.get("moe_router_enable_expert_bias")),
        bias_in_weights=True,
    )
    vocab = _positive_int(config, "vocab_size", fam)
    bias = bool(config.get("attention_bias", False))
    head_dim = d_model // n_heads
    dense = config.get("dense_intermediate_size", -1)
    if not all(layers) and (not isinstance(dense, int) or dense < 1):
        raise CheckpointError(f"{fam} config.json: dense_intermediate_size={dense!r} must be > 0 for the dense layers")
    return ModelSpec(
        family="llada",
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        mlp_hidden=max(dense, 1),
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=float(_require(config, "rope_theta", fam)),
        max_seq_len=config.get("max_position_embeddings", 4096),
        tokens=_tokens(config, vocab),
        rope_in_fp32=False,
        qkv_bias=bias,
        o_bias=bias,
        logit_shift=False,
        pad_shifts_positions=False,
        rotary_dim=_rotary_dim(config, head_dim, fam, default=-1),
        qk_norm=bool(config.get("qk_layernorm")),
        moe=moe,
    )


def _llada_moe_layer(spec: ModelSpec, i: int) -> dict[str, list[Slot]]:
    official, core = f"model.layers.{i}", f"blocks.{i}"
    slots = {
        f"{official}.input_layernorm.weight": [Slot(f"{core}.attn_norm_layer.weight")],
        f"{official}.post_attention_layernorm.weight": [Slot(f"{core}.mlp_norm_layer.weight")],
    }
    for p in ("q", "k", "v", "o"):
        slots[f"{official}.self_attn.{p}_proj.weight"] = [Slot(f"{core}.{p}_proj.weight")]
        if spec.o_bias:
            slots[f"{official}.self_attn.{p}_proj.bias"] = [Slot(f"{core}.{p}_proj.bias")]
    if spec.qk_norm:
        slots[f"{official}.self_attn.q_norm.weight"] = [Slot(f"{core}.q_norm_layer.weight")]
        slots[f"{official}.self_attn.k_norm.weight"] = [Slot(f"{core}.k_norm_layer.weight")]
    bias = f"{official}.mlp.expert_bias" if spec.moe.expert_bias else None
    slots.update(_feed_forward_slots(spec, i, official, core, bias, f"{official}.shared_expert"))
    return slots


def _is_llada_moe(config: dict[str, Any]) -> bool:
    """LLaDA-MoE's hub config says model_type 'llada' (dllm asks users to rename it 'lladamoe')."""
    return config.get("model_type") in ("llada", "lladamoe") and "expert_intermediate_size" in config


def _ling_chat(content: str, system: str | None) -> str:
    """The Ling tokenizer's turns (``<role>HUMAN</role>...<|role_end|>``), as dInfer writes them."""
    head = "" if system is None else f"<role>SYSTEM</role>{system}<|role_end|>"
    return f"{head}<role>HUMAN</role>{content}<|role_end|><role>ASSISTANT</role>"


def _llada_moe_chat(content: str, system: str | None = None) -> str:
    return _ling_chat(content, system)


LLADA_MOE = FamilyAdapter(
    name="llada_moe",
    model_types=("lladamoe",),
    spec_from_config=_llada_moe_spec,
    block_keys={},
    global_keys=_GLOBAL_KEYS_LLADA_MOE,
    format_chat=_llada_moe_chat,
    layer_slots=_llada_moe_layer,
    claims=_is_llada_moe,
)


# ------------------------------------------------------------------------------ LLaDA2.x
# Read by modeling_llada2_moe.py. Ignored there (and so here): score_function (always sigmoid),
# norm_topk_prob (always renormalised when k > 1), moe_router_enable_expert_bias (the bias
# buffer always exists), router_dtype, dropouts, max_window_layers, output_router_logits.
def _llada2_spec(config: dict[str, Any], directory: Path | None) -> ModelSpec:
    fam = "llada2"
    for key, allowed in (
        ("hidden_act", ("silu",)),
        ("tie_word_embeddings", (False,)),
        ("rope_scaling", (None,)),
        ("use_sliding_window", (False,)),
        ("norm_head", (False,)),
        ("score_function", ("sigmoid",)),
        ("norm_topk_prob", (True,)),
    ):
        _expect(config, key, allowed, fam)
    d_model = _positive_int(config, "hidden_size", fam)
    n_heads = _positive_int(config, "num_attention_heads", fam)
    n_layers = _positive_int(config, "num_hidden_layers", fam)
    head_dim = config.get("head_dim") or d_model // n_heads
    n_experts, top_k = _experts(config, fam)
    n_group, topk_group = config.get("n_group", 8), config.get("topk_group", 4)
    if not isinstance(n_group, int) or n_group < 1 or n_experts % n_group or n_experts // n_group < 2:
        raise CheckpointError(
            f"{fam} config.json: n_group={n_group!r} must divide num_experts={n_experts} into groups of at least 2"
        )
    if not isinstance(topk_group, int) or not 1 <= topk_group <= n_group or topk_group * (n_experts // n_group) < top_k:
        raise CheckpointError(
            f"{fam} config.json: topk_group={topk_group!r} must be in [1, n_group={n_group}] and leave "
            f"num_experts_per_tok={top_k} experts to choose from"
        )
    first_dense = config.get("first_k_dense_replace", 0)
    if not isinstance(first_dense, int) or not 0 <= first_dense <= n_layers:
        raise CheckpointError(f"{fam} config.json: first_k_dense_replace={first_dense!r} must be in [0, {n_layers}]")
    shared = config.get("num_shared_experts")
    if shared is not None and (not isinstance(shared, int) or shared < 0):
        raise CheckpointError(f"{fam} config.json: num_shared_experts={shared!r} must be null or >= 0")
    expert_hidden = _positive_int(config, "moe_intermediate_size", fam)
    moe = MoESpec(
        n_experts=n_experts,
        top_k=top_k,
        expert_hidden=expert_hidden,
        layers=tuple(i >= first_dense for i in range(n_layers)),
        shared_hidden=expert_hidden * (shared or 0),
        score="sigmoid",
        expert_bias=True,
        bias_in_weights=False,
        normalize=True,
        scaling=float(config.get("routed_scaling_factor", 2.5)),
        n_group=n_group,
        topk_group=topk_group,
        router_in_fp32=True,
        combine_in_fp32=True,
    )
    vocab = _positive_int(config, "vocab_size", fam)
    n_kv = config.get("num_key_value_heads") or n_heads
    dense = config.get("intermediate_size")
    if first_dense and (not isinstance(dense, int) or dense < 1):
        raise CheckpointError(f"{fam} config.json: intermediate_size={dense!r} must be > 0 for the dense layers")
    return ModelSpec(
        family="llada2",
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        mlp_hidden=dense or 1,
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        max_seq_len=config.get("max_position_embeddings", 16384),
        tokens=_tokens(config, vocab),
        rope_in_fp32=False,
        qkv_bias=bool(config.get("use_qkv_bias", False)),
        o_bias=bool(config.get("use_bias", True)),
        logit_shift=False,
        pad_shifts_positions=False,
        attn_head_dim=None if head_dim == d_model // n_heads else head_dim,
        rotary_dim=_rotary_dim(config, head_dim, fam, default=0.5),
        qk_norm=bool(config.get("use_qk_norm", True)),
        moe=moe,
        block_causal=True,
        token_editing=config.get("model_type") == "llada21_moe",
    )


def _llada2_layer(spec: ModelSpec, i: int) -> dict[str, list[Slot]]:
    official, core = f"model.layers.{i}", f"blocks.{i}"
    q, kv = spec.n_heads * spec.head_dim, spec.kv_dim
    parts = (("q", 0, q), ("k", q, q + kv), ("v", q + kv, q + 2 * kv))
    slots = {
        f"{official}.input_layernorm.weight": [Slot(f"{core}.attn_norm_layer.weight")],
        f"{official}.post_attention_layernorm.weight": [Slot(f"{core}.mlp_norm_layer.weight")],
        f"{official}.attention.query_key_value.weight": [
            Slot(f"{core}.{p}_proj.weight", rows=slice(a, b)) for p, a, b in parts
        ],
        f"{official}.attention.dense.weight": [Slot(f"{core}.o_proj.weight")],
    }
    if spec.qkv_bias:
        slots[f"{official}.attention.query_key_value.bias"] = [
            Slot(f"{core}.{p}_proj.bias", rows=slice(a, b)) for p, a, b in parts
        ]
    if spec.o_bias:
        slots[f"{official}.attention.dense.bias"] = [Slot(f"{core}.o_proj.bias")]
    if spec.qk_norm:
        slots[f"{official}.attention.query_layernorm.weight"] = [Slot(f"{core}.q_norm_layer.weight")]
        slots[f"{official}.attention.key_layernorm.weight"] = [Slot(f"{core}.k_norm_layer.weight")]
    bias = f"{official}.mlp.gate.expert_bias"
    slots.update(_feed_forward_slots(spec, i, official, core, bias, f"{official}.mlp.shared_experts"))
    return slots


def _llada2_chat(content: str, system: str | None = None) -> str:
    """dInfer's LLaDA2 prompts carry the system turn 'detailed thinking off' unless one is given."""
    return _ling_chat(content, "detailed thinking off" if system is None else system)


LLADA2 = FamilyAdapter(
    name="llada2",
    model_types=("llada2_moe", "llada21_moe"),
    spec_from_config=_llada2_spec,
    block_keys={},
    global_keys={
        "model.word_embeddings.weight": "embed.weight",
        "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "head.weight",
    },
    format_chat=_llada2_chat,
    layer_slots=_llada2_layer,
)
