#!/usr/bin/env python3
"""The FP8 Triton kernels under TRITON_INTERPRET=1 (CPU, no GPU) against the reference math: finalize_slice
(quant/fp8_triton.py; pad_quant_fp8 / rms_norm_quant_fp8 are CUDA C++ now, kernel_src/fp8/fp8_act_cuda.cu, checked by
tests/test_fp8.py on the GPU), and the grouped GEMMs' W_FORMAT "fp8" / "fp8_block"
branches (moe/grouped_gemm.py: e4m3 tokens gathered from the pad_quant buffer, per-row and per-channel scales in
the epilogue, 128x128 block scales per K step) for the tile families the host code picks (decode BLOCK_M 16,
64-row, 128-row with split tiles and expert groups; BLOCK_K 64 and 128), K and N not multiples of the tiles,
all tokens on one expert, NaN / Inf / huge rows.

The interpreter converts floats as the GPU does and computes fp8 / bf16 dot operands in fp32 here
(scripts/interpret_common.py). Needs numpy < 2.3.

    TRITON_INTERPRET=1 python scripts/fp8_interpret_check.py
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
import torch  # noqa: E402
import triton  # noqa: E402
from interpret_common import dispatch, gpu_conversions, load  # noqa: E402

gpu_conversions()
gg = load("moe/grouped_gemm.py")
ft = load("quant/fp8_triton.py")
f8 = load("quant/fp8.py")
ref = load("reference.py")

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
