"""Triton rotary kernel (CUDA only; imported lazily): GPT-OSS rotation on halves, half-dim cos/sin.

x is viewed as (B, H, S, D) with any strides (last dim contiguous); cos/sin as (B or 1, S, D/2).
One program per (b, s) position and block of heads: cos/sin are loaded once and reused for every
head; arithmetic in fp32, one rounding to x's dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rotary(
    X, Out, Cos, Sin,
    S, H,
    sxb, sxh, sxs, sob, soh, sos, scb, scs, ssb, sss,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // S
    s = pid % S
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ds = tl.arange(0, BLOCK_D)
    dmask = ds < HALF
    c = tl.load(Cos + b * scb + s * scs + ds, mask=dmask, other=0.0).to(tl.float32)
    sn = tl.load(Sin + b * ssb + s * sss + ds, mask=dmask, other=0.0).to(tl.float32)
    m = (hs < H)[:, None] & dmask[None, :]
    xb = X + b.to(tl.int64) * sxb + s.to(tl.int64) * sxs + hs[:, None].to(tl.int64) * sxh + ds[None, :]
    x1 = tl.load(xb, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(xb + HALF, mask=m, other=0.0).to(tl.float32)
    ob = Out + b.to(tl.int64) * sob + s.to(tl.int64) * sos + hs[:, None].to(tl.int64) * soh + ds[None, :]
    tl.store(ob, (x1 * c[None, :] - x2 * sn[None, :]).to(Out.dtype.element_ty), mask=m)
    tl.store(ob + HALF, (x2 * c[None, :] + x1 * sn[None, :]).to(Out.dtype.element_ty), mask=m)


def rotary(x, out, cos, sin):
    """x, out: (B, H, S, D) views; cos/sin: (Bc, S, D/2) views with Bc in (1, B)."""
    bsz, h, s, d = x.shape
    half = d // 2
    block_h = min(16, triton.next_power_of_2(h))
    scb = cos.stride(0) if cos.shape[0] > 1 else 0
    ssb = sin.stride(0) if sin.shape[0] > 1 else 0
    grid = (bsz * s, triton.cdiv(h, block_h))
    _rotary[grid](
        x, out, cos, sin, s, h,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        scb, cos.stride(1), ssb, sin.stride(1),
        HALF=half, BLOCK_H=block_h, BLOCK_D=triton.next_power_of_2(half), num_warps=4 if h * d >= 2048 else 1,
    )
    return out
