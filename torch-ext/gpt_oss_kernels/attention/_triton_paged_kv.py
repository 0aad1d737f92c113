"""Triton kernel of ``paged_kv.paged_window_kv`` (CUDA only; imported lazily)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R = 16  # read rows per program


@triton.jit
def _window_kv(
    KC, VC, KN, VN, RI, CuK, CuQ, KO, VO,
    n_read, n_seg, n_cache, n_new, sentinel,
    s_kc_r, s_kc_h, s_vc_r, s_vc_h, s_kn_t, s_kn_h, s_vn_t, s_vn_h,
    HD: tl.constexpr, D: tl.constexpr, HD_P2: tl.constexpr, SEG_P2: tl.constexpr, BLOCK_R: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < n_read
    idx = tl.load(RI + r, mask=r_ok, other=0).to(tl.int64)
    segs = tl.arange(0, SEG_P2)
    ends_k = tl.load(CuK + 1 + segs, mask=segs < n_seg, other=2147483647)
    seg = tl.sum((ends_k[None, :] <= r[:, None]).to(tl.int32), axis=1)  # segments ended at or before r
    segc = tl.minimum(seg, n_seg - 1)
    new_row = (r - tl.load(CuK + 1 + segc) + tl.load(CuQ + 1 + segc)).to(tl.int64)
    sent = idx == sentinel
    is_new = sent & (seg < n_seg) & (new_row >= 0) & (new_row < n_new)
    from_cache = ~sent & (idx >= 0) & (idx < n_cache)
    ok = is_new | from_cache

    c = tl.arange(0, HD_P2)
    c_ok = c < HD
    h = (c // D).to(tl.int64)
    d = c % D
    m_cache = (r_ok & from_cache)[:, None] & c_ok[None, :]
    m_new = (r_ok & is_new)[:, None] & c_ok[None, :]
    out_off = r.to(tl.int64)[:, None] * HD + c[None, :]
    m_out = r_ok[:, None] & c_ok[None, :]

    kc = tl.load(KC + idx[:, None] * s_kc_r + h[None, :] * s_kc_h + d[None, :], mask=m_cache, other=0.0)
    kn = tl.load(KN + new_row[:, None] * s_kn_t + h[None, :] * s_kn_h + d[None, :], mask=m_new, other=0.0)
    k = tl.where(is_new[:, None], kn, kc)
    tl.store(KO + out_off, tl.where(ok[:, None], k, float("nan")).to(KO.dtype.element_ty), mask=m_out)
    vc = tl.load(VC + idx[:, None] * s_vc_r + h[None, :] * s_vc_h + d[None, :], mask=m_cache, other=0.0)
    vn = tl.load(VN + new_row[:, None] * s_vn_t + h[None, :] * s_vn_h + d[None, :], mask=m_new, other=0.0)
    v = tl.where(is_new[:, None], vn, vc)
    tl.store(VO + out_off, tl.where(ok[:, None], v, float("nan")).to(VO.dtype.element_ty), mask=m_out)


def paged_window_kv_cuda(k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q, sentinel):
    n_read, (heads, d) = read_index.numel(), k_cache.shape[1:]
    k_out = torch.empty((n_read, heads, d), dtype=k_cache.dtype, device=k_cache.device)
    v_out = torch.empty_like(k_out)
    n_seg = cu_seqlens_k.numel() - 1
    if n_read == 0:
        return k_out, v_out
    _window_kv[(triton.cdiv(n_read, BLOCK_R),)](
        k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q, k_out, v_out,
        n_read, n_seg, min(k_cache.shape[0], v_cache.shape[0]), k_new.shape[0], sentinel,
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        HD=heads * d, D=d, HD_P2=triton.next_power_of_2(heads * d), SEG_P2=max(2, triton.next_power_of_2(n_seg)),
        BLOCK_R=BLOCK_R, num_warps=4,
    )
    return k_out, v_out
