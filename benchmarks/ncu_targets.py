#!/usr/bin/env python3
"""One launch of a kernel to put under Nsight Compute (no build: package files from torch-ext).

    ncu --kernel-name regex:_window_fwd --launch-skip 1 --launch-count 1 ... python3 benchmarks/ncu_targets.py window
    GOK_MOE_AUTOTUNE=0 ncu --kernel-name regex:_moe_gemm --launch-count 2 ... python3 benchmarks/ncu_targets.py moe
    ncu --profile-from-start off --metrics gpu__time_duration.sum python3 benchmarks/ncu_targets.py block 4096

window: `_window_fwd` with the shipped first configuration at S=8192, window 128, sinks, GPT-OSS heads
(launched twice: the first launch compiles). moe: GEMM 1 then GEMM 2 of the 128-row tiles at T=4096,
gpt-oss-20b shapes (the default tile, no autotune; expert groups unless GOK_MOE_EXPERT_GROUPS=0).
block T: every kernel of one call of the built package's ``moe`` (router to finalize) after three warm-up
calls, between cudaProfilerStart / Stop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import load_package_file  # noqa: E402


def window():
    ta = load_package_file("attention/_triton_attn.py")
    hq, hkv, d, s, w = 64, 8, 64, 8192, 128
    q = torch.randn(s, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(s, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(s, hkv, d, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    sinks = torch.randn(hq, device="cuda")
    cu = torch.tensor([0, s], dtype=torch.int32, device="cuda")
    cfg = ta._WINDOW_FWD_CONFIGS[0]
    ta.WINDOW_OVERRIDE = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    for _ in range(2):
        ta.attn_fwd(q, k, v, out, cu_q=cu, cu_k=cu, seqlens_k=None, block_table=None, sinks=sinks, batch=1,
                    seq_q_fixed=0, max_seqlen_q=s, max_seqlen_k=s, scale=0.125, window_left=w - 1, window_right=0)
    torch.cuda.synchronize()


def moe():
    from sweep_moe_v4 import torch_dispatch

    gg = load_package_file("moe/grouped_gemm.py")
    e, h, i2, top_k, t = 32, 2880, 5760, 4, 4096
    w1 = (torch.randn(e, h, i2, device="cuda") * 0.02).to(torch.bfloat16)
    b1 = torch.zeros(e, i2, device="cuda", dtype=torch.bfloat16)
    w2 = (torch.randn(e, i2 // 2, h, device="cuda") * 0.02).to(torch.bfloat16)
    b2 = torch.zeros(e, h, device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
    top = torch.randn(t, e, device="cuda").topk(top_k, dim=1)
    wts, ids = torch.softmax(top.values, dim=1).contiguous(), top.indices.to(torch.int32)
    block_m = gg.block_m_for(t * top_k, e)
    sorted_pos, block_expert = torch_dispatch(ids, e, block_m)
    act = torch.empty(sorted_pos.numel(), i2 // 2, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(t * top_k, h, device="cuda", dtype=torch.bfloat16)
    mb = (t * top_k).bit_length()
    groups = gg.block_groups(block_expert, block_m)  # None with GOK_MOE_EXPERT_GROUPS=0 (GROUP_M order)
    gg.gemm1_swiglu(hidden, w1, b1, act, sorted_pos, block_expert, top_k, 1.702, 7.0, block_m, mb, groups)
    gg.gemm2_weighted(act, w2, b2, wts, y, sorted_pos, block_expert, block_m, mb, groups)
    torch.cuda.synchronize()


def block():
    from harness import load_kernel

    pkg = load_kernel()
    t, e, h, i2 = int(sys.argv[2]), 32, 2880, 5760
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: (torch.randn(*s, device="cuda", generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
    args = (torch.randn(t, h, device="cuda", generator=g).to(torch.bfloat16), rnd(e, h), rnd(e), 4, rnd(e, h, i2),
            rnd(e, i2), rnd(e, i2 // 2, h), rnd(e, h))
    for _ in range(3):
        pkg.moe(*args)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    pkg.moe(*args)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    {"window": window, "moe": moe, "block": block}[sys.argv[1]]()
