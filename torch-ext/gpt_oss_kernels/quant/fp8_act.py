"""Per-token FP8 activations: ``pad_quant_fp8`` and the fused ``rms_norm_quant_fp8`` (norm + pad + quant).

Both are ops of the C++ schema (torch-ext/torch_binding.cpp), implemented in C++ in both variants: CPU
kernel_src/fp8/fp8_cpu.cpp (e4m3 emulated with c10::Float8_e4m3fn), CUDA kernel_src/fp8/fp8_act_cuda.cu; the fake
implementations for torch.compile are here. The math (quant/fp8.py, "Activations"): per-row fp32 scale
``max(amax / 448, 2^-126)``, ``q = e4m3(clamp(x * (1 / scale), -448, 448))``, columns H..h_pad-1 zero; a row with a
NaN or an Inf gets scale NaN and q NaN (only that token's output turns NaN downstream).
"""

from __future__ import annotations

import torch

from .. import _checks
from .._ops import add_op_namespace_prefix, ops


def _check_h_pad(x: torch.Tensor, h_pad: object) -> int:
    return _checks.integer("h_pad", h_pad, minimum=x.shape[1])


def pad_quant_fp8(x: torch.Tensor, h_pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (T, H) fp16/bf16/fp32 -> ``(q (T, h_pad) float8_e4m3fn, zero past H; scale (T,) float32)`` with
    ``x[t, :H] ~= float(q[t, :H]) * scale[t]``. ``h_pad`` >= H (default H): the row length the consumer needs."""
    _checks.tensor("x", x, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    h_pad = _check_h_pad(x, x.shape[1] if h_pad is None else h_pad)
    return ops.pad_quant_fp8(x.contiguous(), h_pad)


def rms_norm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, h_pad: int | None = None,
                       residual: torch.Tensor | None = None, *, write_normed: bool = False) -> tuple:
    """RMSNorm of ``x`` (T, H) (of ``x + residual`` when given, rounded to x's dtype as ``fused_add_rms_norm``),
    rounded to x's dtype as ``rms_norm`` returns it, then ``pad_quant_fp8`` of those rows, reading x (and the
    residual) once. Returns ``(q, scale)``, then the normed rows (T, H) in x's dtype if ``write_normed`` (the
    router's input), then the new residual (T, H) if ``residual`` was given."""
    _checks.tensor("x", x, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=1)
    _checks.shape("weight", weight, (x.shape[1],))
    _checks.same_device("x", x, weight=weight)
    eps = _checks.number("eps", eps, minimum=0.0)
    h_pad = _check_h_pad(x, x.shape[1] if h_pad is None else h_pad)
    if type(write_normed) is not bool:
        raise TypeError(f"write_normed must be a bool, got {type(write_normed).__name__}")
    if residual is not None:
        _checks.tensor("residual", residual)
        _checks.shape("residual", residual, tuple(x.shape))
        _checks.same_dtype("x", x, residual=residual)
        _checks.same_device("x", x, residual=residual)
        residual = residual.contiguous()
    q, scale, normed, res_out = ops.rms_norm_quant_fp8(x.contiguous(), weight.contiguous(), eps, h_pad, residual,
                                                       write_normed)
    return (q, scale) + ((normed,) if write_normed else ()) + ((res_out,) if residual is not None else ())


@torch.library.register_fake(add_op_namespace_prefix("pad_quant_fp8"))
def _pad_quant_fp8_fake(x, h_pad):
    return (x.new_empty((x.shape[0], h_pad), dtype=torch.float8_e4m3fn),
            x.new_empty((x.shape[0],), dtype=torch.float32))


@torch.library.register_fake(add_op_namespace_prefix("rms_norm_quant_fp8"))
def _rms_norm_quant_fp8_fake(x, weight, eps, h_pad, residual=None, write_normed=False):
    t, h = x.shape
    return (x.new_empty((t, h_pad), dtype=torch.float8_e4m3fn), x.new_empty((t,), dtype=torch.float32),
            x.new_empty((t if write_normed else 0, h)), x.new_empty((t if residual is not None else 0, h)))
