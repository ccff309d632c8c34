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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim
