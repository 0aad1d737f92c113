"""Triton grouped GEMMs of the MoE block (imported only on the CUDA path: needs triton).

One kernel, two epilogues, selected by the constexpr ``FIRST``:

* GEMM 1 (``FIRST=True``): rows of ``hidden`` gathered through the dispatch permutation
  (``token = sorted_pos // top_k``), times ``gate_up_proj[e]`` (H, 2I), plus bias, then the
  clamped SwiGLU on the interleaved gate/up columns of the fp32 accumulator; writes only the
  I activations, in padded sorted order.
* GEMM 2 (``FIRST=False``): the activation rows (already sorted) times ``down_proj[e]`` (I, H),
  plus bias, times the routing weight of the row's slot; stored at row ``slot`` of ``y`` (T*k, H),
  i.e. back in token order, so ``moe_finalize`` sums k consecutive rows.

Each program takes one ``BLOCK_M`` row block (all rows of one expert, padding rows masked; the
block's expert comes from ``block_expert``; -1 ends the program at once) and one ``BLOCK_N``
column tile. Programs are ordered in groups of ``GROUP_M`` row blocks, row block fastest, so the
blocks of one expert run together and share the expert's weight tiles through L2.

Weight formats: ``W_FORMAT`` is a constexpr naming how a (BLOCK_K, BLOCK_N) weight tile is read.
Only ``"bf16"`` (the tensor's own dtype, bf16/fp16/fp32) exists today; an MXFP4 or FP8 format adds
a branch in ``_load_w_tile`` (plus its scale pointer arguments) and keeps the rest of the kernel.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _load_w_tile(w_ptrs, mask, W_FORMAT: tl.constexpr):
    # Every weight format dequantizes to the activation dtype here; "bf16" is a plain load.
    if W_FORMAT == "bf16":
        return tl.load(w_ptrs, mask=mask, other=0.0)
    else:
        tl.static_assert(False, "unknown weight format")


@triton.jit
def _moe_gemm_kernel(
    a_ptr, w_ptr, bias_ptr, out_ptr, sorted_pos_ptr, block_expert_ptr, topk_w_ptr,
    N, K, nb, top_k, alpha, limit, M_BUCKET,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_be, stride_bn, stride_om, stride_on,
    FIRST: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, W_FORMAT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    group_m = tl.minimum(nb - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    e = tl.load(block_expert_ptr + pid_m)
    if e < 0:
        return
    e = e.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = tl.load(sorted_pos_ptr + offs_m)
    row_ok = pos >= 0
    if FIRST:
        a_rows = tl.where(row_ok, pos // top_k, 0).to(tl.int64)
    else:
        a_rows = offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + e * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            w = _load_w_tile(w_ptrs, n_ok[None, :], W_FORMAT)
        else:
            k_ok = offs_k < K - kk * BLOCK_K
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = _load_w_tile(w_ptrs, k_ok[:, None] & n_ok[None, :], W_FORMAT)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        b = tl.load(bias_ptr + e * stride_be + offs_n * stride_bn, mask=n_ok, other=0.0)
        acc += b.to(tl.float32)[None, :]

    if FIRST:
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        gate = tl.minimum(gate, limit, propagate_nan=tl.PropagateNan.ALL)
        up = tl.clamp(up, -limit, limit, propagate_nan=tl.PropagateNan.ALL)
        act = (up + 1.0) * gate * tl.sigmoid(alpha * gate)
        offs_i = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_i[None, :] * stride_on
        tl.store(out_ptrs, act.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_i[None, :] < N // 2))
    else:
        wt = tl.load(topk_w_ptr + pos, mask=row_ok, other=0.0)
        acc = acc * wt[:, None]
        out_ptrs = out_ptr + pos.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


# --- tile choice ------------------------------------------------------------------------------
#
# BLOCK_M is fixed by the row count M = T * k (the dispatch pads each expert to it), everything
# else is autotuned on H100-class GPUs for the large shapes, or taken from the default below.


def block_m_for(m: int, num_experts: int) -> int:
    """Rows per block for M = T*k slots over E experts (decode: 16, prefill: up to 128)."""
    per_expert = m / max(num_experts, 1)
    if per_expert <= 24:
        return 16
    if per_expert <= 48:
        return 32
    if per_expert <= 160:
        return 64
    return 128


def _cfg(bn, bk, warps, stages, group_m):
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m}, num_warps=warps, num_stages=stages)


def _default_config(block_m: int, first: bool) -> triton.Config:
    if block_m <= 32:  # decode: stream the routed experts' weights, many CTAs along N
        return _cfg(64 if first else 32, 128, 4, 4, 64)
    if block_m == 64:
        return _cfg(128, 64, 4, 4, 8)
    return _cfg(128, 64, 8, 4, 8)


def _h100_configs(block_m: int, first: bool) -> list[triton.Config]:
    if block_m <= 32:
        return [
            _cfg(64 if first else 32, 128, 4, 4, 64),
            _cfg(64, 128, 4, 5, 64),
            _cfg(128 if first else 64, 64, 4, 6, 64),
            _cfg(32, 256, 4, 3, 64),
        ]
    # GROUP_M = 256: every row block of a column tile runs together, so each expert's weights are read
    # once (good while the gathered activations fit in L2); 8 / 16: the activations stay in L2.
    if block_m == 64:
        return [_cfg(128, 64, 4, 4, 8), _cfg(128, 64, 4, 4, 256), _cfg(256, 64, 8, 3, 16), _cfg(256, 64, 8, 3, 256),
                _cfg(64, 128, 4, 4, 256)]
    return [_cfg(128, 64, 8, 4, 8), _cfg(256, 64, 8, 3, 8), _cfg(256, 64, 8, 4, 16), _cfg(128, 64, 4, 4, 256),
            _cfg(256, 64, 8, 3, 256)]


@functools.lru_cache(maxsize=None)
def _autotuned(block_m: int, first: bool):
    return triton.autotune(configs=_h100_configs(block_m, first), key=["N", "K", "M_BUCKET"])(_moe_gemm_kernel)


def _use_autotune(device: torch.device, n: int, k: int) -> bool:
    return _use_autotune_cached(device.type, device.index, n >= 1024 and k >= 1024,
                                os.environ.get("GOK_MOE_AUTOTUNE", "1"), os.environ.get("TRITON_INTERPRET", "0"))


@functools.lru_cache(maxsize=None)
def _use_autotune_cached(dev_type: str, dev_index, large: bool, env: str, interpret: str) -> bool:
    """Autotune only the large shapes on H100-class (sm_90) GPUs; GOK_MOE_AUTOTUNE=0 turns it off."""
    if env == "0" or interpret == "1" or dev_type != "cuda" or not large:
        return False
    return torch.cuda.get_device_capability(dev_index) == (9, 0)


def _launch(first, a, w, bias, out, sorted_pos, block_expert, topk_w, n, k, nb, top_k, alpha, limit,
            stride_a, stride_o, block_m, m_bucket):
    dot_precision = "ieee" if a.dtype == torch.float32 else "tf32"
    args = (
        a, w, bias if bias is not None else w, out, sorted_pos, block_expert, topk_w,
        n, k, nb, top_k, float(alpha), float(limit), m_bucket,
        stride_a[0], stride_a[1], w.stride(0), w.stride(1), w.stride(2),
        bias.stride(0) if bias is not None else 0, bias.stride(1) if bias is not None else 0,
        stride_o[0], stride_o[1],
    )
    meta = dict(FIRST=first, HAS_BIAS=bias is not None, W_FORMAT="bf16", DOT_PRECISION=dot_precision,
                BLOCK_M=block_m)
    if _use_autotune(a.device, n, k) and a.dtype != torch.float32:
        kernel = _autotuned(block_m, first)

        def grid(cfg):
            return (nb * triton.cdiv(n, cfg["BLOCK_N"]),)

        # EVEN_K must hold for every config's BLOCK_K: K % 256 == 0 covers them all.
        kernel[grid](*args, EVEN_K=False if k % 256 else True, **meta)
    else:
        cfg = _default_config(block_m, first)
        bn, bk = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
        stages = cfg.num_stages if a.element_size() < 4 else 2  # fp32 tiles take twice the shared memory
        grid = (nb * triton.cdiv(n, bn),)
        _moe_gemm_kernel[grid](*args, EVEN_K=k % bk == 0, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.kwargs["GROUP_M"],
                               num_warps=cfg.num_warps, num_stages=stages, **meta)


def gemm1_swiglu(hidden, gate_up_proj, gate_up_proj_bias, act, sorted_pos, block_expert, top_k, alpha, limit,
                 block_m, m_bucket):
    """act[row] = swiglu(hidden[sorted_pos[row] // top_k] @ W1[e] + b1[e]) for every real row."""
    nb = block_expert.shape[0]
    n, k = gate_up_proj.shape[2], gate_up_proj.shape[1]
    _launch(True, hidden, gate_up_proj, gate_up_proj_bias, act, sorted_pos, block_expert, sorted_pos,
            n, k, nb, top_k, alpha, limit, hidden.stride(), act.stride(), block_m, m_bucket)


def gemm2_weighted(act, down_proj, down_proj_bias, topk_w, y, sorted_pos, block_expert, block_m, m_bucket):
    """y[slot] = w[slot] * (act[row] @ W2[e] + b2[e]) with slot = sorted_pos[row]."""
    nb = block_expert.shape[0]
    n, k = down_proj.shape[2], down_proj.shape[1]
    _launch(False, act, down_proj, down_proj_bias, y, sorted_pos, block_expert, topk_w,
            n, k, nb, 1, 0.0, 0.0, act.stride(), y.stride(), block_m, m_bucket)
