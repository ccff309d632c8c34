"""One bidirectional transformer for every dLLM family.

Blocks expose their steps as primitives (``attn_norm``, ``qkv``, ``attend``, ``attn_out``,
``mlp_norm``, ``mlp``) so acceleration methods recompute or reuse pieces without copying
model code. ``Block.forward`` is those primitives in order and is what vanilla runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import fusable, mean_square
from .moe import MoEFeedForward
from .rope import RopeTable
from .spec import ModelSpec


@fusable
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in fp32, cast back, then scale by the weight in the input dtype."""
    h = x.float()
    h = h * torch.rsqrt(mean_square(h) + eps)
    return weight * h.to(x.dtype)


@fusable
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU gate, ``silu(gate) * up``."""
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back, then scale by the weight in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, index: int = 0) -> None:
        super().__init__()
        self.spec = spec
        d, hd = spec.d_model, spec.head_dim
        self.attn_norm_layer = RMSNorm(d, spec.norm_eps)
        self.q_proj = nn.Linear(d, spec.n_heads * hd, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(d, spec.kv_dim, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(d, spec.kv_dim, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(spec.n_heads * hd, d, bias=spec.o_bias)
        if spec.qk_norm:
            self.q_norm_layer = RMSNorm(hd, spec.norm_eps)
            self.k_norm_layer = RMSNorm(hd, spec.norm_eps)
        self.mlp_norm_layer = RMSNorm(d, spec.norm_eps)
        self.moe = MoEFeedForward(d, spec.moe) if spec.moe is not None and spec.moe.layers[index] else None
        if self.moe is None:
            self.gate_proj = nn.Linear(d, spec.mlp_hidden, bias=False)
            self.up_proj = nn.Linear(d, spec.mlp_hidden, bias=False)
            self.down_proj = nn.Linear(spec.mlp_hidden, d, bias=False)

    # -- primitives -------------------------------------------------------------------
    def attn_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn_norm_layer(x)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project to heads: q [B, H, T, D], k and v [B, H_kv, T, D], before RoPE."""
        return self.query(h), self.key(h), self.value(h)

    def _heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n_heads, self.spec.head_dim).transpose(1, 2)

    def query(self, h: torch.Tensor) -> torch.Tensor:
        """Q alone [B, H, T, D], before RoPE (after QK-norm), for methods that project keys for fewer rows."""
        q = self._heads(self.q_proj(h), self.spec.n_heads)
        return self.q_norm_layer(q) if self.spec.qk_norm else q

    def key(self, h: torch.Tensor) -> torch.Tensor:
        """K alone [B, H_kv, T, D], before RoPE (after QK-norm)."""
        k = self._heads(self.k_proj(h), self.spec.n_kv_heads)
        return self.k_norm_layer(k) if self.spec.qk_norm else k

    def value(self, h: torch.Tensor) -> torch.Tensor:
        """V alone [B, H_kv, T, D], for methods that score tokens by how their values changed."""
        return self._heads(self.v_proj(h), self.spec.n_kv_heads)

    def rope(self, x: torch.Tensor, table: RopeTable) -> torch.Tensor:
        return table.apply(x)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention; ``key_mask`` [B, Tk] bool hides padded keys, or [B|1, 1, Tq, Tk] bool is the full mask
        (block-causal models)."""
        mask = key_mask[:, None, None, :] if key_mask is not None and key_mask.dim() == 2 else key_mask
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    def attn_out(self, ctx: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = ctx.shape
        return self.o_proj(ctx.transpose(1, 2).reshape(b, t, -1))

    def mlp_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_norm_layer(x)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.moe is not None:
            return self.moe(h)
        return self.down_proj(swiglu(self.gate_proj(h), self.up_proj(h)))

    # -- the plain pass ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, rope: RopeTable, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(self.attn_norm(x))
        ctx = self.attend(self.rope(q, rope), self.rope(k, rope), v, key_mask)
        x = x + self.attn_out(ctx)
        return x + self.mlp(self.mlp_norm(x))


class DiffusionTransformer(nn.Module):
    """Embedding, pre-norm blocks, final norm and an untied output head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.n_layers))
        self.final_norm = RMSNorm(spec.d_model, spec.norm_eps)
        self.head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def rope_table(self, positions: torch.Tensor) -> RopeTable:
        s = self.spec
        return RopeTable(positions, s.rope_dim, s.rope_theta, s.rope_in_fp32, self.dtype, s.rope_scaling)

    def positions_for(self, length: int, start: int = 0) -> torch.Tensor:
        return torch.arange(start, start + length, device=self.device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and head over hidden states of any subset of rows."""
        return self.head(self.final_norm(hidden))

    def logits_for(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Logits (Dream's shift applied) of rows [start, stop) of a pass whose last hidden
        states are ``hidden``: final norm and head over only the rows they need. Dream's row
        i comes from state i - 1, except the pass's first row, which keeps its own."""
        if not self.spec.logit_shift:
            return self.logits(hidden[:, start:stop])
        if start == 0:
            return self.shift_logits(self.logits(hidden[:, :stop]))
        return self.logits(hidden[:, start - 1 : stop - 1])

    def shift_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Align Dream's next-token logits with the positions they fill (no-op for LLaDA)."""
        if not self.spec.logit_shift:
            return logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def trunk(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        hidden: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Last hidden states (before the final norm) of a full pass; appends the embeddings
        and every block's output but the last to ``hidden`` when given."""
        if positions is None:
            positions = self.positions_for(input_ids.shape[1])
        rope = self.rope_table(positions)
        x = self.embed(input_ids)
        if hidden is not None:
            hidden.append(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, key_mask)
            if hidden is not None and i < len(self.blocks) - 1:
                hidden.append(x)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Raw (unshifted) logits for every position.

        Hidden states follow the HF convention: embeddings, each block's output but the
        last, then the final-norm output.
        """
        hidden = [] if output_hidden_states else None
        x = self.trunk(input_ids, positions, key_mask, hidden)
        normed = self.final_norm(x)
        if hidden is not None:
            hidden.append(normed)
        return self.head(normed), hidden
