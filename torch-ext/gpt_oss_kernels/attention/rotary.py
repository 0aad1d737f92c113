"""GPT-OSS rotary position embedding (YaRN cos/sin computed by the model): the hub function
``rotary_pos_emb`` with transformers' signature, as one native op (kernel_src/attention/rotary_cuda.cu:
q and k in one launch; rotary_cpu.cpp on the CPU); ``rotary_kv_cache``, the same with the KV-cache write folded in
(the DecodeRunner's cache)."""

from __future__ import annotations

import torch

from .. import _checks
from .._ops import add_op_namespace_prefix, ops


def _head_dim_pos(unsqueeze_dim: int) -> int:
    return unsqueeze_dim + 4 if unsqueeze_dim < 0 else unsqueeze_dim


@torch.library.register_fake(add_op_namespace_prefix("rotary_pos_emb"))
def _rotary_fake(q, k, cos, sin, unsqueeze_dim):
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.register_fake(add_op_namespace_prefix("rotary_kv_cache"))
def _rotary_kv_cache_fake(q, k, v, cos, sin, k_cache, v_cache, index, unsqueeze_dim):
    return torch.empty_like(q)


def rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q_embed, k_embed)``: ``x * cos + rotate_half(x) * sin`` with GPT-OSS's halves convention
    (``[x1 cos - x2 sin, x2 cos + x1 sin]``), cos/sin half-dim ``(B or 1, S, D/2)`` broadcast over
    the heads at ``unsqueeze_dim`` (1: ``(B, H, S, D)``; 2: ``(B, S, H, D)``). fp32 arithmetic, output
    in q's / k's dtype. Any strides with a contiguous last dimension."""
    ud, hd = _check(q, k, cos, sin, unsqueeze_dim)
    if k.dtype != q.dtype:  # the op takes one dtype for q and k: one call each, beside a zero-head partner
        return (rotary_pos_emb(q, q.narrow(hd, 0, 0), cos, sin, unsqueeze_dim)[0],
                rotary_pos_emb(k.narrow(hd, 0, 0), k, cos, sin, unsqueeze_dim)[1])
    q, k, cos, sin = _prepared(q, k, cos, sin)
    return ops.rotary_pos_emb(q, k, cos, sin, ud)


def rotary_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor,
                    unsqueeze_dim: int = 1) -> torch.Tensor:
    """``rotary_pos_emb`` on q and k with the rotated k and v written into ``k_cache`` / ``v_cache`` ``(B, L, Hkv,
    D)`` at cache positions ``index`` ``(S,)`` int64 (k and v are not returned): one launch on CUDA where rotary and
    two ``index_copy_`` took three (the DecodeRunner's cache). Returns the rotated q. ``v`` is shaped as ``k``; all of
    q, k, v and the caches in one dtype. Positions outside [0, L): not written on CUDA (no host sync to check them),
    an error on the CPU."""
    ud, hd = _check(q, k, cos, sin, unsqueeze_dim)
    _checks.tensor("v", v, dtypes=(q.dtype,), ndim=4)
    _checks.shape("v", v, tuple(k.shape))
    _checks.tensor("k", k, dtypes=(q.dtype,))
    b, hkv, d = k.shape[0], k.shape[hd], k.shape[3]
    _checks.tensor("k_cache", k_cache, dtypes=(q.dtype,), ndim=4)
    _checks.shape("k_cache", k_cache, (b, None, hkv, d))
    _checks.tensor("v_cache", v_cache, dtypes=(q.dtype,), ndim=4)
    _checks.shape("v_cache", v_cache, tuple(k_cache.shape))
    _checks.tensor("index", index, dtypes=(torch.int64,), ndim=1)
    _checks.shape("index", index, (q.shape[3 - hd],))
    _checks.same_device("q", q, v=v, k_cache=k_cache, v_cache=v_cache, index=index)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (it is written in place), got strides "
                             f"{t.stride()}")
    q, k, cos, sin = _prepared(q, k, cos, sin)
    v = v if v.stride(-1) == 1 else v.contiguous()
    return ops.rotary_kv_cache(q, k, v, cos, sin, k_cache, v_cache, index.contiguous(), ud)


def _check(q, k, cos, sin, unsqueeze_dim) -> tuple[int, int]:
    """Shapes, dtypes and devices of the rotary operands; returns (unsqueeze_dim, the heads' dimension of q)."""
    _checks.tensor("q", q, dtypes=_checks.FLOAT_DTYPES, ndim=4)
    _checks.tensor("k", k, dtypes=_checks.FLOAT_DTYPES, ndim=4)
    _checks.tensor("cos", cos, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    _checks.tensor("sin", sin, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    _checks.same_device("q", q, k=k, cos=cos, sin=sin)
    ud = _checks.integer("unsqueeze_dim", unsqueeze_dim, minimum=-3, maximum=2)
    hd = _head_dim_pos(ud)
    if hd not in (1, 2):
        raise ValueError(f"unsqueeze_dim must select dimension 1 or 2 of q (the heads), got {unsqueeze_dim}")
    sd = 3 - hd
    d = q.shape[-1]
    if d % 2 or k.shape[-1] != d:
        raise ValueError(f"q and k must have the same even head_dim, got {q.shape[-1]} and {k.shape[-1]}")
    for name, t in (("k", k),):
        if t.shape[0] != q.shape[0] or t.shape[sd] != q.shape[sd]:
            raise ValueError(f"{name} must match q's batch and sequence sizes, got {tuple(t.shape)} vs {tuple(q.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape[-1] != d // 2 or t.shape[1] != q.shape[sd] or t.shape[0] not in (1, q.shape[0]):
            raise ValueError(f"{name} must have shape (1 or {q.shape[0]}, {q.shape[sd]}, {d // 2}), got {tuple(t.shape)}")
    return ud, hd


def _prepared(q, k, cos, sin):
    """Contiguous last dimensions; cos / sin in float32 or q's dtype."""
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    if cos.dtype not in (torch.float32, q.dtype) or sin.dtype != cos.dtype:
        cos, sin = cos.float(), sin.float()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    return q, k, cos, sin
