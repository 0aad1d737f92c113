#!/usr/bin/env python3
"""The MXFP4 branch of the MoE grouped GEMM (moe/grouped_gemm.py, W_FORMAT="mxfp4") under TRITON_INTERPRET=1
(CPU, no GPU) against float64 math on the exactly dequantized weights (quant/mxfp4.dequantize_mxfp4).

Drives `_moe_gemm_kernel` directly (the op's CUDA pipeline needs the CUDA dispatch/finalize ops), with a
Python dispatch of the same layout (per-expert padded row blocks), for every tile family the host code
picks: decode (BLOCK_M 16), 64-row and 128-row blocks (split tiles, narrow last tiles, expert groups).
Needs numpy < 2.3 (Triton 3.6's interpreter turns 1-element arrays into loop bounds). Cases: K and N not multiples of the tiles, all tokens on one expert, scale bytes 0 / 1 / 127 / 254 / 255,
T = 1, NaN / Inf activations, bf16 / fp16 / fp32 activations.

The kernel does no bf16 arithmetic outside tl.dot; the interpreter converts bf16 <-> fp32 as the GPU does (exact /
round to nearest even, subnormals kept) and computes bf16 dot operands in fp32 here (scripts/interpret_common.py).

    TRITON_INTERPRET=1 python scripts/moe_mxfp4_interpret_check.py
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
mx = load("quant/mxfp4.py")
ref = load("reference.py")

ALPHA, LIMIT = 1.702, 7.0
worst = 0.0


def launch(first, cfg, a, words, scales, bias, out, sp, be, topk_w, n, k, top_k, block_m):
    groups = None
    if cfg.group_m == 0:
        groups = gg.block_groups(be, block_m)
        assert groups is not None
    gp = groups if groups is not None else be
    dst = gg._splitk_workspace(cfg, out, be.shape[0], block_m, n)
    if cfg.split_k > 1:
        dst.fill_(float("nan"))  # only the real rows may be read back
    args = gg._args(first, cfg, a, words, bias, dst, sp, be, gp, topk_w, n, k, be.shape[0], top_k, ALPHA, LIMIT,
                    1, block_m, scales)
    grid = be.shape[0] * triton.cdiv(n, cfg.bn) * cfg.split_k
    gg._moe_gemm_kernel[(grid,)](*args, num_warps=cfg.warps, num_stages=2)
    gg._splitk_finish(cfg, first, dst, bias, out, sp, be, topk_w, n, be.shape[0], ALPHA, LIMIT, block_m)


def check(tag, out, expected, tol):
    global worst
    out, expected = out.double(), expected.double()
    fin = torch.isfinite(expected)
    same_nonfinite = torch.equal(torch.isnan(out), torch.isnan(expected)) and torch.equal(
        out[torch.isinf(expected)], expected[torch.isinf(expected)])
    denom = expected[fin].abs().max().clamp_min(1e-30) if fin.any() else torch.tensor(1.0, dtype=torch.float64)
    err = ((out[fin] - expected[fin]).abs().max() / denom).item() if fin.any() else 0.0
    ok = err <= tol and same_nonfinite and bool(torch.isfinite(out[fin]).all())
    worst = max(worst, err)
    print(f"{'ok ' if ok else 'BAD'} {err:.1e} {tag}", flush=True)
    if not ok:
        bad = (~torch.isclose(out, expected, rtol=tol, atol=tol * denom.item(), equal_nan=True)).nonzero()[:5]
        for idx in bad.tolist():
            print("   ", idx, out[tuple(idx)].item(), expected[tuple(idx)].item())
        sys.exit(1)


def case(T, H, I, E, top_k, dtype, cfg1, cfg2, block_m, *, scale_bytes=None, skew=False, poison_x=False, bias=True,
         x_scale=1.0, kw=False):
    # kw: the weights as kernel words (quant.mxfp4_kernel_words: uint32, bits permuted) instead of the checkpoint's
    g = torch.Generator().manual_seed(T * 131 + H + I + E)
    # random bytes with realistic scales (2^-7 .. 2^-4 for gate_up, so activations are O(1))
    b1 = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=g)
    b2 = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=g)
    s1 = torch.randint(118, 122, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g)
    s2 = torch.randint(118, 122, (E, H, I // 32), dtype=torch.uint8, generator=g)
    if scale_bytes == "subnormal":  # every gate_up scale 0 or 1 (2^-127, 2^-126): only exact subnormals survive
        s1.copy_(torch.randint(0, 2, s1.shape, generator=g).to(torch.uint8))
    elif scale_bytes is not None:  # the edge bytes on 30% of the blocks
        for t, sb in ((s1, scale_bytes), (s2, scale_bytes)):
            sel = torch.randint(0, len(sb), t.shape, generator=g)
            t.copy_(torch.where(torch.rand(t.shape, generator=g) < 0.3, torch.tensor(sb, dtype=torch.uint8)[sel], t))
    x = (torch.randn(T, H, generator=g) * x_scale).to(dtype)
    if poison_x and T > 2:
        x[1, 5] = float("nan")
        x[2, 7] = float("inf")
    bias1 = (0.1 * torch.randn(E, 2 * I, generator=g)).to(torch.bfloat16) if bias else None
    bias2 = (0.1 * torch.randn(E, H, generator=g)).to(torch.bfloat16) if bias else None
    logits = torch.randn(T, E, generator=g)
    if skew:
        logits[:, 1] += 100.0
    w, ids = torch.softmax(torch.topk(logits, top_k).values, -1), torch.topk(logits, top_k).indices.int()
    sp, be = dispatch(ids, E, block_m)
    words1, words2 = ((mx.mxfp4_kernel_words(b1), mx.mxfp4_kernel_words(b2)) if kw else
                      (gg.mxfp4_words(b1), gg.mxfp4_words(b2)))
    act = torch.full((be.shape[0] * block_m, I), float("nan"), dtype=dtype)
    launch(True, cfg1, x, words1, s1, bias1, act, sp, be, sp, 2 * I, H, top_k, block_m)
    # reference GEMM 1 on the rows that are real
    W1 = mx.dequantize_mxfp4(b1, s1, dtype).double()
    W2 = mx.dequantize_mxfp4(b2, s2, dtype).double()
    rows = torch.nonzero(sp >= 0).flatten()
    slot = sp[rows].long()
    tok, e_of = slot // top_k, ids.flatten().long()[slot]
    gu = torch.einsum("rh,rhn->rn", x[tok].double(), W1[e_of])
    if bias:
        gu = gu + bias1.double()[e_of]
    exp_act = ref.moe_swiglu(gu, ALPHA, LIMIT)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    tag = f"T={T} H={H} I={I} E={E} k={top_k} {str(dtype)[6:]} bm={block_m} cfg1={tuple(cfg1)} skew={skew} scales={scale_bytes} nan={poison_x} kw={kw}"
    check("GEMM1 " + tag, act[rows], exp_act, tol)
    # GEMM 2 from the kernel's own activations (so each GEMM is checked on its own)
    y = torch.full((T * top_k, H), float("nan"), dtype=dtype)
    wf = w.flatten().float().contiguous()
    launch(False, cfg2, act, words2, s2, bias2, y, sp, be, wf, H, I, 1, block_m)
    o = torch.einsum("ri,rih->rh", act[rows].double(), W2[e_of])
    if bias:
        o = o + bias2.double()[e_of]
    o = o * wf.double()[slot, None]
    check("GEMM2 " + tag, y[slot], o, tol)


torch.manual_seed(0)
C = gg.Cfg
dec1, dec2 = gg.candidates(16, True, False, "mxfp4")[0], gg.candidates(16, False, False, "mxfp4")[0]
m64 = gg.candidates(64, True, False)[0]
big = gg.candidates(128, True, True)[0]._replace(w_tma=False, a_tma=False)  # expert groups, split tiles
big8 = gg.candidates(128, True, False)[0]
small16 = C(32, 32, 4, 2, 64)
# decode tiles (BLOCK_M 16): 20b-like K with tails on N; odd shapes (K = 96: K tail of a 64-wide tile)
case(1, 192, 96, 8, 4, torch.bfloat16, dec1, dec2, 16)
case(3, 160, 96, 5, 3, torch.float16, dec1, dec2, 16, poison_x=True)
case(5, 96, 160, 6, 2, torch.float32, small16, small16, 16)
case(4, 128, 96, 4, 2, torch.bfloat16, dec1, dec2, 16, scale_bytes=(0, 1, 127, 254))
case(4, 128, 96, 4, 2, torch.float32, dec1, dec2, 16, scale_bytes=(0, 1, 2, 127, 254, 255))
case(4, 128, 96, 4, 2, torch.float16, dec1, dec2, 16, scale_bytes=(0, 1, 100, 127, 140, 254, 255))
# gate_up weights of 2^-128 .. 6 * 2^-126 (bf16 / fp32 subnormals and just above) against activations of ~2^120:
# a flush to zero anywhere would lose every product
case(3, 128, 64, 4, 2, torch.bfloat16, dec1, dec2, 16, scale_bytes="subnormal", x_scale=2.0**120)
case(3, 128, 64, 4, 2, torch.float32, dec1, dec2, 16, scale_bytes="subnormal", x_scale=2.0**120)
case(20, 128, 64, 4, 2, torch.bfloat16, dec1, dec2, 16, skew=True, bias=False)
# kernel words: the same cases' formats (every dtype, edge and subnormal scale bytes, each tile family)
case(1, 192, 96, 8, 4, torch.bfloat16, dec1, dec2, 16, kw=True)
case(3, 160, 96, 5, 3, torch.float16, dec1, dec2, 16, poison_x=True, kw=True)
case(4, 128, 96, 4, 2, torch.float32, dec1, dec2, 16, scale_bytes=(0, 1, 2, 127, 254, 255), kw=True)
case(4, 128, 96, 4, 2, torch.bfloat16, dec1, dec2, 16, scale_bytes=(0, 1, 127, 254), kw=True)
case(3, 128, 64, 4, 2, torch.bfloat16, dec1, dec2, 16, scale_bytes="subnormal", x_scale=2.0**120, kw=True)
case(70, 96, 160, 3, 2, torch.bfloat16, m64, m64, 64, kw=True)
case(300, 64, 160, 3, 2, torch.bfloat16, big, big, 128, skew=True, kw=True)
# split K (decode tiles: partial sums over K ranges, then the epilogue kernel); K = 96 / 160 with 32-wide K
# tiles: 3 or 5 tiles over 2 / 3 / 4 splits (uneven, and a split with no tile at all)
for sk in (2, 3, 4):
    c = C(64, 32, 4, 2, 64, split_k=sk)
    case(1, 192, 96, 8, 4, torch.bfloat16, c, c, 16)
    case(5, 96, 160, 6, 2, torch.float32, c, c, 16)
case(3, 160, 96, 5, 3, torch.float16, dec1._replace(split_k=2), dec2._replace(split_k=2), 16, poison_x=True)
case(4, 128, 96, 4, 2, torch.bfloat16, C(64, 32, 4, 2, 64, split_k=3), C(64, 32, 4, 2, 64, split_k=3), 16,
     scale_bytes=(0, 1, 2, 127, 254, 255))
# 64-row blocks
case(70, 96, 160, 3, 2, torch.bfloat16, m64, m64, 64)
# 128-row blocks: expert groups, half-height last block, narrow last column tile (N = 2I = 320 = 256 + 64)
case(300, 64, 160, 3, 2, torch.bfloat16, big, big, 128, skew=True)
case(140, 64, 160, 2, 1, torch.float16, big8, big8, 128)
# the prefill path's one-pass dequantization (dequantize_mxfp4_experts): bit for bit dequantize_mxfp4's values
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for e_, n_, k_ in ((3, 192, 96), (2, 70, 160)):
        blocks = torch.randint(0, 256, (e_, n_, k_ // 32, 16), dtype=torch.uint8)
        scales = torch.randint(0, 256, (e_, n_, k_ // 32), dtype=torch.uint8)
        scales[0, 0, :] = torch.tensor([0, 1, 254, 255, 127][: k_ // 32])
        want = mx.dequantize_mxfp4(blocks, scales, dtype)
        for words in (gg.mxfp4_words(blocks), mx.mxfp4_kernel_words(blocks)):
            got = gg.dequantize_mxfp4_experts(words, scales, dtype)
            assert got.shape == want.shape and torch.equal(got.view(-1).view(torch.uint8), want.view(-1).view(
                torch.uint8)), f"dequantize_mxfp4_experts {dtype} {(e_, n_, k_)} {words.dtype}"
print("dequantize_mxfp4_experts: bit for bit (checkpoint words and kernel words)")
print(f"all ok, worst rel. err {worst:.1e}")
