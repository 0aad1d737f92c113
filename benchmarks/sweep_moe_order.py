#!/usr/bin/env python3
"""MoE probe (device run, no build): tile order of the 128-row grouped GEMMs. Same tiles in every
variant, so the outputs must be bit-identical:

* GROUP_M 8: groups of 8 row blocks (the order before expert groups);
* expert groups (``grouped_gemm.block_groups``: the blocks of one expert, at most GROUP_CAP, form a
  group, so no weight tile is fetched from DRAM by two groups), narrow last column tiles in place;
* expert groups with the narrow last column tiles after all full-width ones (``narrow_last``, the default
  since session 8), and GROUP_M 8 with them.

gpt-oss-20b shapes, bf16, random weights and router, T = 4096 / 1024 / 16384: GEMM 1, GEMM 2 and both,
each in its own CUDA graph, three interleaved rounds, median. Session 4 ran this with GROUP_M 16 and an
expert-group cap of 16 as well (docs/NOTES-moe.md "v6").

    python benchmarks/sweep_moe_order.py --out DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from sweep_moe_v4 import probe_args, random_experts, routed_case  # noqa: E402

T0 = time.time()
E, H, I2, K_TOP = 32, 2880, 5760, 4


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def main():
    args, gg = probe_args()
    base = gg.Cfg(256, 64, 8, 4, 8, True, True, True, True)
    variants = {"GROUP_M 8": (base, None),
                "expert groups, narrow in place": (base._replace(group_m=0), 32),
                "expert groups, narrow last": (base._replace(group_m=0, narrow_last=True), 32),
                "GROUP_M 8, narrow last": (base._replace(narrow_last=True), None)}
    w1, b1, w2, b2 = random_experts(E, H, I2)
    results = []
    for t in (4096, 1024, 16384):
        block_m, mb, hidden, wts, sorted_pos, block_expert, act, y = routed_case(gg, t, E, K_TOP, H, I2)
        groups = {}
        for name, (cfg, cap) in variants.items():
            if cap is not None:
                gg.GROUP_CAP = cap
                groups[name] = gg.block_groups(block_expert, block_m)

        def gemm1(name):
            gg.FORCE[(block_m, True)] = variants[name][0]
            gg.gemm1_swiglu(hidden, w1, b1, act, sorted_pos, block_expert, K_TOP, 1.702, 7.0, block_m, mb,
                            groups.get(name))
            return act

        def gemm2(name):
            gg.FORCE[(block_m, False)] = variants[name][0]
            gg.gemm2_weighted(act, w2, b2, wts, y, sorted_pos, block_expert, block_m, mb, groups.get(name))
            return y

        def pair(name):
            gemm1(name)
            return gemm2(name)

        ref = None
        checks = {}
        for name in variants:
            act.fill_(float("nan")); y.fill_(float("nan"))
            pair(name)
            torch.cuda.synchronize()
            if ref is None:
                ref = y.clone()
            checks[name] = bool(torch.equal(y, ref))
        log(f"T={t} bit-identical to GROUP_M 8: {checks}")
        times = {(n, p): [] for n in variants for p in ("gemm1", "gemm2", "pair")}
        for _ in range(3):
            for n in variants:
                for p, fn in (("gemm1", gemm1), ("gemm2", gemm2), ("pair", pair)):
                    times[(n, p)].append(harness.median_us_graph(lambda n=n, fn=fn: fn(n), replays=10))
        for n in variants:
            row = {"T": t, "variant": n, "identical": checks[n]}
            for p in ("gemm1", "gemm2", "pair"):
                row[p + "_us"] = sorted(times[(n, p)])[1]
                row[p + "_rounds"] = times[(n, p)]
            log(f"T={t} {n}: gemm1 {row['gemm1_us']:.1f} gemm2 {row['gemm2_us']:.1f} pair {row['pair_us']:.1f} "
                f"(pair rounds {', '.join(f'{x:.0f}' for x in row['pair_rounds'])})")
            results.append(row)
        del hidden, act, y
        torch.cuda.empty_cache()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "moe_order_probe.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
