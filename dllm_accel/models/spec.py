"""Everything that differs between model families, in one frozen record.

The transformer core reads only this; family adapters are the sole place that know
how an official ``config.json`` maps onto it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialTokens:
    mask: int
    eos: int
    pad: int
    bos: int | None = None
    eot: int | None = None


@dataclass(frozen=True)
class MoESpec:
    """A routed feed-forward: which layers use it and how tokens pick and weigh experts."""

    n_experts: int
    top_k: int
    expert_hidden: int
    # per layer: True where the layer's FFN is the MoE, False where it is the dense MLP
    layers: tuple[bool, ...]
    # intermediate size of the always-active shared expert (0: none)
    shared_hidden: int = 0
    score: str = "softmax"  # "softmax" (LLaDA-MoE) or "sigmoid" (LLaDA2)
    # a learned per-expert bias added to the scores before top-k
    expert_bias: bool = False
    # LLaDA-MoE weighs by the biased score; LLaDA2 only selects with it and weighs by the raw score
    bias_in_weights: bool = False
    # renormalise the top-k weights to sum to one
    normalize: bool = False
    scaling: float = 1.0
    # group-limited routing (DeepSeek-V3 style): experts in n_group groups, top-k only inside topk_group
    n_group: int = 1
    topk_group: int = 1
    # router logits from fp32 inputs and weights (LLaDA2) or in the activation dtype (LLaDA-MoE)
    router_in_fp32: bool = False
    # weigh and sum the experts' outputs in fp32 (LLaDA2) or in the activation dtype (LLaDA-MoE)
    combine_in_fp32: bool = False


@dataclass(frozen=True)
class ModelSpec:
    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden: int
    norm_eps: float
    rope_theta: float
    max_seq_len: int
    tokens: SpecialTokens
    # LLaDA rotates q/k in fp32; Dream casts cos/sin to the activation dtype and rotates there.
    rope_in_fp32: bool
    qkv_bias: bool
    # Dream predicts token i from position i-1 (its AR initialisation).
    logit_shift: bool
    # Dream shifts position ids past left padding; LLaDA keeps 0..L-1.
    pad_shifts_positions: bool
    # Linear position interpolation factor (1.0 = none); long-context methods sweep it.
    rope_scaling: float = 1.0
    # explicit attention head size where it is not d_model // n_heads
    attn_head_dim: int | None = None
    # rotate only the first rotary_dim channels of each head (partial rotary); None: all
    rotary_dim: int | None = None
    # per-head RMSNorm of q and k before RoPE
    qk_norm: bool = False
    o_bias: bool = False
    moe: MoESpec | None = None
    # LLaDA2: bidirectional inside a block, causal across blocks (a block-diffusion sampler drives it)
    block_causal: bool = False
    # LLaDA2.1: its sampler may rewrite committed tokens (token-to-token editing) by default
    token_editing: bool = False

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.d_model // self.n_heads

    @property
    def rope_dim(self) -> int:
        return self.rotary_dim or self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim
