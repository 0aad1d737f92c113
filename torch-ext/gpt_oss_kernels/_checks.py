"""Argument validation shared by every public op.

Every check runs on shapes, dtypes and devices only (never on values), before any kernel is
launched, so it costs no device synchronisation and traces cleanly under torch.compile.
Errors name the argument and what it was.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def tensor(
    name: str,
    t: object,
    *,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    ndim: Optional[int] = None,
    min_ndim: Optional[int] = None,
) -> torch.Tensor:
    """Checks that `t` is a tensor with an allowed dtype and rank; returns it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d) for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({allowed}), got {_describe(t)}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {_describe(t)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got {_describe(t)}")
    return t


def shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    """`expected` may hold None for a free dimension."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}, got {_describe(t)}")


def optional(name: str, t: Optional[torch.Tensor], expected: tuple, *,
             dtypes: Iterable[torch.dtype] = FLOAT_DTYPES) -> None:
    """An optional tensor (None passes): an allowed dtype and the `expected` shape."""
    if t is not None:
        tensor(name, t, dtypes=dtypes)
        shape(name, t, expected)


def same_dtype(ref_name: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {_describe(t)}")


def same_device(ref_name: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} must be on {ref_name}'s device ({ref.device}), got {_describe(t)}")


def number(name: str, value: object, *, minimum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


def integer(name: str, value: object, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return value
