"""FP8 experts: e4m3 weights (quant/fp8.py) and per-token e4m3 activations, and ``finalize_slice``.

``moe_experts_fp8`` and ``finalize_slice`` are ops of the C++ schema (torch-ext/torch_binding.cpp). CPU variant: C++
(kernel_src/moe/moe_cpu.cpp; FP8 emulated: tokens and SwiGLU activations quantized per row and dequantized, each hit
expert's weights dequantized, fp32 matmuls). CUDA variant, registered here with ``torch.library.impl`` (Triton, and
the CUDA C++ op pad_quant_fp8):

    pad_quant_fp8(hidden) -> dispatch -> GEMM 1 (W_FORMAT "fp8" / "fp8_block": e4m3 x e4m3 tensor cores, gathers
    e4m3 token rows; the token scale and the weight scales applied in fp32: per channel in the epilogue, per 128x128
    block at each K step; bias; clamped SwiGLU) -> pad_quant_fp8(act) -> GEMM 2 (same, routing weight) ->
    finalize_slice (the k rows per token summed in fp32, cropped to H).

No host sync anywhere; fake implementations give the shapes to torch.compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks
from .._ops import add_op_namespace_prefix, ops
from ..quant.fp8 import BLOCK, FP8_DTYPE
from .experts import _ID_DTYPES, _check_router, _check_routes, _fast_path_ok, fast_block
from .routing import check_top_k

# Row length of the e4m3 activation buffers: rows start 16-byte aligned (TMA and vector loads).
H_ALIGN = 16


def padded_width(h: int) -> int:
    return -(-h // H_ALIGN) * H_ALIGN


def _check_fp8_weights(name, q, scale_name, scale, e, n, k):
    """q (E, N, K) float8_e4m3fn; scale float32 (E, N) or (E, ceil(N/128), ceil(K/128)); None in (e, n, k): free."""
    _checks.tensor(name, q, dtypes=(FP8_DTYPE,), ndim=3)
    _checks.shape(name, q, (e, n, k))
    e, n, k = q.shape
    _checks.tensor(scale_name, scale, dtypes=(torch.float32,))
    if scale.dim() == 2:
        _checks.shape(scale_name, scale, (e, n))
    else:
        _checks.shape(scale_name, scale, (e, -(-n // BLOCK), -(-k // BLOCK)))


def _check_experts_fp8(hidden, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8, down_scale, down_bias, alpha,
                       limit):
    """Shapes, dtypes and devices of the FP8 experts (never values). Returns (alpha, limit) as floats."""
    _checks.tensor("hidden", hidden, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    h = hidden.shape[1]
    _check_fp8_weights("gate_up_fp8", gate_up_fp8, "gate_up_scale", gate_up_scale, None, None, h)
    e, i2 = gate_up_fp8.shape[0], gate_up_fp8.shape[1]
    if i2 % 2 or i2 == 0:
        raise ValueError(f"gate_up_fp8 must be (E, 2I, H) with gate/up rows interleaved, got shape "
                         f"{tuple(gate_up_fp8.shape)}")
    _check_fp8_weights("down_fp8", down_fp8, "down_scale", down_scale, e, h, i2 // 2)
    if gate_up_scale.dim() != down_scale.dim():
        raise ValueError(f"gate_up_scale and down_scale must have the same granularity, got shapes "
                         f"{tuple(gate_up_scale.shape)} and {tuple(down_scale.shape)}")
    _checks.optional("gate_up_bias", gate_up_bias, (e, i2))
    _checks.optional("down_bias", down_bias, (e, h))
    _checks.same_device("hidden", hidden, gate_up_fp8=gate_up_fp8, gate_up_scale=gate_up_scale,
                        gate_up_bias=gate_up_bias, down_fp8=down_fp8, down_scale=down_scale, down_bias=down_bias)
    return _checks.number("alpha", alpha), _checks.number("limit", limit, minimum=0.0)


def moe_experts_fp8(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_fp8: torch.Tensor,
    gate_up_scale: torch.Tensor,
    gate_up_bias: torch.Tensor | None,
    down_fp8: torch.Tensor,
    down_scale: torch.Tensor,
    down_bias: torch.Tensor | None,
    alpha: float = 1.702,
    limit: float = 7.0,
    *,
    skip_foreign: bool = False,
) -> torch.Tensor:
    """``moe_experts`` with FP8 weights and per-token FP8 activations.

    ``hidden`` (T, H) bf16/fp16/fp32; ``topk_ids`` (T, k); ``topk_weights`` (T, k); ``gate_up_fp8`` float8_e4m3fn
    (E, 2I, H) (gate/up rows interleaved) with ``gate_up_scale`` float32 (E, 2I) per channel or (E, 2I/128, H/128)
    per block (ceil); ``down_fp8`` (E, H, I) with ``down_scale`` (E, H) or (E, H/128, I/128); biases (E, 2I), (E, H)
    or None. The math is ``reference.moe_experts_fp8`` (tokens and SwiGLU activations quantized per row to e4m3).
    Ids outside [0, E): as ``moe_experts``. Returns (T, H) in hidden's dtype.
    """
    alpha, limit = _check_experts_fp8(hidden, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8, down_scale,
                                      down_bias, alpha, limit)
    _check_routes(hidden, topk_ids, topk_weights, gate_up_fp8.shape[0], skip_foreign)
    return ops.moe_experts_fp8(hidden.contiguous(), topk_ids.contiguous(), topk_weights.contiguous(), gate_up_fp8,
                               gate_up_scale, gate_up_bias, down_fp8, down_scale, down_bias, alpha, limit,
                               skip_foreign)


def moe_fp8(hidden, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8,
            down_scale, down_bias, alpha=1.702, limit=7.0, *, hidden_fp8=None):
    """The whole MoE block with FP8 experts: router GEMM (on ``hidden``, bf16), ``moe_route``, the FP8 experts.
    ``hidden_fp8``: ``(q (T, h_pad), scale (T,))`` of ``hidden`` already quantized (``rms_norm_quant_fp8`` of the
    fused norm), so the block does not quantize it again (CUDA; the CPU op quantizes hidden itself, to the same
    values). Returns ``(out (T, H), topk_weights fp32 (T, k), topk_ids int32 (T, k))``."""
    out, weights, ids, _ = _moe_fp8(hidden, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale,
                                    gate_up_bias, down_fp8, down_scale, down_bias, alpha, limit, hidden_fp8)
    return out, weights, ids


def _moe_fp8(hidden, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8,
             down_scale, down_bias, alpha, limit, hidden_fp8):
    """``moe_fp8``'s body; also returns the router scores in hidden's dtype."""
    alpha, limit = _check_experts_fp8(hidden, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8, down_scale,
                                      down_bias, alpha, limit)
    e = gate_up_fp8.shape[0]
    _check_router(hidden, router_weight, router_bias, e)
    top_k = check_top_k(top_k, e)
    hidden = hidden.contiguous()
    if hidden_fp8 is not None:
        if not isinstance(hidden_fp8, (tuple, list)) or len(hidden_fp8) != 2:
            raise TypeError("hidden_fp8 must be a (q, scale) pair from rms_norm_quant_fp8 / pad_quant_fp8")
        _checks.tensor("hidden_fp8[0]", hidden_fp8[0], dtypes=(FP8_DTYPE,), ndim=2)
        _checks.shape("hidden_fp8[0]", hidden_fp8[0], (hidden.shape[0], None))
        if hidden_fp8[0].shape[1] < hidden.shape[1] or hidden_fp8[0].stride(1) != 1:
            raise ValueError(f"hidden_fp8[0] must be (T, h_pad >= H={hidden.shape[1]}) with contiguous rows, got "
                             f"shape {tuple(hidden_fp8[0].shape)}")
        _checks.tensor("hidden_fp8[1]", hidden_fp8[1], dtypes=(torch.float32,), ndim=1)
        _checks.shape("hidden_fp8[1]", hidden_fp8[1], (hidden.shape[0],))
        _checks.same_device("hidden", hidden, hidden_fp8_q=hidden_fp8[0], hidden_fp8_scale=hidden_fp8[1])
    if _fast_path_ok(hidden):
        return _moe_fp8_fast(hidden, hidden_fp8, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale,
                             gate_up_bias, down_fp8, down_scale, down_bias, alpha, limit)
    logits = F.linear(hidden, router_weight.to(hidden.dtype),
                      None if router_bias is None else router_bias.to(hidden.dtype))
    weights, ids = ops.moe_route(logits, top_k)
    if hidden_fp8 is not None and hidden.is_cuda and not torch.compiler.is_compiling():
        out = _experts_fp8_cuda(hidden, hidden_fp8[0], hidden_fp8[1], ids, weights, gate_up_fp8, gate_up_scale,
                                gate_up_bias, down_fp8, down_scale, down_bias, alpha, limit, False)
    else:
        out = ops.moe_experts_fp8(hidden, ids, weights, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8,
                                  down_scale, down_bias, alpha, limit)
    return out, weights, ids, weights.to(hidden.dtype)


def moe_with_scores_fp8(hidden, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale, gate_up_bias,
                        down_fp8, down_scale, down_bias, alpha=1.702, limit=7.0, *, hidden_fp8=None):
    """``moe_fp8`` for the MoE layer: ``(out, router scores (T, k) in hidden's dtype)``."""
    out, _, _, scores = _moe_fp8(hidden, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale,
                                 gate_up_bias, down_fp8, down_scale, down_bias, alpha, limit, hidden_fp8)
    return out, scores


def finalize_slice(y: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor | None, h: int,
                   num_experts: int | None = None, *, skip_foreign: bool = False) -> torch.Tensor:
    """``out[t] = sum_j w[t, j] * y[t * k + j, :h]`` summed in fp32 (w = 1 when ``topk_weights`` is None), in y's
    dtype: the top-k reduction back to token order and the crop of a padded hidden dimension, one pass.

    ``y`` (T * k, H_pad >= h); ``topk_ids`` (T, k) int32/int64; ``topk_weights`` (T, k) float or None. Ids outside
    [0, num_experts) (default: no bound) flag their token's row NaN, or contribute zero with ``skip_foreign``."""
    _checks.tensor("y", y, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.tensor("topk_ids", topk_ids, dtypes=_ID_DTYPES, ndim=2)
    if y.shape[0] != topk_ids.numel():
        raise ValueError(f"y must have T * k = {topk_ids.numel()} rows (topk_ids {tuple(topk_ids.shape)}), got "
                         f"shape {tuple(y.shape)}")
    h = _checks.integer("h", h, minimum=0, maximum=y.shape[1])
    if topk_weights is not None:
        _checks.tensor("topk_weights", topk_weights, dtypes=_checks.FLOAT_DTYPES, ndim=2)
        _checks.shape("topk_weights", topk_weights, tuple(topk_ids.shape))
        topk_weights = topk_weights.contiguous()
    num_experts = 2**31 - 1 if num_experts is None else _checks.integer("num_experts", num_experts, minimum=1)
    if type(skip_foreign) is not bool:
        raise TypeError(f"skip_foreign must be a bool, got {type(skip_foreign).__name__}")
    _checks.same_device("y", y, topk_ids=topk_ids, topk_weights=topk_weights)
    if y.stride(1) != 1:
        y = y.contiguous()
    return ops.finalize_slice(y, topk_ids.to(torch.int32).contiguous(), topk_weights, num_experts, h, skip_foreign)


# --- CUDA implementation (Triton, and the pad_quant_fp8 op) -------------------------------------------------


def _experts_fp8_cuda(hidden, xq, xs, topk_ids, topk_weights, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8,
                      down_scale, down_bias, alpha, limit, skip_foreign):
    from ..quant import fp8_triton
    from . import grouped_gemm

    t, h = hidden.shape
    e, i2, _ = gate_up_fp8.shape
    if t * topk_ids.shape[1] == 0:
        return hidden.new_zeros((t, h))
    # Padding rows of act are never written; their (garbage) scales are never read (GEMM 2 masks those rows).
    y, ids = grouped_gemm.experts_to_slots(
        xq, topk_ids, topk_weights, e, i2 // 2, padded_width(h), hidden.dtype, (gate_up_fp8, gate_up_scale),
        gate_up_bias, (down_fp8, down_scale), down_bias, alpha, limit, a_scales=xs,
        quant_act=lambda act: ops.pad_quant_fp8(act, padded_width(i2 // 2)))
    # moe_dispatch routes an id outside [0, E) nowhere (its y row is never written): flagged or skipped here.
    return fp8_triton.finalize_slice(y, ids, None, e, h, skip_foreign)


def _moe_fp8_fast(hidden, hidden_fp8, router_weight, router_bias, top_k, gate_up_fp8, gate_up_scale, gate_up_bias,
                  down_fp8, down_scale, down_bias, alpha, limit):
    """``experts.fast_block`` (router GEMM, route and dispatch in one ``moe_prepare`` call, where the traced path
    takes four launches at decode sizes) with the kernels of ``_experts_fp8_cuda``."""
    from ..quant import fp8_triton

    h = hidden.shape[1]
    e, i2 = gate_up_fp8.shape[0], gate_up_fp8.shape[1]
    xq, xs = hidden_fp8 if hidden_fp8 is not None else ops.pad_quant_fp8(hidden, padded_width(h))
    return fast_block(hidden, router_weight, router_bias, top_k, e, i2 // 2, xq, (gate_up_fp8, gate_up_scale),
                      gate_up_bias, (down_fp8, down_scale), down_bias, alpha, limit,
                      lambda y, ids: fp8_triton.finalize_slice(y, ids, None, e, h, False), a_scales=xs,
                      quant_act=lambda act: ops.pad_quant_fp8(act, padded_width(i2 // 2)))


def _moe_experts_fp8_cuda(hidden, topk_ids, topk_weights, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8,
                          down_scale, down_bias, alpha, limit, skip_foreign=False):
    xq, xs = ops.pad_quant_fp8(hidden, padded_width(hidden.shape[1]))
    return _experts_fp8_cuda(hidden, xq, xs, topk_ids, topk_weights, gate_up_fp8, gate_up_scale, gate_up_bias,
                             down_fp8, down_scale, down_bias, alpha, limit, skip_foreign)


def _finalize_slice_cuda(y, topk_ids, topk_weights, num_experts, h, skip_foreign=False):
    from ..quant import fp8_triton

    return fp8_triton.finalize_slice(y, topk_ids, topk_weights, num_experts, h, skip_foreign)


if "_cuda_" in add_op_namespace_prefix("moe_experts_fp8"):
    torch.library.impl(add_op_namespace_prefix("moe_experts_fp8"), "CUDA")(_moe_experts_fp8_cuda)
    torch.library.impl(add_op_namespace_prefix("finalize_slice"), "CUDA")(_finalize_slice_cuda)


@torch.library.register_fake(add_op_namespace_prefix("moe_experts_fp8"))
def _moe_experts_fp8_fake(hidden, topk_ids, topk_weights, gate_up_fp8, gate_up_scale, gate_up_bias, down_fp8,
                          down_scale, down_bias, alpha, limit, skip_foreign=False):
    return torch.empty_like(hidden)


@torch.library.register_fake(add_op_namespace_prefix("finalize_slice"))
def _finalize_slice_fake(y, topk_ids, topk_weights, num_experts, h, skip_foreign=False):
    return y.new_empty((topk_ids.shape[0], h))
