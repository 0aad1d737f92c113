"""FP8 (e4m3) expert weights and per-token FP8 activations.

Weights, per projection (``gate_up_proj``: N = 2I output rows, K = H; ``down_proj``: N = H, K = I):

* ``*_fp8`` float8_e4m3fn ``(E, N, K)``: K contiguous (the layout FP8 tensor cores read both operands in: K-major),
  i.e. the transpose of the bf16 model's ``(E, K, N)``; gate/up rows interleaved as in the bf16 model.
* ``*_scale`` float32: ``(E, N)`` per output channel (``granularity="channel"``), or ``(E, ceil(N/128),
  ceil(K/128))`` per 128x128 block (``granularity="block"``, DeepSeek-V3's layout of an (N, K) weight).

Weight (k, n) of expert e is ``float(q[e, n, k]) * scale``. Quantization: ``scale = amax / 448`` over the channel
(block), ``q = e4m3_rne(clamp(w / scale, -448, 448))`` (saturating; an all-zero channel gets scale 1). 448 is e4m3's
largest finite value (float8_e4m3fn: no infinities, one NaN code).

Activations (``act_scales`` / ``quantize_rows``): one fp32 scale per row (token), ``scale = max(amax / 448,
2^-126)`` (so ``1 / scale`` is finite: an all-zero row quantizes to zeros), ``q = e4m3_rne(clamp(x * (1 / scale),
-448, 448))``, every step rounded in fp32. A row holding a NaN or an Inf gets scale NaN and q NaN: whatever consumes
it (the GEMMs multiply by the scale) makes that token's output NaN and no other.
"""

from __future__ import annotations

import re

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK = 128  # block scales: 128 x 128 (N x K)
GRANULARITIES = ("channel", "block")
MIN_ACT_SCALE = 2.0**-126  # smallest normal fp32: 1 / scale stays finite

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_granularity(granularity: object) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity


