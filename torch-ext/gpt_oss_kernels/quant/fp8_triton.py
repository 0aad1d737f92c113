"""Triton kernels of the FP8 activation ops (imported only on the CUDA path: needs triton).

* ``pad_quant_fp8`` / ``rms_norm_quant_fp8``: one program per row (token); the whole row sits in registers
  (BLOCK_H = next power of two >= h_pad), so the row is read once: optional residual add, RMSNorm, amax, e4m3
  stores of the h_pad columns (zeros past H) and one fp32 scale. Rounding as quant/fp8.py states it: the scale
  and its reciprocal with IEEE division (``div_rn``), the product rounded once, saturated to +-448, RNE to e4m3.
* ``finalize_slice``: one program per (token, BLOCK_N columns); the token's k rows of y summed in fp32 (times the
  routing weight when given), stored cropped to the first h columns.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)
MIN_SCALE = tl.constexpr(1.1754943508222875e-38)  # 2^-126


@triton.jit
def _quant_row_store(v, offs, h, h_pad, q_row_ptr, scale_ptr):
    # v: the row in fp32 (lanes >= h hold 0). A NaN counts as +inf in amax, so a non-finite row gets scale NaN,
    # 1 / scale NaN and q NaN in every column < h.
    in_row = offs < h
    a = tl.where(in_row, tl.where(v == v, tl.abs(v), float("inf")), 0.0)
    amax = tl.max(a, 0)
    scale = tl.maximum(tl.math.div_rn(amax, FP8_MAX), MIN_SCALE)
    scale = tl.where(amax == float("inf"), float("nan"), scale)
    inv = tl.math.div_rn(1.0, scale)
    p = tl.clamp(v * inv, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
    p = tl.where(in_row, p, 0.0)
    tl.store(q_row_ptr + offs, p.to(tl.float8e4nv), mask=offs < h_pad)
    tl.store(scale_ptr, scale)


@triton.jit
def _pad_quant_kernel(x_ptr, q_ptr, scale_ptr, h, h_pad, stride_x, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    v = tl.load(x_ptr + row * stride_x + offs, mask=offs < h, other=0.0).to(tl.float32)
    _quant_row_store(v, offs, h, h_pad, q_ptr + row * h_pad, scale_ptr + row)


@triton.jit
def _rms_norm_quant_kernel(x_ptr, res_ptr, w_ptr, q_ptr, scale_ptr, normed_ptr, res_out_ptr, h, h_pad, eps,
                           HAS_RESIDUAL: tl.constexpr, WRITE_NORMED: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    in_row = offs < h
    x = tl.load(x_ptr + row * h + offs, mask=in_row, other=0.0)
    if HAS_RESIDUAL:
        # the new residual rounded to x's dtype, as an unfused x + residual
        s = (x.to(tl.float32) + tl.load(res_ptr + row * h + offs, mask=in_row, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * h + offs, s, mask=in_row)
        x = s
    v = x.to(tl.float32)
    ms = tl.sum(v * v, 0) / h
    inv_rms = tl.math.div_rn(1.0, tl.math.sqrt_rn(ms + eps))
    w = tl.load(w_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    normed = ((v * inv_rms) * w).to(x.dtype)  # rms_norm's output, rounded as it returns it
    if WRITE_NORMED:
        tl.store(normed_ptr + row * h + offs, normed, mask=in_row)
    _quant_row_store(normed.to(tl.float32), offs, h, h_pad, q_ptr + row * h_pad, scale_ptr + row)


@triton.jit
def _finalize_slice_kernel(y_ptr, ids_ptr, w_ptr, out_ptr, h, k, num_experts, stride_y,
                           HAS_WEIGHTS: tl.constexpr, SKIP_FOREIGN: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < h
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in range(k):
        slot = t * k + j
        e = tl.load(ids_ptr + slot)
        foreign = (e < 0) | (e >= num_experts)
        y = tl.load(y_ptr + slot * stride_y + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_WEIGHTS:
            y = y * tl.load(w_ptr + slot).to(tl.float32)
        if SKIP_FOREIGN:
            y = tl.where(foreign, 0.0, y)
        else:
            y = tl.where(foreign, float("nan"), y)  # as moe_finalize: a bad id flags its token's row
        acc += y
    tl.store(out_ptr + t * h + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _block_h(h_pad: int) -> tuple[int, int]:
    block = max(16, triton.next_power_of_2(h_pad))
    return block, max(1, min(16, block // 512))


def pad_quant_fp8(x: torch.Tensor, h_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, h = x.shape
    q = torch.empty((t, h_pad), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((t,), dtype=torch.float32, device=x.device)
    if t:
        block, warps = _block_h(h_pad)
        _pad_quant_kernel[(t,)](x, q, scale, h, h_pad, x.stride(0), BLOCK_H=block, num_warps=warps)
    return q, scale


def rms_norm_quant_fp8(x, weight, eps, h_pad, residual, write_normed):
    t, h = x.shape
    q = torch.empty((t, h_pad), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((t,), dtype=torch.float32, device=x.device)
    normed = torch.empty((t if write_normed else 0, h), dtype=x.dtype, device=x.device)
    res_out = torch.empty((t if residual is not None else 0, h), dtype=x.dtype, device=x.device)
    if t:
        block, warps = _block_h(h_pad)
        _rms_norm_quant_kernel[(t,)](x, residual if residual is not None else x, weight, q, scale,
                                     normed if write_normed else q, res_out if residual is not None else q, h, h_pad,
                                     float(eps), HAS_RESIDUAL=residual is not None, WRITE_NORMED=write_normed,
                                     BLOCK_H=block, num_warps=warps)
    return q, scale, normed, res_out


def finalize_slice(y, topk_ids, topk_weights, num_experts, h, skip_foreign):
    t, k = topk_ids.shape
    out = torch.empty((t, h), dtype=y.dtype, device=y.device)
    if t and h:
        block = 1024 if h > 512 else max(16, triton.next_power_of_2(h))
        _finalize_slice_kernel[(t, triton.cdiv(h, block))](
            y, topk_ids, topk_weights if topk_weights is not None else y, out, h, k, num_experts, y.stride(0),
            HAS_WEIGHTS=topk_weights is not None, SKIP_FOREIGN=skip_foreign, BLOCK_N=block, num_warps=4)
    return out
