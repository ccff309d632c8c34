"""DyLLM's sparse-attention kernel, both published builds, in PyTorch (CPU) and Triton (CUDA).

A query row that is not salient keeps ``C_old + sum_j softmax_j(q K_j / sqrt(D)) dV_j``,
where dV is zero except on the keys whose values were recomputed (the salient ones). The CUDA
kernel walks each request's keys in 64-key tiles with an online softmax, and its two builds
differ (spec B.9):

- ``fixed`` (scale-snu): scores re-zeroed per tile and keys past the request's end masked,
  which is the exact softmax;
- ``legacy`` (younjoo0614 HEAD): the score accumulator is not re-zeroed, so tile j scores
  ``scale * (q K_j + P_{j-1})`` with ``P_{j-1}`` the previous tile's exponentiated scores,
  and the zero-padded keys of a request's last tile score like real keys (no -inf).

Only approximated rows (and through them the saliency decisions) see the difference.

Here dV is given compactly: its rows on the salient key columns only. The fixed build needs
no tiles at all on CPU: one score matrix, the softmax statistics over all keys, and the PV
product over the salient columns. Tiles matter only where the kernel's numerics depend on
them: probabilities rounded to 16 bits before the PV product (relative to the running max of
their tile, which a cumulative max over tile maxima gives) and the legacy carry, whose tile j
depends on tile j-1's normalised scores, so that recurrence alone runs tile by tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TILE = 64


@dataclass(frozen=True)
class KernelQuirks:
    carry_scores: bool  # tile j adds the previous tile's exponentiated scores to its own
    unmasked_padding: bool  # zero-padded keys of the last tile take part in the softmax


KERNELS = {
    "fixed": KernelQuirks(carry_scores=False, unmasked_padding=False),
    "legacy": KernelQuirks(carry_scores=True, unmasked_padding=True),
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernel accumulates 16-bit inputs in fp32; wider inputs keep their precision here."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def context_delta(
    q: torch.Tensor,
    keys: torch.Tensor,
    delta_v: torch.Tensor,
    columns: torch.Tensor,
    starts: torch.Tensor | None,
    quirks: KernelQuirks,
    pv_dtype: torch.dtype | None = None,
    length: int | None = None,
) -> torch.Tensor:
    """``softmax(q K^T / sqrt(D)) dV`` per query row, with the kernel's numerics.

    ``q`` [B, H, T, D] in the accumulation dtype; ``keys`` [B, H_kv, L', D], whose first
    ``length`` rows (default all) are the keys: row b's are the columns ``starts[b]..length-1``
    (left padding; None: all). ``delta_v`` [B, H_kv, W, D] holds dV on the key columns
    ``columns`` [B, W] (distinct per row); a column >= ``length`` is an empty slot (weight 0).
    ``pv_dtype``: what the probabilities are rounded to before the PV product (the kernel's bf16
    mma); None keeps them. Returns [B, H, T, D] in ``q``'s dtype.
    """
    batch, heads, rows, dim = q.shape
    length = keys.shape[2] if length is None else length
    groups = heads // keys.shape[1]
    # GQA without copying K: the query heads of one KV head become extra rows
    grouped = q.reshape(batch, keys.shape[1], groups * rows, dim)
    scores = torch.matmul(grouped, keys.to(q.dtype).transpose(-1, -2))
    if quirks.carry_scores or quirks.unmasked_padding:
        weights = _tiled_weights(scores, columns, starts, length, quirks, dim**-0.5, pv_dtype)
    else:
        scores[..., length:] = -torch.inf
        weights = _weights(scores.mul_(dim**-0.5), columns, starts, pv_dtype)
    out = torch.matmul(weights, delta_v.to(q.dtype))
    return out.view(batch, heads, rows, dim)


def _weights(
    scores: torch.Tensor, columns: torch.Tensor, starts: torch.Tensor | None, pv_dtype: torch.dtype | None
) -> torch.Tensor:
    """Softmax weights [B, H_kv, R, W] of the ``columns`` keys, normalised over every real key."""
    total = scores.shape[-1]
    if starts is not None:
        padded = torch.arange(total, device=scores.device) < starts[:, None]
        scores.masked_fill_(padded[:, None, None, :], -torch.inf)
    picked = columns[:, None, None, :].expand(*scores.shape[:3], -1)
    if pv_dtype is None:
        row_max = scores.amax(dim=-1, keepdim=True)
        chosen = scores.gather(-1, picked)
        row_sum = scores.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
        return chosen.sub_(row_max).exp_().div_(row_sum)
    # the kernel rounds exp(s - m_j), m_j the running max after the key's tile, then rescales
    first = torch.zeros_like(columns[:, :1]) if starts is None else starts[:, None]
    tile_of = ((torch.arange(total, device=scores.device) - first).clamp(min=0) // TILE).expand(scores.shape[0], -1)
    n_tiles = math.ceil(total / TILE)
    tile_max = torch.full((*scores.shape[:3], n_tiles), -torch.inf, dtype=scores.dtype, device=scores.device)
    tile_max.scatter_reduce_(-1, tile_of[:, None, None, :].expand_as(scores), scores, "amax")
    running = tile_max.cummax(dim=-1).values
    row_max = running[..., -1:]
    column_tiles = tile_of.gather(1, columns)[:, None, None, :].expand_as(picked)
    local_max = running.gather(-1, column_tiles)
    chosen = scores.gather(-1, picked)
    row_sum = (scores - row_max).exp_().sum(dim=-1, keepdim=True)
    rounded = (chosen - local_max).exp_().to(pv_dtype).to(scores.dtype)
    return rounded.mul_((local_max - row_max).exp_()).div_(row_sum)


def _tiled_weights(
    scores: torch.Tensor,
    columns: torch.Tensor,
    starts: torch.Tensor | None,
    total: int,
    quirks: KernelQuirks,
    scale: float,
    pv_dtype: torch.dtype | None,
) -> torch.Tensor:
    """The legacy builds' weights: tile by tile, since a carried tile depends on the previous one."""
    batch = scores.shape[0]
    first = torch.zeros(batch, dtype=torch.long, device=scores.device) if starts is None else starts
    lengths = total - first
    n_tiles = math.ceil(total / TILE)  # the longest request's, read without asking the device
    # each request's keys from its first one, in whole tiles (zero keys score 0 past its end)
    offsets = torch.arange(n_tiles * TILE, device=scores.device)
    real = offsets[None, :] < lengths[:, None]
    source = (first[:, None] + offsets).clamp(max=total - 1)
    raw = scores.gather(-1, source[:, None, None, :].expand(*scores.shape[:3], -1))
    raw.masked_fill_(~real[:, None, None, :], 0.0)
    row_tiles = (lengths + TILE - 1) // TILE
    row_max = torch.full(scores.shape[:3], -torch.inf, dtype=scores.dtype, device=scores.device)
    row_sum = torch.zeros_like(row_max)
    probs = torch.empty_like(raw)
    tile_max = torch.empty(*scores.shape[:3], n_tiles, dtype=scores.dtype, device=scores.device)
    carry = torch.zeros(*scores.shape[:3], TILE, dtype=scores.dtype, device=scores.device)
    for j in range(n_tiles):
        tile = slice(j * TILE, (j + 1) * TILE)
        tile_scores = raw[..., tile] + carry if quirks.carry_scores else raw[..., tile]
        tile_scores = tile_scores * scale
        if not quirks.unmasked_padding:
            tile_scores = tile_scores.masked_fill(~real[:, None, None, tile], -torch.inf)
        new_max = torch.maximum(row_max, tile_scores.amax(dim=-1))
        rescale = torch.exp(row_max - new_max)
        torch.exp(tile_scores - new_max[..., None], out=probs[..., tile])
        active = (j < row_tiles)[:, None, None]
        row_sum = torch.where(active, row_sum * rescale + probs[..., tile].sum(dim=-1), row_sum)
        row_max = torch.where(active, new_max, row_max)
        tile_max[..., j] = row_max
        carry = probs[..., tile]
    at = (columns - first[:, None]).clamp(max=n_tiles * TILE - 1)
    picked = at[:, None, None, :].expand(*scores.shape[:3], -1)
    chosen = probs.gather(-1, picked).masked_fill_((columns >= total)[:, None, None, :], 0.0)
    if pv_dtype is not None:
        chosen = chosen.to(pv_dtype).to(scores.dtype)
    local_max = tile_max.gather(-1, picked // TILE)
    return chosen * torch.exp(local_max - row_max[..., None]) / row_sum[..., None]


def update_context_torch(
    q: torch.Tensor,
    keys: torch.Tensor,
    delta_v: torch.Tensor,
    columns: torch.Tensor,
    exact: torch.Tensor,
    cached: torch.Tensor,
    real: torch.Tensor | None,
    starts: torch.Tensor | None,
    first: int,
    threshold: float,
    carry_scores: bool,
    unmasked_padding: bool,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """One layer's context update, as the engine's one sparse-attention kernel: every query row's
    new context, its cosine with the cached one and the new salient set.

    ``q`` [B, H, T, D] (the query rows, absolute columns ``first..first+T-1``) in the
    accumulation dtype; ``keys`` [B, H_kv, L + 1, D] the K cache, whose last row is a sink and
    not a key; ``columns`` [B, W] the salient rows (ascending absolute columns, L for empty
    slots), with ``delta_v`` [B, H_kv, W, D] their dV and ``exact`` [B, H, W, D] their exact
    contexts; ``cached`` [B, H, T, D] the cached contexts, overwritten with the new ones (rounded
    to its dtype). ``real`` [B, T] (None: all) limits the new salient set, which is returned:
    [B, T] bool, cosine < ``threshold``. Probabilities are rounded to ``cached``'s dtype before
    the PV product when the accumulation dtype is wider (the kernel's 16-bit mma). ``lse`` [B, H, T]
    (fixed build, no rounding): every row's softmax log-normaliser, so that only the salient
    columns' probabilities are formed.
    """
    length = keys.shape[2] - 1
    rows = q.shape[2]
    quirks = KernelQuirks(carry_scores, unmasked_padding)
    pv_dtype = None if cached.dtype == q.dtype else cached.dtype
    if lse is None:
        delta = context_delta(q, keys, delta_v, columns, starts, quirks, pv_dtype, length)
    else:
        delta = _delta_from_lse(q, keys, delta_v, columns, lse, length)
    # one row past the query rows' last absolute column takes the empty slots' exact contexts
    context = torch.empty(*q.shape[:2], length - first + 1, q.shape[3], dtype=q.dtype, device=q.device)
    new = context[:, :, :rows]
    torch.add(cached, delta, out=new)
    into = (columns - first)[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3])
    context.scatter_(2, into, exact)
    salient = cosine(new, cached, torch.promote_types(torch.float32, cached.dtype)) < threshold
    cached.copy_(new)
    return salient if real is None else salient & real


# One operator per layer: on CUDA the Triton kernel of ``dyllm_triton``, elsewhere
# ``update_context_torch``, and one opaque node under torch.compile. Declared with
# ``torch.library.Library`` rather than ``custom_op``, whose Python wrapper costs ~50 us a call
# under no_grad on CPU (the tiny model's operator runs in ~90 us), where the dispatcher adds ~5.
_LIBRARY = torch.library.Library("dllm_accel", "FRAGMENT")
_LIBRARY.define(
    "dyllm_context(Tensor q, Tensor keys, Tensor delta_v, Tensor columns, Tensor exact, Tensor(a!) cached, "
    "Tensor? real, Tensor? starts, SymInt first, float threshold, bool carry_scores, bool unmasked_padding, "
    "Tensor? lse=None) -> Tensor"
)
_LIBRARY.impl("dyllm_context", update_context_torch, "CompositeExplicitAutograd")


def _cuda_update_context(
    q, keys, delta_v, columns, exact, cached, real, starts, first, threshold, carry_scores, unmasked_padding, lse=None
):
    """The Triton kernel where triton is installed and the caches are 16 or 32 bits; else PyTorch."""
    from .dyllm_triton import available, triton_update_context

    args = (q, keys, delta_v, columns, exact, cached, real, starts, first, threshold, carry_scores, unmasked_padding)
    if available() and cached.dtype != torch.float64:
        return triton_update_context(*args)
    return update_context_torch(*args, lse)


_LIBRARY.impl("dyllm_context", _cuda_update_context, "CUDA")


@torch.library.register_fake("dllm_accel::dyllm_context", lib=_LIBRARY)
def _(
    q, keys, delta_v, columns, exact, cached, real, starts, first, threshold, carry_scores, unmasked_padding, lse=None
):
    return q.new_empty(q.shape[0], q.shape[2], dtype=torch.bool)


update_context = torch.ops.dllm_accel.dyllm_context


def attention_with_lse(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query row's exact attention [B, H, T, D] and softmax log-normaliser [B, H, T], from
    PyTorch's fused CPU attention (the kernel ``scaled_dot_product_attention`` runs there), so the
    approximation never forms a [T, L] score matrix. ``bias`` [B, 1, 1, L]: 0 or -inf per key."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, keys, values, attn_mask=bias)[:2]
    return out, lse


def _delta_from_lse(
    q: torch.Tensor, keys: torch.Tensor, delta_v: torch.Tensor, columns: torch.Tensor, lse: torch.Tensor, length: int
) -> torch.Tensor:
    """The fixed build's ``softmax(q K^T / sqrt(D)) dV`` given each row's log-normaliser: the
    probabilities of the salient columns only (empty slots, column ``length``, weigh 0)."""
    batch, heads, rows, dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads * rows, dim)
    salient_keys = keys.gather(2, columns[:, None, :, None].expand(-1, kv_heads, -1, dim)).to(q.dtype)
    scores = torch.matmul(grouped, salient_keys.transpose(-1, -2)).mul_(dim**-0.5)
    weights = scores.sub_(lse.reshape(batch, kv_heads, -1, 1)).exp_()
    weights.masked_fill_((columns >= length)[:, None, None, :], 0.0)
    return torch.matmul(weights, delta_v.to(q.dtype)).view(batch, heads, rows, dim)


def cosine(new: torch.Tensor, old: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per row over every head at once (inputs [B, H, T, D] -> [B, T]), as the kernel's statistics:
    ``dot * rsqrt(max(|new|^2, 1e-8)) * rsqrt(max(|old|^2, 1e-8))`` accumulated in ``dtype``."""
    new, old = new.to(dtype), old.to(dtype)
    dot = (new * old).sum(dim=(1, 3))
    new_sq = (new * new).sum(dim=(1, 3))
    old_sq = (old * old).sum(dim=(1, 3))
    return dot * torch.rsqrt(new_sq.clamp(min=1e-8)) * torch.rsqrt(old_sq.clamp(min=1e-8))
