#!/usr/bin/env python3
"""Probe (issue 15): why does the MXFP4 decode GEMM stream at 0.9-1.3 TB/s (H100, T = 1)? Runs the whole MXFP4
block (router included) at gpt-oss-20b shapes for the given T, rotating input sets, so that `ncu` can profile the
calls between cudaProfilerStart / Stop:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
        python probes/decode_gemm_profile.py --tokens 1 4 64

Without ncu (--time) it prints the CUDA-graph median of the block per GOK_DECODE_GEMM_CFG pair. Delete once
answered (git keeps it).
"""
import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402

H = I = 2880
E, K = 32, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 64])
    ap.add_argument("--time", action="store_true", help="CUDA-graph medians per decode GEMM pair, no profiler")
    ap.add_argument("--pairs", nargs="*", default=["4,3", "4,0", "8,0"])
    args = ap.parse_args()
    kernel = harness.load_kernel()
    mx = sys.modules[kernel.__name__ + ".moe.mxfp4"]
    g = torch.Generator(device="cuda").manual_seed(0)
    packed = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        packed[name + "_blocks"], packed[name + "_scales"] = kernel.quantize_mxfp4(w)
        del w
        packed[name + "_bias"] = (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    router_w = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    router_b = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    wargs = [packed[n] for n in ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales",
                                 "down_bias")]
    with torch.inference_mode():
        for T in args.tokens:
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(8)]
            calls = [lambda x=x: mx.moe_with_scores_mxfp4(x, router_w, router_b, K, *wargs, 1.702, 7.0)[0] for x in xs]
            if args.time:
                for pair in args.pairs:
                    os.environ["GOK_DECODE_GEMM_CFG"] = pair
                    us = harness.median_us_graph(calls, replays=40)
                    print(f"T={T} pair={pair} block_us={us:.2f}", flush=True)
                continue
            for pair in args.pairs:  # one call per pair between cudaProfilerStart / Stop (ncu's launch order)
                os.environ["GOK_DECODE_GEMM_CFG"] = pair
                for c in calls:
                    c()
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStart()
                calls[0]()
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStop()
                print(f"T={T} pair={pair} profiled one call", flush=True)


if __name__ == "__main__":
    main()
