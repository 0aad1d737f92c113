"""RMSNorm and fused residual-add + RMSNorm (native ops: kernel_src/rmsnorm/)."""

from __future__ import annotations

import torch

from . import _checks
from ._ops import add_op_namespace_prefix, ops


_FLOAT = frozenset(_checks.FLOAT_DTYPES)


def _check(x: torch.Tensor, weight: torch.Tensor, eps: float) -> float:
    # Fast path for the common valid call (decode is host-bound: every microsecond shows).
    if (
        type(eps) is float and eps >= 0.0 and isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
        and x.dtype in _FLOAT and weight.dtype in _FLOAT and x.dim() >= 1 and weight.dim() == 1
        and weight.shape[0] == x.shape[-1] and weight.device == x.device
    ):
        return eps
    _checks.tensor("x", x, dtypes=_checks.FLOAT_DTYPES, min_ndim=1)
    _checks.tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=1)
    _checks.shape("weight", weight, (x.shape[-1],))
    _checks.same_device("x", x, weight=weight)
    return _checks.number("eps", eps, minimum=0.0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """GPT-OSS RMSNorm over the last dimension.

    ``(float(x) * rsqrt(mean(float(x)^2) + eps)) * float(weight)``, cast to ``x.dtype``.
    ``x``: any leading shape, fp16/bf16/fp32; ``weight``: ``(hidden,)``, fp32 or any float dtype.
    """
    eps = _check(x, weight, eps)
    return ops.rms_norm(x.contiguous(), weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual_out = x + residual`` (in x's dtype), then ``rms_norm(residual_out)``, in one pass.

    Returns ``(normed, residual_out)``; the inputs are not modified.
    """
    eps = _check(x, weight, eps)
    _checks.tensor("residual", residual)
    _checks.shape("residual", residual, tuple(x.shape))
    _checks.same_dtype("x", x, residual=residual)
    _checks.same_device("x", x, residual=residual)
    return ops.fused_add_rms_norm(x.contiguous(), residual.contiguous(), weight, eps)


@torch.library.register_fake(add_op_namespace_prefix("rms_norm"))
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x)


@torch.library.register_fake(add_op_namespace_prefix("fused_add_rms_norm"))
def _fused_add_rms_norm_fake(x, residual, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)
