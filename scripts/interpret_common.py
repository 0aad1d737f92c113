"""What the Triton-interpreter checks (scripts/*_interpret_check.py, run with TRITON_INTERPRET=1 on the CPU) share:
loading modules of the package straight from torch-ext (no build: the compiled ops are absent, so only the Triton
paths run), the GPU's float conversions in place of the interpreter's, and moe_dispatch's layout in Python.

Triton 3.6's interpreter truncates fp32 -> bf16 and fp32 -> e4m3 (the GPU rounds to nearest even; e4m3 saturating,
cvt.rn.satfinite), flushes bf16 subnormals, turns NaN into a finite e4m3 code, and computes bf16 tl.dot on the raw
uint16 bits. ``gpu_conversions()`` makes it convert through torch (round to nearest even, subnormals and NaN kept)
and compute bf16 / e4m3 dot operands in fp32, where their products are exact. Needs numpy < 2.3.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "torch-ext" / "gpt_oss_kernels"


_NAME = "gok_interpret"  # the package's modules load under this name, so their relative imports resolve


def _package() -> None:
    """The package and its subpackages as empty modules (their __init__ files would import the compiled ops), and
    ``_ops.ops`` without any op (code that checks for a compiled op takes its Triton path)."""
    if _NAME in sys.modules:
        return
    for sub in ("", "moe", "quant", "attention"):
        mod = types.ModuleType(f"{_NAME}.{sub}" if sub else _NAME)
        mod.__path__ = [str(PKG / sub)]
        sys.modules[mod.__name__] = mod
    ops = types.ModuleType(f"{_NAME}._ops")
    ops.ops = types.SimpleNamespace()
    sys.modules[ops.__name__] = ops


def load(relpath: str):
    """One module of the package by its path below torch-ext/gpt_oss_kernels, e.g. ``load("quant/mxfp4.py")``."""
    _package()
    name = f"{_NAME}.{relpath.removesuffix('.py').replace('/', '.')}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PKG / relpath)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def gpu_conversions() -> None:
    """Patches the interpreter (once per process): fp32 / bf16 / e4m3 conversions and dot operands as above."""
    import triton.language as tl
    from triton.runtime import interpreter as interp

    if getattr(interp, "_gok_patched", False):
        return
    torch_dtype = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float8e4nv: torch.float8_e4m3fn}
    np_bits = {tl.float32: np.float32, tl.bfloat16: np.uint16, tl.float8e4nv: np.uint8}
    original = interp._convert_float

    def convert_float(data, src, dst, rounding_mode):
        if src in torch_dtype and dst in torch_dtype and src != dst:
            raw = torch.from_numpy(np.ascontiguousarray(data).view(np_bits[src]).copy())
            out = (raw.view(torch_dtype[src]) if src != tl.float32 else raw).to(torch_dtype[dst])
            if dst != tl.float32:
                out = out.view(torch.uint8 if dst == tl.float8e4nv else torch.int16)
            return out.numpy().view(np_bits[dst]).reshape(data.shape)
        return original(data, src, dst, rounding_mode)

    create_dot = interp.InterpreterBuilder.create_dot

    def create_dot_f32(self, a, b, d, input_precision, max_num_imprecise_acc):
        def f32(h):
            if h.dtype.scalar in (tl.bfloat16, tl.float8e4nv):
                return interp.TensorHandle(convert_float(h.data, h.dtype.scalar, tl.float32, None), tl.float32)
            return h
        return create_dot(self, f32(a), f32(b), d, input_precision, max_num_imprecise_acc)

    interp._convert_float = convert_float
    interp.InterpreterBuilder.create_dot = create_dot_f32
    interp._gok_patched = True


def dispatch(ids: torch.Tensor, e: int, block_m: int):
    """moe_dispatch's layout in Python: (sorted_pos, block_expert)."""
    flat = ids.flatten().long()
    m = flat.numel()
    nb = (m + min(e, m) * (block_m - 1)) // block_m
    sp = torch.full((nb * block_m,), -1, dtype=torch.int32)
    be = torch.full((nb,), -1, dtype=torch.int32)
    row = 0
    for x in range(e):
        slots = torch.nonzero(flat == x).flatten()
        if slots.numel() == 0:
            continue
        blocks = -(-slots.numel() // block_m)
        be[row // block_m: row // block_m + blocks] = x
        sp[row: row + slots.numel()] = slots.int()
        row += blocks * block_m
    return sp, be
