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
