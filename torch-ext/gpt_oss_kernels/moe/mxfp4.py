"""MXFP4 experts: the checkpoint's blocks (or their kernel words) and scales (quant/mxfp4.py) straight into the
MoE block.

``moe_experts_mxfp4`` is one op of the C++ schema (torch-ext/torch_binding.cpp): in the CPU variant a C++
implementation (kernel_src/moe/moe_cpu.cpp: each hit expert dequantized exactly, then two matmuls); in the
CUDA variant ``_moe_experts_mxfp4_cuda`` below (the bf16 op's dispatch and finalize, the same Triton grouped
GEMM with ``W_FORMAT="mxfp4"``: weight tiles dequantized in registers; 16-row blocks: the CUDA decode GEMM,
kernel_src/moe/decode_gemm_cuda.cu), registered on that schema with
``torch.library.impl``, with a fake implementation for torch.compile. No host sync anywhere.

Weights are those of ``dequantize_mxfp4(blocks, scales, hidden.dtype)``: each RN(e2m1 * 2^(s - 127)) in the
activation dtype (exact for bf16 / fp32; float16 rounds and overflows as the cast does), so the result is the
bf16 op's on those weights; docs/moe.md "MXFP4" has the format and the 0xFF / subnormal decisions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks
from .._ops import add_op_namespace_prefix, ops
from .experts import _FINALIZE, _check_router, _check_routes, _fast_path_ok, fast_block
from .routing import check_top_k


def _check_packed(name, blocks, scales_name, scales, e, n, k):
    """blocks: the checkpoint's (E, N, K/32, 16) uint8, or kernel words (E, N, K/8) uint32
    (quant.mxfp4_kernel_words); scales (E, N, K/32) uint8; None entries of (e, n, k) are free."""
    _checks.tensor(name, blocks, dtypes=(torch.uint8, torch.uint32))
    _checks.tensor(scales_name, scales, dtypes=(torch.uint8,), ndim=3)
    g = None if k is None else k // 32
    if blocks.dtype == torch.uint8:
        _checks.shape(name, blocks, (e, n, g, 16))
        groups = blocks.shape[2]
    else:
        _checks.shape(name, blocks, (e, n, None if g is None else 4 * g))
        if blocks.shape[2] % 4:
            raise ValueError(f"{name}: kernel words must be (E, N, K/8) with K a multiple of 32, got shape "
                             f"{tuple(blocks.shape)}")
        groups = blocks.shape[2] // 4
    _checks.shape(scales_name, scales, (blocks.shape[0], blocks.shape[1], groups))


def _check_experts_mxfp4(hidden, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias,
                         alpha, limit):
    """Shapes, dtypes and devices of the MXFP4 experts (never values). Returns (alpha, limit) as floats."""
    _checks.tensor("hidden", hidden, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    h = hidden.shape[1]
    if h % 32 or h == 0:
        raise ValueError(f"hidden's last dimension (H) must be a positive multiple of 32 for MXFP4 weights, got {h}")
    _check_packed("gate_up_blocks", gate_up_blocks, "gate_up_scales", gate_up_scales, None, None, h)
    e, i2 = gate_up_blocks.shape[0], gate_up_blocks.shape[1]
    if i2 % 64 or i2 == 0:
        raise ValueError(f"gate_up_blocks must be (E, 2I, H/32, 16) (or kernel words (E, 2I, H/8)) with I a positive "
                         f"multiple of 32 (gate/up interleaved), got shape {tuple(gate_up_blocks.shape)}")
    _check_packed("down_blocks", down_blocks, "down_scales", down_scales, e, h, i2 // 2)
    _checks.optional("gate_up_bias", gate_up_bias, (e, i2))
    _checks.optional("down_bias", down_bias, (e, h))
    _checks.same_device("hidden", hidden, gate_up_blocks=gate_up_blocks, gate_up_scales=gate_up_scales,
                        gate_up_bias=gate_up_bias, down_blocks=down_blocks, down_scales=down_scales,
                        down_bias=down_bias)
    return _checks.number("alpha", alpha), _checks.number("limit", limit, minimum=0.0)


def moe_experts_mxfp4(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_blocks: torch.Tensor,
    gate_up_scales: torch.Tensor,
    gate_up_bias: torch.Tensor | None,
    down_blocks: torch.Tensor,
    down_scales: torch.Tensor,
    down_bias: torch.Tensor | None,
    alpha: float = 1.702,
    limit: float = 7.0,
    *,
    skip_foreign: bool = False,
) -> torch.Tensor:
    """``moe_experts`` with MXFP4 expert weights (openai/gpt-oss's format).

    ``hidden`` (T, H) bf16/fp16/fp32; ``topk_ids`` (T, k) int32/int64; ``topk_weights`` (T, k) float;
    ``gate_up_blocks`` uint8 (E, 2I, H/32, 16), ``gate_up_scales`` uint8 (E, 2I, H/32) (rows gate/up
    interleaved); ``gate_up_bias`` (E, 2I) or None; ``down_blocks`` uint8 (E, H, I/32, 16), ``down_scales``
    uint8 (E, H, I/32); ``down_bias`` (E, H) or None. Either blocks may instead be their kernel words
    (``quant.mxfp4_kernel_words``: uint32 (E, N, K/8), the same values; faster at decode on CUDA). Equals
    ``moe_experts`` on the weights ``dequantize_mxfp4(blocks, scales, hidden.dtype)``; returns (T, H) in hidden's
    dtype.
    Ids outside [0, E): as ``moe_experts`` (CPU: error; CUDA: that token's row is NaN; ``skip_foreign=True``:
    another expert-parallel rank's experts, contributing zero).
    """
    alpha, limit = _check_experts_mxfp4(hidden, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks,
                                        down_scales, down_bias, alpha, limit)
    _check_routes(hidden, topk_ids, topk_weights, gate_up_blocks.shape[0], skip_foreign)
    return ops.moe_experts_mxfp4(hidden.contiguous(), topk_ids.contiguous(), topk_weights.contiguous(),
                                 gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias,
                                 alpha, limit, skip_foreign)


def moe_mxfp4(
    hidden: torch.Tensor,
    router_weight: torch.Tensor,
    router_bias: torch.Tensor | None,
    top_k: int,
    gate_up_blocks: torch.Tensor,
    gate_up_scales: torch.Tensor,
    gate_up_bias: torch.Tensor | None,
    down_blocks: torch.Tensor,
    down_scales: torch.Tensor,
    down_bias: torch.Tensor | None,
    alpha: float = 1.702,
    limit: float = 7.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole GPT-OSS MoE block with MXFP4 experts: router GEMM, ``moe_route``, ``moe_experts_mxfp4``.

    ``router_weight`` (E, H), ``router_bias`` (E,) or None (not quantized in the checkpoints). Returns
    ``(out (T, H) in hidden's dtype, topk_weights fp32 (T, k), topk_ids int32 (T, k))``.
    """
    alpha, limit = _check_experts_mxfp4(hidden, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks,
                                        down_scales, down_bias, alpha, limit)
    e = gate_up_blocks.shape[0]
    _check_router(hidden, router_weight, router_bias, e)
    top_k = check_top_k(top_k, e)
    hidden = hidden.contiguous()
    if _fast_path_ok(hidden):
        out, weights, ids, _ = _moe_mxfp4_fast(hidden, router_weight, router_bias, top_k, gate_up_blocks,
                                               gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias,
                                               alpha, limit)
        return out, weights, ids
    logits = F.linear(hidden, router_weight.to(hidden.dtype),
                      None if router_bias is None else router_bias.to(hidden.dtype))
    weights, ids = ops.moe_route(logits, top_k)
    out = ops.moe_experts_mxfp4(hidden, ids, weights, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks,
                                down_scales, down_bias, alpha, limit)
    return out, weights, ids


def moe_with_scores_mxfp4(hidden, router_weight, router_bias, top_k, gate_up_blocks, gate_up_scales, gate_up_bias,
                          down_blocks, down_scales, down_bias, alpha=1.702, limit=7.0):
    """``moe_mxfp4`` for the MoE layer: returns ``(out, router scores (T, k) in hidden's dtype)`` (the softmax
    of the top-k logits, as transformers' GptOssMLP returns them)."""
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 and _fast_path_ok(hidden):
        alpha, limit = _check_experts_mxfp4(hidden, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks,
                                            down_scales, down_bias, alpha, limit)
        e = gate_up_blocks.shape[0]
        _check_router(hidden, router_weight, router_bias, e)
        top_k = check_top_k(top_k, e)
        out, _, _, scores = _moe_mxfp4_fast(hidden.contiguous(), router_weight, router_bias, top_k, gate_up_blocks,
                                            gate_up_scales, gate_up_bias, down_blocks, down_scales, down_bias, alpha,
                                            limit)
        return out, scores
    out, weights, _ = moe_mxfp4(hidden, router_weight, router_bias, top_k, gate_up_blocks, gate_up_scales,
                                gate_up_bias, down_blocks, down_scales, down_bias, alpha, limit)
    return out, weights.to(hidden.dtype)


def _scales(s: torch.Tensor) -> torch.Tensor:
    return s if s.is_contiguous() else s.contiguous()


# From this many routed rows (T * k) on, the experts are dequantized to the activation dtype (one launch per
# weight, exact) and the bf16 GEMMs run: at prefill sizes the GEMMs are tensor-core bound and dequantizing every
# tile in their main loop costs more than one pass over the weights (H200, 2026-12-04: T=4096 took 4,376 us
# in-loop against 1,436 us for the bf16 block on the same weights; the pass writes E * 3 * H * I values, 1.6 GB
# for gpt-oss-20b, freed after the block).
DEQUANT_MIN_ROWS = 4096


def _gemm_weights(blocks, scales, dtype, m):
    """(weights, scales) for the grouped GEMMs: the MXFP4 words and their scales, or at m >= DEQUANT_MIN_ROWS the
    dequantized (E, K, N) weights and None, unless the CUDA prefill GEMM takes the words (kernel words, bf16, sm_90,
    unless GOK_PREFILL_GEMM=0: grouped_gemm.prefill_gemm_ok)."""
    from . import grouped_gemm

    words = grouped_gemm.mxfp4_words(blocks)
    block_m = grouped_gemm.block_m_for(m, words.shape[0])
    if (m >= DEQUANT_MIN_ROWS and dtype in (torch.bfloat16, torch.float16)
            and not grouped_gemm.prefill_gemm_ok(words, dtype, block_m)):
        return grouped_gemm.dequantize_mxfp4_experts(words, _scales(scales), dtype), None
    return words, _scales(scales)


# --- eager fast path (CUDA variant): as moe/experts.py's _moe_fast ------------------------------------


def _moe_mxfp4_fast(hidden, router_weight, router_bias, top_k, gate_up_blocks, gate_up_scales, gate_up_bias,
                    down_blocks, down_scales, down_bias, alpha, limit):
    e, i2 = gate_up_blocks.shape[0], gate_up_blocks.shape[1]
    gate_up, down = _lazy_weights(gate_up_blocks, gate_up_scales, down_blocks, down_scales, hidden.dtype,
                                  hidden.shape[0] * top_k)
    return fast_block(hidden, router_weight, router_bias, top_k, e, i2 // 2, hidden, gate_up, gate_up_bias, down,
                      down_bias, alpha, limit, lambda y, ids: _FINALIZE(y, ids, e))


def _lazy_weights(gate_up_blocks, gate_up_scales, down_blocks, down_scales, dtype, m):
    return (lambda: _gemm_weights(gate_up_blocks, gate_up_scales, dtype, m),
            lambda: _gemm_weights(down_blocks, down_scales, dtype, m))


# --- CUDA implementation of the op (Triton) ---------------------------------------------------------


def _moe_experts_mxfp4_cuda(hidden, topk_ids, topk_weights, gate_up_blocks, gate_up_scales, gate_up_bias,
                            down_blocks, down_scales, down_bias, alpha, limit, skip_foreign=False):
    from . import grouped_gemm  # triton, imported on first use

    t, h = hidden.shape
    e, i2 = gate_up_blocks.shape[0], gate_up_blocks.shape[1]
    m = t * topk_ids.shape[1]
    if m == 0:
        return hidden.new_zeros((t, h))
    gate_up, down = _lazy_weights(gate_up_blocks, gate_up_scales, down_blocks, down_scales, hidden.dtype, m)
    y, ids = grouped_gemm.experts_to_slots(hidden, topk_ids, topk_weights, e, i2 // 2, h, hidden.dtype, gate_up,
                                           gate_up_bias, down, down_bias, alpha, limit)
    return ops.moe_finalize(y, ids, e, skip_foreign)  # as moe_experts: foreign slots NaN-flagged or skipped


if "_cuda_" in add_op_namespace_prefix("moe_experts_mxfp4"):
    torch.library.impl(add_op_namespace_prefix("moe_experts_mxfp4"), "CUDA")(_moe_experts_mxfp4_cuda)


@torch.library.register_fake(add_op_namespace_prefix("moe_experts_mxfp4"))
def _moe_experts_mxfp4_fake(hidden, topk_ids, topk_weights, gate_up_blocks, gate_up_scales, gate_up_bias,
                            down_blocks, down_scales, down_bias, alpha, limit, skip_foreign=False):
    return torch.empty_like(hidden)
