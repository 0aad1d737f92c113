#!/usr/bin/env python3
"""Where the MoE block's time goes (device run): host time per call, the Python hot spots at T=1,
per-kernel CUDA time at a few T, and the autotuner's choices.

    python benchmarks/profile_moe.py [--tokens 1 1024 4096 16384]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import load_kernel, median_us  # noqa: E402
from harness_moe import H, _mlp  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="*", default=[1, 1024, 4096, 16384])
    args = ap.parse_args()
    kernel = load_kernel()
    mlp = _mlp()
    fwd = kernel.layers.MoeMLP.forward
    with torch.inference_mode():
        for T in args.tokens:
            x = torch.randn(1, T, H, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                fwd(mlp, x)
            torch.cuda.synchronize()
            n = 200 if T <= 64 else 20
            t0 = time.perf_counter()
            for _ in range(n):
                fwd(mlp, x)
            host_us = (time.perf_counter() - t0) / n * 1e6
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - t0) / n * 1e6
            print(f"T={T}: host enqueue {host_us:.1f} us/call, wall {wall_us:.1f} us/call, "
                  f"do_bench {median_us(lambda: fwd(mlp, x)):.1f} us", flush=True)
            if T <= 4:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(200):
                    fwd(mlp, x)
                pr.disable()
                s = io.StringIO()
                pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
                print(s.getvalue()[-4500:], flush=True)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fwd(mlp, x)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60),
                  flush=True)
    gg = sys.modules.get(kernel.__name__ + ".moe.grouped_gemm")
    if gg is not None:
        for bm in (16, 32, 64, 128):
            for first in (True, False):
                try:
                    tuner = gg._autotuned(bm, first)
                except Exception:
                    continue
                for k, cfg in getattr(tuner, "cache", {}).items():
                    print(f"autotune BLOCK_M={bm} {'gemm1' if first else 'gemm2'} key={k}: {cfg}", flush=True)


if __name__ == "__main__":
    main()
