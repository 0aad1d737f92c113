#!/usr/bin/env python3
"""MoE probe (device run, no build): the decode tiles (16-row blocks, T = 1 / 4 / 64 at gpt-oss-20b
shapes, bf16). Every candidate of ``grouped_gemm.candidates(16, ...)`` for GEMM 1 and for GEMM 2, each
GEMM alone in a CUDA graph (the weights read per call exceed L2), three interleaved rounds, median.
The one-shot tuner times candidates with do_bench instead; this shows what each costs in a graph.

    python benchmarks/sweep_moe_decode.py --out DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from sweep_moe_v4 import probe_args, random_experts, routed_case  # noqa: E402

E, H, I2, K_TOP = 32, 2880, 5760, 4


def main():
    args, gg = probe_args()  # tiles are forced below, so the tuner setting does not matter
    w1, b1, w2, b2 = random_experts(E, H, I2)
    results = []
    for t in (1, 4, 64):
        bm, mb, hidden, wts, sorted_pos, block_expert, act, y = routed_case(gg, t, E, K_TOP, H, I2)
        gg.gemm1_swiglu(hidden, w1, b1, act, sorted_pos, block_expert, K_TOP, 1.702, 7.0, bm, mb)

        def gemm(first, c):
            gg.FORCE[(bm, first)] = c
            if first:
                gg.gemm1_swiglu(hidden, w1, b1, act, sorted_pos, block_expert, K_TOP, 1.702, 7.0, bm, mb)
                return act
            gg.gemm2_weighted(act, w2, b2, wts, y, sorted_pos, block_expert, bm, mb)
            return y

        cands = [(first, c) for first in (True, False) for c in gg.candidates(bm, first, False)]
        times = {fc: [] for fc in cands}
        for _ in range(3):
            for fc in cands:
                times[fc].append(harness.median_us_graph(lambda fc=fc: gemm(*fc), replays=20))
        for (first, c), ts in times.items():
            med = sorted(ts)[1]
            print(f"T={t} {'GEMM1' if first else 'GEMM2'} {bm}x{c.bn}x{c.bk}/{c.warps}w/{c.stages}s: {med:.1f} us "
                  f"({', '.join(f'{x:.1f}' for x in ts)})", flush=True)
            results.append({"T": t, "gemm": 1 if first else 2, "cfg": list(c), "us": med, "rounds": ts})
        gg.FORCE.clear()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "moe_decode_probe.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
