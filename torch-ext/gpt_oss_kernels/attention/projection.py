"""The attention projections: ``multi_linear(x, weights, biases)`` applies one to three linear layers to the same
input, as one kernel launch at decode sizes (kernel_src/attention/projection_cuda.cu: q, k and v of a decode step
read their weights once, in one pass; cuBLAS runs them as three split-K GEMVs plus reductions) and as torch's
``F.linear`` everywhere else."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _checks
from .._ops import add_op_namespace_prefix, ops

MAX_KERNEL_ROWS = 16  # the kernel's m16 side of mma.m16n8k16 holds the tokens
KERNEL = True  # knob: False sends every call to torch's linear (benchmarks/e2e_decode.py --torch-projections)
MAX_WEIGHTS = 3


_HAS_KERNEL = hasattr(ops, "multi_linear")  # the CUDA variant's op (the CPU variant runs torch's linear)
if _HAS_KERNEL:

    @torch.library.register_fake(add_op_namespace_prefix("multi_linear"))
    def _multi_linear_fake(x, weights, biases):
        return x.new_empty((x.shape[0], sum(w.shape[0] for w in weights)))


def _kernel_applies(x2: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]]) -> bool:
    """Shapes, dtypes, strides and autograd only: this runs under torch.compile's tracing too (no data pointers or
    storage offsets; the op itself sends what its 16-byte loads cannot read to ATen's linear)."""
    if not (KERNEL and _HAS_KERNEL and x2.is_cuda and x2.dtype in (torch.bfloat16, torch.float16)
            and x2.shape[0] <= MAX_KERNEL_ROWS and x2.stride(1) == 1):
        return False
    if torch.is_grad_enabled() and (x2.requires_grad or any(t is not None and t.requires_grad
                                                              for t in (*weights, *biases))):
        return False  # the kernel has no backward: torch's linear keeps autograd working
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return False
    for t in (*weights, *(b for b in biases if b is not None)):
        if t.dtype != x2.dtype or not t.is_contiguous():
            return False
    return all(w.shape[0] > 0 for w in weights)


def multi_linear(x: torch.Tensor, weights: Sequence[torch.Tensor],
                 biases: Optional[Sequence[Optional[torch.Tensor]]] = None) -> tuple[torch.Tensor, ...]:
    """``tuple(F.linear(x, w, b) for w, b in zip(weights, biases))`` for one to three weights ``w (N_i, K)`` (biases
    ``(N_i,)`` or None) on the same ``x (..., K)``.

    On CUDA, with at most 16 rows of ``x`` (all dimensions but the last), bfloat16 / float16, all biases given or
    none, and no autograd recording: one kernel launch (fp32 accumulation, the bias added in fp32,
    one rounding) writes the outputs side by side into one ``(..., sum N_i)`` buffer and returns its column slices
    (views with that row stride). Otherwise torch's linear, one call per weight (the same values up to the order of
    the fp32 sums)."""
    _checks.tensor("x", x, dtypes=_checks.FLOAT_DTYPES, min_ndim=1)
    if not isinstance(weights, (list, tuple)) or not 1 <= len(weights) <= MAX_WEIGHTS:
        raise ValueError(f"weights must be a list or tuple of 1 to {MAX_WEIGHTS} tensors, got {weights!r:.200}")
    biases = [None] * len(weights) if biases is None else list(biases)
    if len(biases) != len(weights):
        raise ValueError(f"biases must have one entry (tensor or None) per weight: {len(weights)} weights, "
                         f"{len(biases)} biases")
    k = x.shape[-1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        _checks.tensor(f"weights[{i}]", w, dtypes=_checks.FLOAT_DTYPES, ndim=2)
        if w.shape[1] != k:
            raise ValueError(f"weights[{i}] must have shape (N, {k}) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(w.shape)}")
        _checks.same_device("x", x, **{f"weights[{i}]": w})
        if b is not None:
            _checks.tensor(f"biases[{i}]", b, dtypes=_checks.FLOAT_DTYPES, ndim=1)
            if b.shape[0] != w.shape[0]:
                raise ValueError(f"biases[{i}] must have shape ({w.shape[0]},), got {tuple(b.shape)}")
            _checks.same_device("x", x, **{f"biases[{i}]": b})
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if not _kernel_applies(x2, weights, biases):
        return tuple(F.linear(x, w, b) for w, b in zip(weights, biases))
    bias_list = [] if biases[0] is None else list(biases)
    out = ops.multi_linear(x2, list(weights), bias_list)
    parts = out.split([w.shape[0] for w in weights], dim=1)
    return tuple(p.reshape(*lead, p.shape[1]) for p in parts)  # views: only the row dimension splits
