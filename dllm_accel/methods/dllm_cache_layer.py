"""One layer of dLLM-Cache: the four refresh branches, composed from the block primitives.

Every feature is kept over the whole sequence in one preallocated buffer per layer; rows
``[0, P)`` are the prompt cache and rows ``[P, L)`` the response ("gen") cache, so
"cached prompt K ; new gen K" is the buffer itself and no step concatenates a cache.
K and V are stored flat (``[B, L, kv_dim]``) and before RoPE, as the official hooks store
them; RoPE is applied to every key at every pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ..models.compiled import cosine_similarity
from ..models.core import Block
from ..models.rope import RopeTable
from ..models.spec import ModelSpec


class Refresh(Enum):
    """Which segments a layer recomputes; the values are the fixtures' branch letters."""

    BOTH = "A"
    GEN = "B"
    PROMPT = "C"
    NEITHER = "D"

    @classmethod
    def of(cls, prompt: bool, gen: bool) -> Refresh:
        if prompt and gen:
            return cls.BOTH
        if gen:
            return cls.GEN
        return cls.PROMPT if prompt else cls.NEITHER


@dataclass
class LayerCache:
    k: torch.Tensor  # [B, L, kv_dim], pre-RoPE
    v: torch.Tensor  # [B, L, kv_dim]
    attn: torch.Tensor  # [B, L, d_model], attention output after attn_out
    mlp: torch.Tensor  # [B, L, d_model], FFN output

    @classmethod
    def allocate(cls, batch: int, length: int, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> LayerCache:
        def buffer(width: int) -> torch.Tensor:
            return torch.zeros(batch, length, width, dtype=dtype, device=device)

        return cls(buffer(spec.kv_dim), buffer(spec.kv_dim), buffer(spec.d_model), buffer(spec.d_model))


@dataclass
class PassContext:
    """What every layer of one forward pass shares."""

    prompt_length: int
    rope: RopeTable  # cos/sin for all L positions
    key_mask: torch.Tensor | None
    num_selected: int | None  # r = int(G * rho) rows refreshed by V similarity; None = no transfer
    k_scatter_width: int  # K channels written at the selected rows (kv_dim, or the literal hidden // 7)


@dataclass
class LayerRecord:
    """What one layer did in one step (kept only when a trace is requested)."""

    branch: Refresh
    selected: torch.Tensor | None = None  # [B, r] gen-relative rows, in topk order
    similarity: torch.Tensor | None = None  # [B, G] cosine between the new and the cached gen V


def run_layer(
    block: Block, cache: LayerCache, x: torch.Tensor, branch: Refresh, ctx: PassContext
) -> tuple[torch.Tensor, LayerRecord, int]:
    """The layer output, what it did, and how many rows went through attention and FFN.

    One graph per refresh branch when compiled, shared by every layer (the blocks' weights are
    inputs of the graph, not constants of it)."""
    record = LayerRecord(branch)
    index = _attention_half(block, cache, x, branch, ctx, record)
    h = x + cache.attn
    rows = _ffn_half(block, cache, h, branch, ctx.prompt_length, index)
    return h + cache.mlp, record, rows


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H*D] (a view of the projection output it came from)."""
    b, h, t_len, d = t.shape
    return t.transpose(1, 2).reshape(b, t_len, h * d)


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t_len, width = t.shape
    return t.view(b, t_len, n_heads, width // n_heads).transpose(1, 2)


def _rows(index: torch.Tensor, width: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(-1, -1, width)


def _store_kv(cache: LayerCache, k: torch.Tensor, v: torch.Tensor, rows: slice) -> None:
    cache.k[:, rows] = _flat(k)
    cache.v[:, rows] = _flat(v)


def _attend(block: Block, queries: torch.Tensor, cache: LayerCache, ctx: PassContext) -> torch.Tensor:
    """Already rotated queries against every cached key and value; returns attn_out's output."""
    n_kv = block.spec.n_kv_heads
    keys = block.rope(_heads(cache.k, n_kv), ctx.rope)
    out = block.attend(queries, keys, _heads(cache.v, n_kv), ctx.key_mask)
    return block.attn_out(out)


