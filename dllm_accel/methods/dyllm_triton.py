"""DyLLM's context update as one Triton kernel per layer (CUDA; CPU tests run it interpreted).

One program takes ``BLOCK_M`` query rows of one request through every head: per head an online
softmax over the request's keys in 64-key tiles (both published builds, spec B.9), the PV
product only on tiles holding a salient key, ``C_old + P dV / l`` (or the exact context for a
salient row), the new context written over the cached one, and the three cosine sums kept in
registers across heads, so the statistics need no atomics and are deterministic. It computes
what ``dyllm_kernel.update_context`` computes in PyTorch; tests compare the two.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # optional extra: pip install dllm-accel[triton]
    triton = None

TILE = 64


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _context_kernel(
        q_ptr, k_ptr, dv_ptr, exact_ptr, old_ptr, slot_ptr, start_ptr, real_ptr, out_ptr,
        sq_b, sq_h, sq_t, sk_b, sk_h, sk_l, sdv_b, sdv_h, sdv_w, se_b, se_h, se_w, so_b, so_h, so_t,
        s_slot, s_real, s_out,
        rows, length, first, heads, groups, scale, threshold,
        DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CARRY: tl.constexpr, UNMASKED: tl.constexpr, ROUND: tl.constexpr,
        HAS_REAL: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < rows
        d_ok = offs_d < DIM
        tile_ok = row_ok[:, None] & d_ok[None, :]
        start = tl.load(start_ptr + b)
        n_tiles = tl.cdiv(length - start, BLOCK_N)
        row_slot = tl.load(slot_ptr + b * s_slot + first + offs_m, mask=row_ok, other=-1)
        dot = tl.zeros([BLOCK_M], dtype=tl.float32)
        new_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        old_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for h in range(0, heads):
            kv = h // groups
            q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], mask=tile_ok, other=0.0)
            row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            carry = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for j in range(0, n_tiles):
                offs_n = start + j * BLOCK_N + tl.arange(0, BLOCK_N)
                key_ok = offs_n < length
                k = tl.load(
                    k_ptr + b * sk_b + kv * sk_h + offs_n[:, None] * sk_l + offs_d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
                if CARRY:
                    scores = scores + carry
                scores = scores * scale
                if not UNMASKED:
                    scores = tl.where(key_ok[None, :], scores, float("-inf"))
                new_max = tl.maximum(row_max, tl.max(scores, 1))
                rescale = tl.exp(row_max - new_max)
                probs = tl.exp(scores - new_max[:, None])
                row_sum = row_sum * rescale + tl.sum(probs, 1)
                acc = acc * rescale[:, None]
                slots = tl.load(slot_ptr + b * s_slot + offs_n, mask=key_ok, other=-1)
                if tl.max(slots, 0) >= 0:  # the tile holds a salient key: PV on its dV rows
                    dv = tl.load(
                        dv_ptr + b * sdv_b + kv * sdv_h + slots[:, None] * sdv_w + offs_d[None, :],
                        mask=(slots >= 0)[:, None] & d_ok[None, :],
                        other=0.0,
                    )
                    weights = probs
                    if ROUND:  # 16-bit caches: probabilities rounded as for the engine's 16-bit mma
                        weights = probs.to(dv.dtype).to(tl.float32)
                    acc += tl.dot(weights, dv.to(tl.float32), input_precision="ieee")
                row_max = new_max
                carry = probs
            old_at = old_ptr + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :]
            old = tl.load(old_at, mask=tile_ok, other=0.0).to(tl.float32)
            new = old + acc / row_sum[:, None]
            exact = tl.load(
                exact_ptr + b * se_b + h * se_h + row_slot[:, None] * se_w + offs_d[None, :],
                mask=(row_slot >= 0)[:, None] & d_ok[None, :] & row_ok[:, None],
                other=0.0,
            )
            new = tl.where((row_slot >= 0)[:, None], exact.to(tl.float32), new)
            dot += tl.sum(new * old, 1)
            new_sq += tl.sum(new * new, 1)
            old_sq += tl.sum(old * old, 1)
            tl.store(old_at, new.to(old_ptr.dtype.element_ty), mask=tile_ok)
        cos = dot * tl.rsqrt(tl.maximum(new_sq, 1e-8)) * tl.rsqrt(tl.maximum(old_sq, 1e-8))
        salient = cos < threshold
        if HAS_REAL:
            salient = salient & (tl.load(real_ptr + b * s_real + offs_m, mask=row_ok, other=0) != 0)
        tl.store(out_ptr + b * s_out + offs_m, salient.to(tl.int8), mask=row_ok)


def triton_update_context(
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
) -> torch.Tensor:
    """``dyllm_kernel.update_context`` (same arguments and result) by the Triton kernel. Products
    run in IEEE fp32 on 16-bit values (exact, as the engine's 16-bit mma with fp32 sums; Triton's
    CPU interpreter cannot multiply bf16 tiles, so this is also the form the tests can check)."""
    q, delta_v, exact = q.contiguous(), delta_v.contiguous(), exact.contiguous()
    batch, heads, rows, dim = q.shape
    length = keys.shape[2] - 1
    width = columns.shape[1]
    # slot of each absolute column in the salient lists (-1: not salient); the sink takes the empty slots
    slot = torch.full((batch, length + 1), -1, dtype=torch.int32, device=q.device)
    slot.scatter_(1, columns, torch.arange(width, dtype=torch.int32, device=q.device).expand(batch, -1))
    starts = torch.zeros(batch, dtype=torch.int32, device=q.device) if starts is None else starts
    out = torch.empty(batch, rows, dtype=torch.int8, device=q.device)
    real_arg = out if real is None else real.to(torch.int8)
    block_m = 64 if rows > 32 else 16
    _context_kernel[(batch, triton.cdiv(rows, block_m))](
        q, keys, delta_v, exact, cached, slot, starts, real_arg, out,
        q.stride(0), q.stride(1), q.stride(2), keys.stride(0), keys.stride(1), keys.stride(2),
        delta_v.stride(0), delta_v.stride(1), delta_v.stride(2), exact.stride(0), exact.stride(1), exact.stride(2),
        cached.stride(0), cached.stride(1), cached.stride(2), slot.stride(0), real_arg.stride(0), out.stride(0),
        rows, length, first, heads, heads // keys.shape[1], dim**-0.5, threshold,
        DIM=dim, BLOCK_D=max(16, triton.next_power_of_2(dim)), BLOCK_M=block_m, BLOCK_N=TILE,
        CARRY=carry_scores, UNMASKED=unmasked_padding, ROUND=cached.dtype != q.dtype,
        HAS_REAL=real is not None,
    )  # fmt: skip
    return out.bool()