def quantize_fp8(w: torch.Tensor, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, K, N)`` float weights (GptOssExperts' layout) -> ``(q (E, N, K) float8_e4m3fn, scale float32)``,
    scale ``(E, N)`` for ``"channel"`` or ``(E, ceil(N/128), ceil(K/128))`` for ``"block"`` (module docstring).
    Raises ValueError on non-finite weights (a scale cannot represent them)."""
    granularity = _check_granularity(granularity)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _FLOATS:
        raise TypeError(f"w must have a float dtype, got {w.dtype}")
    if w.dim() != 3:
        raise ValueError(f"w must be (E, K, N), got shape {tuple(w.shape)}")
    x = w.detach().to(torch.float32).transpose(1, 2)  # (E, N, K)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("w has non-finite values: FP8 scales cannot encode them")
    e, n, k = x.shape
    if granularity == "channel":
        amax = x.abs().amax(-1) if k else x.new_zeros((e, n))
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        full = scale[:, :, None]
    else:
        nb, kb = -(-n // BLOCK), -(-k // BLOCK)
        padded = x.new_zeros((e, nb * BLOCK, kb * BLOCK))
        padded[:, :n, :k] = x.abs()
        amax = padded.view(e, nb, BLOCK, kb, BLOCK).amax((2, 4))
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        full = scale.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)[:, :n, :k]
    q = (x / full).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.contiguous(), scale.contiguous()


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``quantize_fp8``'s ``(q (E, N, K), scale)`` -> ``(E, K, N)`` weights in ``dtype`` (each value
    ``float(q) * scale`` in fp32, rounded once to ``dtype``). The granularity follows from the scale's rank."""
    if not isinstance(q, torch.Tensor) or q.dtype != FP8_DTYPE or q.dim() != 3:
        raise TypeError(f"q must be a float8_e4m3fn (E, N, K) tensor, got {_describe(q)}")
    e, n, k = q.shape
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
        raise TypeError(f"scale must be a float32 tensor, got {_describe(scale)}")
    if tuple(scale.shape) == (e, n):
        full = scale[:, :, None]
    elif tuple(scale.shape) == (e, -(-n // BLOCK), -(-k // BLOCK)):
        full = scale.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)[:, :n, :k]
    else:
        raise ValueError(f"scale must be (E, N) = {(e, n)} or (E, ceil(N/128), ceil(K/128)) = "
                         f"{(e, -(-n // BLOCK), -(-k // BLOCK))}, got shape {tuple(scale.shape)}")
    return (q.to(torch.float32) * full).to(dtype).transpose(1, 2).contiguous()


def granularity_of(scale: torch.Tensor) -> str:
    """``"channel"`` for (E, N) scales, ``"block"`` for (E, N/128, K/128)."""
    return "channel" if scale.dim() == 2 else "block"


def _describe(t: object) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


# --- per-token activations (the math of pad_quant_fp8 / rms_norm_quant_fp8; reference.py re-exports it) -------


def act_scales(x: torch.Tensor) -> torch.Tensor:
    """Per-row scales of ``x`` (T, H) as the ops compute them, float32 (T,)."""
    xf = x.to(torch.float32)
    a = torch.where(torch.isnan(xf), torch.full_like(xf, float("inf")), xf.abs())
    amax = a.amax(-1) if x.shape[-1] else xf.new_zeros(x.shape[:-1])
    scale = torch.clamp_min(amax / FP8_MAX, MIN_ACT_SCALE)
    return torch.where(torch.isinf(amax), torch.full_like(scale, float("nan")), scale)


def quantize_rows(x: torch.Tensor, h_pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (T, H) -> ``(q (T, h_pad) float8_e4m3fn, columns >= H zero; scale (T,) float32)``."""
    t, h = x.shape
    h_pad = h if h_pad is None else h_pad
    scale = act_scales(x)
    inv = 1.0 / scale
    q = torch.zeros((t, h_pad), dtype=FP8_DTYPE, device=x.device)
    q[:, :h] = (x.to(torch.float32) * inv[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


# --- checkpoints -------------------------------------------------------------------------------------------

_EXPERT_KEY = re.compile(r"^(?P<prefix>.*\.mlp\.experts\.)(?P<proj>gate_up_proj|down_proj)$")


def quantize_experts_fp8(state_dict_or_model, granularity: str = "channel",
                         bias_dtype: torch.dtype = torch.bfloat16) -> dict:
    """A bf16 (or any float) GPT-OSS state dict, or a ``GptOssForCausalLM``, -> the state dict of an FP8-experts
    checkpoint as ``layers.MoeExpertsLayout`` holds it: every ``...mlp.experts.gate_up_proj`` / ``down_proj``
    becomes ``..._fp8`` (E, N, K) e4m3 and ``..._scale`` float32 (``quantize_fp8``), the expert biases are cast to
    ``bias_dtype``, every other tensor is kept as it is. Its config needs ``quantization_config =
    fp8_quantization_config(granularity)``."""
    granularity = _check_granularity(granularity)
    sd = state_dict_or_model.state_dict() if isinstance(state_dict_or_model, torch.nn.Module) else dict(
        state_dict_or_model)
    out = {}
    for name, t in sd.items():
        if _EXPERT_KEY.match(name) is not None:
            out[f"{name}_fp8"], out[f"{name}_scale"] = quantize_fp8(t, granularity)
        elif name.endswith(("mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj_bias")):
            out[name] = t.detach().to(bias_dtype)
        else:
            out[name] = t
    return out


def fp8_quantization_config(granularity: str = "channel") -> dict:
    """The ``quantization_config`` of a checkpoint written from ``quantize_experts_fp8``: transformers' fine-grained
    FP8 method name, ``weight_block_size`` [128, 128] for block scales (None: per channel), and the experts as the
    only converted modules (``layers.experts_format_of`` reads it; ``integrations.from_pretrained`` loads it
    without transformers' FP8 quantizer)."""
    granularity = _check_granularity(granularity)
    return {"quant_method": "fp8", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK] if granularity == "block" else None,
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                       "lm_head"]}
