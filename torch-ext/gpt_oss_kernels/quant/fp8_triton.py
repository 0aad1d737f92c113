"""Triton kernel of ``finalize_slice`` (imported only on the CUDA path: needs triton): one program per (token, BLOCK_N
columns); the token's k rows of y summed in fp32 (times the routing weight when given), stored cropped to the first
h columns. (The FP8 activation ops pad_quant_fp8 / rms_norm_quant_fp8 are CUDA C++: kernel_src/fp8/fp8_act_cuda.cu.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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


def finalize_slice(y, topk_ids, topk_weights, num_experts, h, skip_foreign):
    t, k = topk_ids.shape
    out = torch.empty((t, h), dtype=y.dtype, device=y.device)
    if t and h:
        block = 1024 if h > 512 else max(16, triton.next_power_of_2(h))
        _finalize_slice_kernel[(t, triton.cdiv(h, block))](
            y, topk_ids, topk_weights if topk_weights is not None else y, out, h, k, num_experts, y.stride(0),
            HAS_WEIGHTS=topk_weights is not None, SKIP_FOREIGN=skip_foreign, BLOCK_N=block, num_warps=4)
    return out
