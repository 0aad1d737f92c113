#!/usr/bin/env python3
"""The FP8 Triton kernels under TRITON_INTERPRET=1 (CPU, no GPU) against the reference math: finalize_slice
(quant/fp8_triton.py; pad_quant_fp8 / rms_norm_quant_fp8 are CUDA C++ now, kernel_src/fp8/fp8_act_cuda.cu, checked by
tests/test_fp8.py on the GPU), and the grouped GEMMs' W_FORMAT "fp8" / "fp8_block"
branches (moe/grouped_gemm.py: e4m3 tokens gathered from the pad_quant buffer, per-row and per-channel scales in
the epilogue, 128x128 block scales per K step) for the tile families the host code picks (decode BLOCK_M 16,
64-row, 128-row with split tiles and expert groups; BLOCK_K 64 and 128), K and N not multiples of the tiles,
all tokens on one expert, NaN / Inf / huge rows.

Triton 3.6's interpreter truncates fp32 -> e4m3 (the GPU rounds to nearest even, saturating: cvt.rn.satfinite)
and turns NaN into a finite code, truncates fp32 -> bf16 and flushes bf16 subnormals; this script makes the
interpreter convert as the GPU does and compute fp8 / bf16 dot operands in fp32 (their products are exact there).
Needs numpy < 2.3 (see scripts/moe_mxfp4_interpret_check.py).

    TRITON_INTERPRET=1 python scripts/fp8_interpret_check.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter as _interp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "torch-ext" / "gpt_oss_kernels"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gg = _load("grouped_gemm", PKG / "moe" / "grouped_gemm.py")
ft = _load("fp8_triton", PKG / "quant" / "fp8_triton.py")
f8 = _load("fp8", PKG / "quant" / "fp8.py")
ref = _load("reference", PKG / "reference.py")

_convert = _interp._convert_float
_TORCH = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float8e4nv: torch.float8_e4m3fn}
_NP_BITS = {tl.float32: np.float32, tl.bfloat16: np.uint16, tl.float8e4nv: np.uint8}


def _convert_float(data, src, dst, rounding_mode):
    """fp32 / bf16 / e4m3 conversions as the GPU does them (through torch: RNE, subnormals kept, NaN kept)."""
    if src in _TORCH and dst in _TORCH and src != dst:
        raw = torch.from_numpy(np.ascontiguousarray(data).view(_NP_BITS[src]).copy())
        t = raw.view(_TORCH[src]) if src != tl.float32 else raw
        out = t.to(_TORCH[dst])
        return (out.numpy() if dst == tl.float32 else out.view(torch.uint8 if dst == tl.float8e4nv else torch.int16)
                .numpy().view(_NP_BITS[dst])).reshape(data.shape)
    return _convert(data, src, dst, rounding_mode)


_interp._convert_float = _convert_float
_dot = _interp.InterpreterBuilder.create_dot


def _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    def f32(h):
        if h.dtype.scalar in (tl.bfloat16, tl.float8e4nv):
            return _interp.TensorHandle(_convert_float(h.data, h.dtype.scalar, tl.float32, None), tl.float32)
        return h
    return _dot(self, f32(a), f32(b), d, input_precision, max_num_imprecise_acc)


_interp.InterpreterBuilder.create_dot = _create_dot

ALPHA, LIMIT = 1.702, 7.0
failed = []


def report(tag, ok, detail=""):
    print(f"{'ok ' if ok else 'BAD'} {tag} {detail}", flush=True)
    if not ok:
        failed.append(tag)


def rel(out, exp):
    out, exp = out.double(), exp.double()
    fin = torch.isfinite(exp)
    if not fin.any():
        return 0.0
    if not torch.equal(torch.isnan(out), torch.isnan(exp)):
        return float("inf")
    return ((out[fin] - exp[fin]).abs().max() / exp[fin].abs().max().clamp_min(1e-30)).item()


# --- finalize_slice -------------------------------------------------------------------------------------------
for t, k, h, h_pad in ((3, 4, 100, 128), (9, 2, 2880, 2880), (1, 1, 40, 48)):
    y = torch.randn(t * k, h_pad).to(torch.bfloat16)
    ids = torch.randint(0, 6, (t, k), dtype=torch.int32)
    ids[0, 0] = 6  # foreign
    wts = torch.rand(t, k)
    for weights in (None, wts):
        for skip in (False, True):
            out = ft.finalize_slice(y, ids, weights, 6, h, skip)
            yy = y.clone().float()
            yy.view(t, k, h_pad)[0, 0] = 0.0 if skip else float("nan")
            exp = ref.finalize_slice(yy, ids, weights, h)
            report(f"finalize_slice T={t} k={k} h={h} weights={weights is not None} skip={skip}",
                   rel(out, exp) <= 1e-2, f"{rel(out, exp):.1e}")


# --- grouped GEMMs ---------------------------------------------------------------------------------------------
def dispatch(ids, e, block_m):
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


def launch(first, cfg, a, w, ws, a_s, bias, out, sp, be, topk_w, n, k, top_k, block_m):
    groups = gg.block_groups(be, block_m) if cfg.group_m == 0 else None
    gp = groups if groups is not None else be
    dst = gg._splitk_workspace(cfg, out, be.shape[0], block_m, n)
    if cfg.split_k > 1:
        dst.fill_(float("nan"))  # only the real rows may be read back
    args = gg._args(first, cfg, a, w, bias, dst, sp, be, gp, topk_w, n, k, be.shape[0], top_k, ALPHA, LIMIT, 1,
                    block_m, ws, a_s)
    grid = be.shape[0] * triton.cdiv(n, cfg.bn) * cfg.split_k
    gg._moe_gemm_kernel[(grid,)](*args, num_warps=cfg.warps, num_stages=2)
    gg._splitk_finish(cfg, first, dst, bias, out, sp, be, topk_w, n, be.shape[0], ALPHA, LIMIT, block_m)


def gemm_case(T, H, I, E, top_k, granularity, cfg1, cfg2, block_m, *, skew=False, poison=False):
    g = torch.Generator().manual_seed(T * 7 + H + I + E)
    w1 = torch.randn(E, H, 2 * I, generator=g) * 2 * H**-0.5
    w2 = torch.randn(E, I, H, generator=g) * I**-0.5
    q1, s1 = f8.quantize_fp8(w1, granularity)
    q2, s2 = f8.quantize_fp8(w2, granularity)
    b1 = (0.1 * torch.randn(E, 2 * I, generator=g)).to(torch.bfloat16)
    b2 = (0.1 * torch.randn(E, H, generator=g)).to(torch.bfloat16)
    x = torch.randn(T, H, generator=g).to(torch.bfloat16)
    if poison and T > 3:
        x[1, 5] = float("nan")
        x[2, 7] = float("inf")
        x[3] *= 1e30
    h_pad = -(-H // 16) * 16 + 16  # a padded row (stride) the GEMM must respect
    xq, xs = f8.quantize_rows(x, h_pad)
    logits = torch.randn(T, E, generator=g)
    if skew:
        logits[:, 1] += 100.0
    top = torch.topk(logits, top_k)
    w, ids = torch.softmax(top.values, -1), top.indices.int()
    sp, be = dispatch(ids, E, block_m)
    act = torch.full((be.shape[0] * block_m, I), float("nan"), dtype=torch.bfloat16)
    launch(True, cfg1, xq, q1, s1, xs, b1, act, sp, be, sp, 2 * I, H, top_k, block_m)
    W1 = f8.dequantize_fp8(q1, s1, torch.float64)
    W2 = f8.dequantize_fp8(q2, s2, torch.float64)
    rows = torch.nonzero(sp >= 0).flatten()
    slot = sp[rows].long()
    tok, e_of = slot // top_k, ids.flatten().long()[slot]
    xd = ref.dequant_rows_fp8(xq, xs, H)
    gu = torch.einsum("rh,rhn->rn", xd[tok], W1[e_of]) + b1.double()[e_of]
    tag = f"T={T} H={H} I={I} E={E} k={top_k} {granularity} bm={block_m} bk={cfg1.bk}/{cfg2.bk} skew={skew} nan={poison}"
    r = rel(act[rows], ref.moe_swiglu(gu, ALPHA, LIMIT))
    report("GEMM1 " + tag, r <= 1e-2, f"{r:.1e}")
    aq, a_s = f8.quantize_rows(act, I)
    y = torch.full((T * top_k, H + 16), float("nan"), dtype=torch.bfloat16)  # padded y: columns >= H unwritten
    wf = w.flatten().float().contiguous()
    launch(False, cfg2, aq, q2, s2, a_s, b2, y, sp, be, wf, H, I, 1, block_m)
    o = (torch.einsum("ri,rih->rh", ref.dequant_rows_fp8(aq[rows], a_s[rows], I), W2[e_of]) + b2.double()[e_of])
    o = o * wf.double()[slot, None]
    r = rel(y[slot, :H], o)
    report("GEMM2 " + tag, r <= 1e-2 and bool(torch.isnan(y[:, H:].float()).all()), f"{r:.1e}")


C = gg.Cfg
dec1, dec2 = gg.candidates(16, True, False, "fp8")[0], gg.candidates(16, False, False, "fp8")[0]
m64 = gg.candidates(64, True, False, "fp8")
big = [c._replace(w_tma=False, a_tma=False) for c in gg.candidates(128, True, True, "fp8")]
for gran in ("channel", "block"):
    gemm_case(1, 192, 96, 8, 4, gran, dec1, dec2, 16)
    gemm_case(5, 160, 96, 5, 3, gran, dec1, dec2, 16, poison=True)
    gemm_case(20, 136, 200, 4, 2, gran, C(32, 32, 4, 2, 64), C(32, 32, 4, 2, 64), 16, skew=True)
    # split K (decode tiles): the scales go into the partial sums, the epilogue kernel adds them
    gemm_case(3, 160, 96, 5, 3, gran, dec1._replace(split_k=2), dec2._replace(split_k=3), 16, poison=True)
    gemm_case(70, 96, 160, 3, 2, gran, m64[0], m64[-1], 64)
    gemm_case(300, 64, 160, 3, 2, gran, big[0], big[-1], 128, skew=True)
print("all ok" if not failed else f"{len(failed)} FAILED: {failed}")
sys.exit(1 if failed else 0)
