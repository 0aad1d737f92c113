#!/usr/bin/env python3
"""MoE probe (device run, after a build): the whole block at one T timed again and again in one
process, to see the spread a target sits in. Each repetition draws new weights and a new input (so a
new routing), times the block as the harness does (CUDA-graph replay median of 40 replays, then the SM
clock and board power over 0.5 s of replays), and every other repetition first runs ~1 s of T=16384
blocks, so that half of them start from a hot, power-limited part.

    python benchmarks/moe_repeat.py --out DIR [--tokens 4096] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
from harness import load_kernel, median_us_graph  # noqa: E402
from harness_moe import H, TARGET_US, _mlp  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    kernel = load_kernel()
    fwd = kernel.layers.MoeMLP.forward
    rows = []
    with torch.inference_mode():
        hot = torch.randn(1, 16384, H, device="cuda", dtype=torch.bfloat16)
        mlp = _mlp()
        for rep in range(args.reps):
            for p in mlp.parameters():  # new router and expert weights
                p.normal_(0.0, 0.02)
            x = torch.randn(1, args.tokens, H, device="cuda", dtype=torch.bfloat16)
            heated = rep % 2 == 1
            if heated:
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 1.0:
                    fwd(mlp, hot)
                    torch.cuda.synchronize()
            us = median_us_graph(lambda: fwd(mlp, x), replays=40, gpu_state=True)
            target = TARGET_US.get(args.tokens)
            rows.append({"T": args.tokens, "rep": rep, "heated_first": heated, "median_us": round(us, 2),
                         "meets_target": None if target is None else us <= target, **harness.LAST_GPU_STATE})
            print(rows[-1], flush=True)
            del x
    times = sorted(r["median_us"] for r in rows)
    print(f"T={args.tokens}: {len(times)} repetitions, min {times[0]:.1f}, median {times[len(times) // 2]:.1f}, "
          f"max {times[-1]:.1f} us; meets {TARGET_US.get(args.tokens)} in "
          f"{sum(bool(r['meets_target']) for r in rows)} of {len(rows)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"moe_repeat_T{args.tokens}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