def _select_by_value(
    block: Block, cache: LayerCache, x: torch.Tensor, ctx: PassContext, record: LayerRecord
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the r gen rows whose V moved most, and refresh the gen K/V caches.

    The new V replaces the whole gen V cache; K is recomputed and written only at the picked
    rows. Returns the picked rows [B, r] and their rotated queries.
    """
    p = ctx.prompt_length
    normed = block.attn_norm(x[:, p:])
    values = _flat(block.value(normed))
    similarity = cosine_similarity(values, cache.v[:, p:])
    index = torch.topk(similarity, k=ctx.num_selected, largest=False).indices
    picked = torch.gather(normed, 1, _rows(index, normed.shape[-1]))
    q, k, _ = block.qkv(picked)
    cache.v[:, p:] = values
    cache.k[:, p:].scatter_(1, _rows(index, ctx.k_scatter_width), _flat(k))
    record.selected, record.similarity = index, similarity
    return index, block.rope(q, ctx.rope.select(index + p))


def _attention_half(
    block: Block, cache: LayerCache, x: torch.Tensor, branch: Refresh, ctx: PassContext, record: LayerRecord
) -> torch.Tensor | None:
    """Update ``cache.attn`` for this step; returns the similarity-picked gen rows, if any."""
    p = ctx.prompt_length
    if branch is Refresh.BOTH:
        q, k, v = block.qkv(block.attn_norm(x))
        _store_kv(cache, k, v, slice(None))
        cache.attn[:] = _attend(block, block.rope(q, ctx.rope), cache, ctx)
        return None
    if branch is Refresh.GEN:
        q, k, v = block.qkv(block.attn_norm(x[:, p:]))
        _store_kv(cache, k, v, slice(p, None))
        cache.attn[:, p:] = _attend(block, block.rope(q, ctx.rope.select(slice(p, None))), cache, ctx)
        return None
    queries = []
    if branch is Refresh.PROMPT:
        q, k, v = block.qkv(block.attn_norm(x[:, :p]))
        _store_kv(cache, k, v, slice(0, p))
        queries.append(block.rope(q, ctx.rope.select(slice(0, p))))
    index = None
    if ctx.num_selected is not None:
        index, picked_queries = _select_by_value(block, cache, x, ctx, record)
        if ctx.num_selected > 0:
            queries.append(picked_queries)
    if queries:
        out = _attend(block, torch.cat(queries, dim=2), cache, ctx)
        n_prompt = p if branch is Refresh.PROMPT else 0
        cache.attn[:, :n_prompt] = out[:, :n_prompt]
        if index is not None:
            cache.attn[:, p:].scatter_(1, _rows(index, out.shape[-1]), out[:, n_prompt:])
    return index


def _ffn_half(
    block: Block, cache: LayerCache, h: torch.Tensor, branch: Refresh, p: int, index: torch.Tensor | None
) -> int:
    """Update ``cache.mlp`` from the post-attention states; returns the rows computed."""
    if branch is Refresh.BOTH:
        cache.mlp[:] = block.mlp(block.mlp_norm(h))
        return h.shape[1]
    if branch is Refresh.GEN:
        cache.mlp[:, p:] = block.mlp(block.mlp_norm(h[:, p:]))
        return h.shape[1] - p
    inputs = []
    n_prompt = p if branch is Refresh.PROMPT else 0
    if n_prompt:
        inputs.append(h[:, :p])
    if index is not None and index.shape[1] > 0:
        inputs.append(torch.gather(h[:, p:], 1, _rows(index, h.shape[-1])))
    if not inputs:
        return 0
    rows = torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]
    out = block.mlp(block.mlp_norm(rows))
    cache.mlp[:, :n_prompt] = out[:, :n_prompt]
    if index is not None:
        cache.mlp[:, p:].scatter_(1, _rows(index, out.shape[-1]), out[:, n_prompt:])
    return rows.shape[1]
