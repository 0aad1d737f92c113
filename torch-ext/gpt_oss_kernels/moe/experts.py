"""moe_experts and the fused moe: validation, the CUDA pipeline, fake implementations.

``moe_experts`` is one op of the C++ schema (torch-ext/torch_binding.cpp). The CPU variant
implements it in C++ (kernel_src/moe/moe_cpu.cpp); in the CUDA variant its CUDA implementation is
``_moe_experts_cuda`` below (dispatch + two Triton grouped GEMMs + finalize), registered on the
same schema with ``torch.library.impl``. To torch.compile the op is opaque (its fake impl gives
the shape) and inside a CUDA graph it is a fixed sequence of launches: no host sync anywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks
from .._ops import add_op_namespace_prefix, ops
from .routing import check_top_k

_ID_DTYPES = (torch.int32, torch.int64)
_MAX_K = 32  # check_top_k's bound when E does not bound k (skip_foreign: E is one rank's share)


def _check_experts(hidden, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit):
    _checks.tensor("hidden", hidden, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.tensor("gate_up_proj", gate_up_proj, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    _checks.tensor("down_proj", down_proj, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    e, h, i2 = gate_up_proj.shape
    if h != hidden.shape[1]:
        raise ValueError(f"gate_up_proj must be (E, H={hidden.shape[1]}, 2I), got shape {tuple(gate_up_proj.shape)}")
    if i2 % 2 or i2 == 0:
        raise ValueError(f"gate_up_proj's last dimension (2I, gate/up interleaved) must be even, got {i2}")
    _checks.shape("down_proj", down_proj, (e, i2 // 2, h))
    _checks.optional("gate_up_proj_bias", gate_up_proj_bias, (e, i2))
    _checks.optional("down_proj_bias", down_proj_bias, (e, h))
    _checks.same_dtype("hidden", hidden, gate_up_proj=gate_up_proj, down_proj=down_proj)
    _checks.same_device("hidden", hidden, gate_up_proj=gate_up_proj, gate_up_proj_bias=gate_up_proj_bias,
                        down_proj=down_proj, down_proj_bias=down_proj_bias)
    return _checks.number("alpha", alpha), _checks.number("limit", limit, minimum=0.0)


def moe_experts(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    gate_up_proj_bias: torch.Tensor | None,
    down_proj: torch.Tensor,
    down_proj_bias: torch.Tensor | None,
    alpha: float = 1.702,
    limit: float = 7.0,
    *,
    skip_foreign: bool = False,
) -> torch.Tensor:
    """GPT-OSS experts: ``out[t] = sum_j w[t,j] * (swiglu(x[t] @ W1[e] + b1[e]) @ W2[e] + b2[e])``.

    ``hidden`` (T, H); ``topk_ids`` (T, k) int32/int64; ``topk_weights`` (T, k) float;
    ``gate_up_proj`` (E, H, 2I) with gate/up interleaved (gate = [..., ::2], up = [..., 1::2]);
    ``gate_up_proj_bias`` (E, 2I) or None; ``down_proj`` (E, I, H); ``down_proj_bias`` (E, H) or None.
    SwiGLU: ``gate.clamp(max=limit)``, ``up.clamp(-limit, limit)``, ``(up + 1) * gate * sigmoid(alpha * gate)``.
    Returns (T, H) in hidden's dtype; the k expert outputs are summed in fp32.

    Ids outside [0, E), by default (a caller's bad input): on the CPU a RuntimeError; on CUDA (no host
    sync) such a slot is routed nowhere and its token's output row is NaN (clamp-and-flag).

    ``skip_foreign=True`` (expert parallelism): the E experts passed are this rank's, and an id outside
    [0, E) names an expert held elsewhere (transformers' sentinel is E, with weight 0). Such a slot is
    routed nowhere and contributes exactly zero, on both backends, without a host sync; k may then
    exceed E (up to 32).
    """
    alpha, limit = _check_experts(hidden, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit)
    _check_routes(hidden, topk_ids, topk_weights, gate_up_proj.shape[0], skip_foreign)
    return ops.moe_experts(hidden.contiguous(), topk_ids.contiguous(), topk_weights.contiguous(), gate_up_proj,
                           gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit, skip_foreign)


def moe(
    hidden: torch.Tensor,
    router_weight: torch.Tensor,
    router_bias: torch.Tensor | None,
    top_k: int,
    gate_up_proj: torch.Tensor,
    gate_up_proj_bias: torch.Tensor | None,
    down_proj: torch.Tensor,
    down_proj_bias: torch.Tensor | None,
    alpha: float = 1.702,
    limit: float = 7.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole GPT-OSS MoE block: router GEMM, ``moe_route``, ``moe_experts``.

    ``hidden`` (T, H); ``router_weight`` (E, H); ``router_bias`` (E,) or None. Returns
    ``(out (T, H) in hidden's dtype, topk_weights fp32 (T, k), topk_ids int32 (T, k))``.
    """
    alpha, limit = _check_experts(hidden, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit)
    e = gate_up_proj.shape[0]
    _check_router(hidden, router_weight, router_bias, e)
    top_k = check_top_k(top_k, e)
    hidden = hidden.contiguous()
    if _fast_path_ok(hidden):
        out, weights, ids, _ = _moe_fast(hidden, router_weight, router_bias, top_k, gate_up_proj, gate_up_proj_bias,
                                         down_proj, down_proj_bias, alpha, limit)
        return out, weights, ids
    logits = F.linear(hidden, router_weight.to(hidden.dtype),
                      None if router_bias is None else router_bias.to(hidden.dtype))
    weights, ids = ops.moe_route(logits, top_k)
    out = ops.moe_experts(hidden, ids, weights, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias,
                          alpha, limit)
    return out, weights, ids


def moe_with_scores(hidden, router_weight, router_bias, top_k, gate_up_proj, gate_up_proj_bias, down_proj,
                    down_proj_bias, alpha=1.702, limit=7.0):
    """``moe`` for the MoeMLP layer: returns ``(out, router scores in hidden's dtype)``."""
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 and _fast_path_ok(hidden):
        checked = _quick_checks(hidden, router_weight, router_bias, top_k, gate_up_proj, gate_up_proj_bias, down_proj,
                                down_proj_bias, alpha, limit)
        if checked is None:  # the full checks raise the precise error (or pass: an unusual but valid call)
            alpha, limit = _check_experts(hidden, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias, alpha,
                                          limit)
            _check_router(hidden, router_weight, router_bias, gate_up_proj.shape[0])
            top_k = check_top_k(top_k, gate_up_proj.shape[0])
        else:
            alpha, limit = checked
        out, _, _, scores = _moe_fast(hidden.contiguous(), router_weight, router_bias, top_k, gate_up_proj,
                                      gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit)
        return out, scores
    out, weights, _ = moe(hidden, router_weight, router_bias, top_k, gate_up_proj, gate_up_proj_bias, down_proj,
                          down_proj_bias, alpha, limit)
    return out, weights.to(hidden.dtype)


_FD = _checks.FLOAT_DTYPES


def _quick_checks(hidden, rw, rb, top_k, gu, gub, dp, dpb, alpha, limit):
    """The checks of moe() in one pass for the common valid call: (alpha, limit) or None (then the full
    checks run and raise the precise error)."""
    try:
        dt, dev, hs, gs = hidden.dtype, hidden.get_device(), hidden.shape, gu.shape
        e, h = gs[0], hs[1]
        ok = (dt in _FD and gu.dtype is dt and dp.dtype is dt and len(gs) == 3 and gs[1] == h and gs[2] > 0
              and gs[2] % 2 == 0 and dp.shape == (e, gs[2] // 2, h) and rw.dtype in _FD and rw.shape == (e, h)
              and gu.get_device() == dev and dp.get_device() == dev and rw.get_device() == dev
              and (gub is None or (gub.dtype in _FD and gub.shape == (e, gs[2]) and gub.get_device() == dev))
              and (dpb is None or (dpb.dtype in _FD and dpb.shape == (e, h) and dpb.get_device() == dev))
              and (rb is None or (rb.dtype in _FD and rb.shape == (e,) and rb.get_device() == dev))
              and type(top_k) is int and 1 <= top_k <= min(e, 32)
              and type(alpha) in (int, float) and type(limit) in (int, float) and limit >= 0.0)
    except (AttributeError, TypeError, IndexError):
        return None
    return (float(alpha), float(limit)) if ok else None


def _check_routes(hidden, topk_ids, topk_weights, e, skip_foreign):
    """topk_ids / topk_weights (T, k) for E experts (k up to 32 with skip_foreign: E is one rank's share)."""
    _checks.tensor("topk_ids", topk_ids, dtypes=_ID_DTYPES, ndim=2)
    _checks.tensor("topk_weights", topk_weights, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    if topk_ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"topk_ids must be (T={hidden.shape[0]}, k), got shape {tuple(topk_ids.shape)}")
    if type(skip_foreign) is not bool:
        raise TypeError(f"skip_foreign must be a bool, got {type(skip_foreign).__name__}")
    check_top_k(topk_ids.shape[1], _MAX_K if skip_foreign else e)
    _checks.shape("topk_weights", topk_weights, tuple(topk_ids.shape))
    _checks.same_device("hidden", hidden, topk_ids=topk_ids, topk_weights=topk_weights)


def _check_router(hidden, router_weight, router_bias, e):
    _checks.tensor("router_weight", router_weight, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.shape("router_weight", router_weight, (e, hidden.shape[1]))
    _checks.optional("router_bias", router_bias, (e,))
    _checks.same_device("hidden", hidden, router_weight=router_weight, router_bias=router_bias)


# --- eager fast path (CUDA variant) ----------------------------------------------------------
#
# Outside torch.compile and dispatch modes, on CUDA, the block is four host calls: moe_prepare
# (router GEMM + route + dispatch + buffers, one C++ op), the two Triton GEMMs launched from
# their cached compiled kernels, moe_finalize. The traced path (ops.moe_route + ops.moe_experts)
# runs the same kernels with the same tiles, so both give bit-identical results.

_PREPARE = getattr(ops, "moe_prepare", None)


def _fast_path_ok(hidden: torch.Tensor) -> bool:
    return (_PREPARE is not None and hidden.is_cuda and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0)


def fast_block(hidden, router_weight, router_bias, top_k, num_experts, i, a, gate_up, gate_up_bias, down, down_bias,
               alpha, limit, finalize, **gemm_kw):
    """The eager fast path of every expert format: ``moe_prepare`` (router GEMM, route, dispatch and the act / y
    buffers; one cluster launch at decode sizes), the two grouped GEMMs on ``a`` (the rows GEMM 1 reads: hidden, or
    its e4m3 copy with ``gemm_kw`` = the FP8 arguments of ``grouped_gemm.expert_gemms``), then ``finalize(y, ids)``.
    Returns ``(out (T, H), weights fp32 (T, k), ids int32 (T, k), scores in hidden's dtype)``."""
    from . import grouped_gemm

    m = hidden.shape[0] * top_k
    block_m = grouped_gemm.block_m_for(m, num_experts)
    w, w_lo, ids, sorted_pos, block_expert, act, y = _PREPARE(hidden, router_weight, router_bias, top_k, block_m, i)
    if m == 0:
        return hidden.new_zeros(hidden.shape), w, ids, w_lo
    grouped_gemm.expert_gemms(a, gate_up, gate_up_bias, down, down_bias, act, y, w, sorted_pos, block_expert, top_k,
                              alpha, limit, block_m, m, **gemm_kw)
    return finalize(y, ids), w, ids, w_lo


def _moe_fast(hidden, router_weight, router_bias, top_k, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias,
              alpha, limit):
    e, _, i2 = gate_up_proj.shape
    return fast_block(hidden, router_weight, router_bias, top_k, e, i2 // 2, hidden, (gate_up_proj, None),
                      gate_up_proj_bias, (down_proj, None), down_proj_bias, alpha, limit,
                      lambda y, ids: _FINALIZE(y, ids, e))


_FINALIZE = ops.moe_finalize if _PREPARE is not None else None


# --- CUDA implementation (Triton) ------------------------------------------------------------


def _moe_experts_cuda(hidden, topk_ids, topk_weights, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias,
                      alpha, limit, skip_foreign=False):
    from . import grouped_gemm  # triton, imported on first use

    t, h = hidden.shape
    e, _, i2 = gate_up_proj.shape
    if t * topk_ids.shape[1] == 0:
        return hidden.new_zeros((t, h))
    y, ids = grouped_gemm.experts_to_slots(hidden, topk_ids, topk_weights, e, i2 // 2, h, hidden.dtype,
                                           (gate_up_proj, None), gate_up_proj_bias, (down_proj, None), down_proj_bias,
                                           alpha, limit)
    # moe_dispatch routes an id outside [0, E) nowhere, so GEMM 2 never writes its y row; finalize either
    # flags the token (NaN) or, with skip_foreign, does not read that row.
    return ops.moe_finalize(y, ids, e, skip_foreign)


if "_cuda_" in add_op_namespace_prefix("moe_experts"):
    torch.library.impl(add_op_namespace_prefix("moe_experts"), "CUDA")(_moe_experts_cuda)


@torch.library.register_fake(add_op_namespace_prefix("moe_experts"))
def _moe_experts_fake(hidden, topk_ids, topk_weights, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias,
                      alpha, limit, skip_foreign=False):
    return torch.empty_like(hidden)
