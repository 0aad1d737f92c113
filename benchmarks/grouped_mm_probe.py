#!/usr/bin/env python3
"""MoE probe (device run, no build): our two Triton grouped GEMMs against torch._grouped_mm (PyTorch's
CUTLASS grouped GEMM on sm_90) on the same routing, gpt-oss-20b shapes, bf16, T = 4096 and 16384.

What it answers: how far our GEMMs (with their gather, bias, SwiGLU / routing-weight epilogues) are from a
vendor grouped GEMM doing only the matmuls (rows pre-gathered, no padding, no epilogue), and from one dense
cuBLAS matmul of the same total rows, timed the same way: each op alone in a CUDA graph, median of
replays, then the SM clock and power while the graph replays (harness._sample_gpu_state), two rounds.

    python benchmarks/grouped_mm_probe.py --out DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from sweep_moe_v4 import probe_args, random_experts, routed_case  # noqa: E402

E, H, I2, K_TOP = 32, 2880, 5760, 4


def timed(fn) -> dict:
    us = harness.median_us_graph(fn, replays=40, gpu_state=True)
    return {"us": round(us, 1), **harness.LAST_GPU_STATE}


def main():
    args, gg = probe_args()
    dev = torch.device("cuda")
    w1, b1, w2, b2 = random_experts(E, H, I2)
    w1_cm = w1.transpose(1, 2).contiguous().transpose(1, 2)  # (E, K, N) with K contiguous
    w2_cm = w2.transpose(1, 2).contiguous().transpose(1, 2)
    rows = []
    for t in (4096, 16384):
        m = t * K_TOP
        block_m, mb, hidden, wts, sorted_pos, block_expert, act, y = routed_case(gg, t, E, K_TOP, H, I2)
        groups = gg.block_groups(block_expert, block_m)
        # the same routing, unpadded and pre-gathered, for torch._grouped_mm
        real = sorted_pos[sorted_pos >= 0].long()
        a1 = hidden[real // K_TOP].contiguous()
        row_expert = block_expert.repeat_interleave(block_m)[sorted_pos >= 0].long()  # expert of each real row
        offs = torch.bincount(row_expert, minlength=E).cumsum(0).to(torch.int32)  # group ends, as _grouped_mm wants
        a2 = torch.randn(m, I2 // 2, device=dev, dtype=torch.bfloat16)
        flops1, flops2 = 2 * m * H * I2, 2 * m * (I2 // 2) * H
        cases = {
            "ours GEMM 1 (gather, bias, SwiGLU)": (lambda: gg.gemm1_swiglu(
                hidden, w1, b1, act, sorted_pos, block_expert, K_TOP, 1.702, 7.0, block_m, mb, groups), flops1),
            "ours GEMM 2 (bias, routing weight, scatter)": (lambda: gg.gemm2_weighted(
                act, w2, b2, wts, y, sorted_pos, block_expert, block_m, mb, groups), flops2),
        }
        for name, b1_, b2_ in (("torch._grouped_mm, weights as stored", w1, w2),
                               ("torch._grouped_mm, weights K-contiguous", w1_cm, w2_cm)):
            try:
                torch._grouped_mm(a1, b1_, offs=offs)
                cases[f"{name}: GEMM 1 shape"] = (lambda b=b1_: torch._grouped_mm(a1, b, offs=offs), flops1)
                cases[f"{name}: GEMM 2 shape"] = (lambda b=b2_: torch._grouped_mm(a2, b, offs=offs), flops2)
            except Exception as ex:  # noqa: BLE001
                rows.append({"T": t, "case": name, "error": repr(ex)[:300]})
                print(t, name, "failed:", repr(ex)[:300], flush=True)
        cases["cuBLAS dense, GEMM 1 shape (one weight)"] = (lambda: a1 @ w1[0], flops1)
        cases["cuBLAS dense, GEMM 2 shape (one weight)"] = (lambda: a2 @ w2[0], flops2)
        for rnd in range(2):
            for name, (fn, flops) in cases.items():
                r = timed(fn)
                r.update(T=t, case=name, round=rnd, TFLOPs=round(flops / r["us"] / 1e6, 1),
                         blocks=int((block_expert >= 0).sum()), block_m=block_m)
                rows.append(r)
                print(r, flush=True)
        del hidden, act, y, a1, a2
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grouped_mm_probe.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows},
                                                          indent=1))


if __name__ == "__main__":
    main()
