"""GPT-OSS rotary position embedding (YaRN cos/sin computed by the model): the hub function
``rotary_pos_emb`` with transformers' signature, as one native op (kernel_src/attention/rotary_cuda.cu:
q and k in one launch; rotary_cpu.cpp on the CPU)."""

from __future__ import annotations

import torch

from .. import _checks
from .._ops import add_op_namespace_prefix, ops


def _head_dim_pos(unsqueeze_dim: int) -> int:
    return unsqueeze_dim + 4 if unsqueeze_dim < 0 else unsqueeze_dim


@torch.library.register_fake(add_op_namespace_prefix("rotary_pos_emb"))
def _rotary_fake(q, k, cos, sin, unsqueeze_dim):
    return torch.empty_like(q), torch.empty_like(k)


def rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q_embed, k_embed)``: ``x * cos + rotate_half(x) * sin`` with GPT-OSS's halves convention
    (``[x1 cos - x2 sin, x2 cos + x1 sin]``), cos/sin half-dim ``(B or 1, S, D/2)`` broadcast over
    the heads at ``unsqueeze_dim`` (1: ``(B, H, S, D)``; 2: ``(B, S, H, D)``). fp32 arithmetic, output
    in q's / k's dtype. Any strides with a contiguous last dimension."""
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
    if k.dtype != q.dtype:  # the op takes one dtype for q and k: one call each, beside a zero-head partner
        return (rotary_pos_emb(q, q.narrow(hd, 0, 0), cos, sin, unsqueeze_dim)[0],
                rotary_pos_emb(k.narrow(hd, 0, 0), k, cos, sin, unsqueeze_dim)[1])
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    if cos.dtype not in (torch.float32, q.dtype) or sin.dtype != cos.dtype:
        cos, sin = cos.float(), sin.float()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    return ops.rotary_pos_emb(q, k, cos, sin, ud)
