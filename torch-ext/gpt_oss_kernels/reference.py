"""GPT-OSS math in plain torch: what every test and benchmark compares against.

Nothing here imports the compiled ops. Functions compute in the dtype of their inputs, so
pass float64 tensors (``x.double()``) for a reference; where the model rounds an
intermediate to its activation dtype, the function takes that dtype explicitly.
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x * rsqrt(mean(x^2) + eps)) * weight`` over the last dimension, in x's dtype."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)) * weight


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, *, act_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual sum is rounded to ``act_dtype`` (as the unfused model rounds it), then normed."""
    summed = (x.to(act_dtype) + residual.to(act_dtype)).to(x.dtype)
    return rms_norm(summed, weight, eps), summed


# --- attention ---------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    sinks: torch.Tensor | None = None,
    causal: bool = True,
    window: tuple[int, int] = (-1, -1),
) -> torch.Tensor:
    """One sequence of GQA attention, computed like transformers' GPT-OSS ``eager_attention_forward``.

    ``q (Sq, Hq, D)``, ``k``/``v`` ``(Sk, Hkv, D)``, ``sinks (Hq,)`` or None. Query ``i`` sits at key
    position ``i + Sk - Sq`` (bottom-right alignment, as flash-attn). ``window = (left, right)`` in
    flash-attn's inclusive convention (-1: unbounded); ``causal`` forces ``right = 0``. The sink is one
    extra logit per head that joins the softmax denominator only. A query that sees no key returns 0.
    """
    sq, hq, d = q.shape
    sk, hkv, _ = k.shape
    g = hq // hkv
    kr = k.repeat_interleave(g, dim=1)  # (Sk, Hq, D), head h uses kv head h // g
    vr = v.repeat_interleave(g, dim=1)
    logits = torch.einsum("qhd,khd->hqk", q, kr) * scale
    qpos = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
    kpos = torch.arange(sk, device=q.device)[None, :]
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    left, right = window
    if causal:
        right = 0
    if right >= 0:
        visible &= kpos <= qpos + right
    if left >= 0:
        visible &= kpos >= qpos - left
    logits = logits.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        col = sinks.to(logits.dtype).reshape(hq, 1, 1).expand(hq, sq, 1)
    else:
        col = torch.full((hq, sq, 1), float("-inf"), dtype=logits.dtype, device=q.device)
    combined = torch.cat([logits, col], dim=-1)
    m = combined.max(dim=-1, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(combined - m)
    denom = e.sum(-1, keepdim=True)
    probs = (e / torch.where(denom > 0, denom, torch.ones_like(denom)))[..., :-1]
    return torch.einsum("hqk,khd->qhd", probs.to(vr.dtype), vr)


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    **kw,
) -> torch.Tensor:
    """``attention`` over packed sequences: ``q (Tq, Hq, D)``, ``k``/``v`` ``(Tk, Hkv, D)``."""
    out = torch.zeros_like(q[..., :1].expand(*q.shape[:-1], v.shape[-1])).clone()
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        if cq[b + 1] > cq[b]:
            out[cq[b] : cq[b + 1]] = attention(q[cq[b] : cq[b + 1]], k[ck[b] : ck[b + 1]], v[ck[b] : ck[b + 1]], **kw)
    return out


# --- rotary ------------------------------------------------------------------------------


def rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' GPT-OSS ``apply_rotary_pos_emb``: half-dim cos/sin, rotation on halves."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)

    def rot(x):
        x1, x2 = torch.chunk(x, 2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    return rot(q), rot(k)


def multi_linear(x: torch.Tensor, weights, biases=None) -> tuple[torch.Tensor, ...]:
    """One to three linear layers on the same input: ``x W_i^T + b_i`` each."""
    biases = biases if biases is not None else [None] * len(weights)
    return tuple(x @ w.T + (b if b is not None else 0) for w, b in zip(weights, biases))


# --- moe ---------------------------------------------------------------------------------


def moe_route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-OSS router after the logits: ``topk`` then softmax over the k values (ties: torch.topk's order).

    Returns ``(weights (T, k) in the logits' dtype, or float32 for half types; ids (T, k) int64)``.
    """
    values, ids = torch.topk(router_logits, top_k, dim=-1)
    dtype = torch.float32 if router_logits.dtype in (torch.float16, torch.bfloat16) else router_logits.dtype
    return torch.softmax(values.to(dtype), dim=-1), ids


def moe_swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU on interleaved columns: gate = [..., ::2], up = [..., 1::2]."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(gate * alpha)


def moe_experts(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    gate_up_proj_bias: torch.Tensor | None,
    down_proj: torch.Tensor,
    down_proj_bias: torch.Tensor | None,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """GptOssExperts math, computed per (token, slot) in the dtype of ``hidden`` (pass float64).

    ``out[t] = sum_j w[t, j] * (swiglu(x[t] @ W1[e] + b1[e]) @ W2[e] + b2[e])`` with ``e = ids[t, j]``.
    Loops over the experts that are hit (a reference, not a fast path).
    """
    dtype = hidden.dtype
    out = torch.zeros_like(hidden)
    ids = topk_ids.long()
    for e in torch.unique(ids).tolist():
        tok, slot = torch.where(ids == e)
        gu = hidden[tok] @ gate_up_proj[e].to(dtype)
        if gate_up_proj_bias is not None:
            gu = gu + gate_up_proj_bias[e].to(dtype)
        o = moe_swiglu(gu, alpha, limit) @ down_proj[e].to(dtype)
        if down_proj_bias is not None:
            o = o + down_proj_bias[e].to(dtype)
        out.index_add_(0, tok, o * topk_weights[tok, slot, None].to(dtype))
    return out


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
    alpha: float,
    limit: float,
    *,
    weight_dtype: torch.dtype,
) -> torch.Tensor:
    """``moe_experts`` on the MXFP4 checkpoint's weights as ``weight_dtype`` (the kernels' activation dtype):
    ``quant.mxfp4.dequantize_mxfp4`` (computed on the CPU, where torch.ldexp is exact: RN(e2m1 * 2^(s-127))),
    then the math in ``hidden``'s dtype (pass float64)."""
    from .quant.mxfp4 import dequantize_mxfp4

    def deq(b, s):
        return dequantize_mxfp4(b.cpu(), s.cpu(), weight_dtype).to(device=hidden.device, dtype=hidden.dtype)

    return moe_experts(hidden, topk_ids, topk_weights, deq(gate_up_blocks, gate_up_scales), gate_up_bias,
                       deq(down_blocks, down_scales), down_bias, alpha, limit)


def moe(
    hidden: torch.Tensor,
    router_weight: torch.Tensor,
    router_bias: torch.Tensor | None,
    top_k: int,
    gate_up_proj: torch.Tensor,
    gate_up_proj_bias: torch.Tensor | None,
    down_proj: torch.Tensor,
    down_proj_bias: torch.Tensor | None,
    alpha: float,
    limit: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router + experts, all in ``hidden``'s dtype. Returns ``(out, topk_weights, topk_ids)``."""
    dtype = hidden.dtype
    logits = torch.nn.functional.linear(
        hidden, router_weight.to(dtype), None if router_bias is None else router_bias.to(dtype)
    )
    weights, ids = moe_route(logits, top_k)
    out = moe_experts(hidden, ids, weights, gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias, alpha, limit)
    return out, weights, ids


# --- fp8 ---------------------------------------------------------------------------------


def pad_quant_fp8(x: torch.Tensor, h_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token e4m3 quantization into a zero-padded (T, h_pad) buffer: ``quant.fp8.quantize_rows`` (its
    docstring has the math: fp32 scale ``max(amax / 448, 2^-126)``, saturating, NaN / Inf rows -> NaN)."""
    from .quant.fp8 import quantize_rows

    return quantize_rows(x, h_pad)


def rms_norm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, h_pad: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm in fp32 rounded to ``x``'s dtype (the rms_norm op's output), then ``pad_quant_fp8`` of those rows:
    ``(q, scale, normed)``."""
    xf = x.to(torch.float32)
    normed = rms_norm(xf, weight.to(torch.float32), eps).to(x.dtype)
    q, scale = pad_quant_fp8(normed, h_pad)
    return q, scale, normed


def dequant_rows_fp8(q: torch.Tensor, scale: torch.Tensor, h: int) -> torch.Tensor:
    """``float(q[:, :h]) * scale`` in float64."""
    return q[:, :h].to(torch.float64) * scale.to(torch.float64)[:, None]


def finalize_slice(y: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor | None, h: int
                   ) -> torch.Tensor:
    """``out[t] = sum_j w[t, j] * y[t * k + j, :h]`` (w = 1 without weights), in float64."""
    t, k = topk_ids.shape
    rows = y[:, :h].to(torch.float64).view(t, k, h)
    if topk_weights is not None:
        rows = rows * topk_weights.to(torch.float64)[:, :, None]
    return rows.sum(1)


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
    alpha: float,
    limit: float,
    *,
    act_dtype: torch.dtype,
    gemm1_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``moe_experts`` as the FP8 kernels compute it, in float64: the tokens quantized per row (``pad_quant_fp8``),
    the weights ``quant.fp8.dequantize_fp8``, the SwiGLU activations rounded to ``act_dtype`` and quantized per row
    again before the down projection, each weighted expert output rounded to ``act_dtype``, summed.
    ``gemm1_dtype=torch.float32``: the gate/up products summed in float32, as a GPU sums them; the requantized act
    codes (and so the outputs, by up to ~4e-2 at one token) follow that rounding (docs/moe.md "FP8 accuracy")."""
    from .quant.fp8 import dequantize_fp8, quantize_rows

    def deq_rows(v):
        q, s = quantize_rows(v)
        return dequant_rows_fp8(q, s, v.shape[1])

    x = deq_rows(hidden)
    w1 = dequantize_fp8(gate_up_fp8, gate_up_scale, torch.float64)
    w2 = dequantize_fp8(down_fp8, down_scale, torch.float64)
    out = torch.zeros(hidden.shape, dtype=torch.float64, device=hidden.device)
    ids = topk_ids.long()
    for e in torch.unique(ids).tolist():
        tok, slot = torch.where(ids == e)
        gu = (x[tok].to(gemm1_dtype) @ w1[e].to(gemm1_dtype)).to(torch.float64)
        if gate_up_bias is not None:
            gu = gu + gate_up_bias[e].to(torch.float64)
        act = moe_swiglu(gu, alpha, limit).to(act_dtype)
        o = deq_rows(act) @ w2[e]
        if down_bias is not None:
            o = o + down_bias[e].to(torch.float64)
        o = (o * topk_weights[tok, slot, None].to(torch.float64)).to(act_dtype).to(torch.float64)
        out.index_add_(0, tok, o)
    return out
