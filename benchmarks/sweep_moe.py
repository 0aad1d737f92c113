#!/usr/bin/env python3
"""MoE v3 probe (device run): host time per eager call (fast path vs the traced-op path), eager
do_bench vs transformers in the same process, graph replay, and a tile sweep of the two grouped
GEMMs (pointer loads vs TMA descriptors) at T = 1024 / 4096 / 16384.

    python benchmarks/sweep_moe.py [--budget-s 240]
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
from harness import load_kernel, median_us, median_us_graph  # noqa: E402
from harness_moe import E, H, I, K, _mlp  # noqa: E402

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def host_us(fn, n):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n * 1e6
    return host, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--no-sweep", action="store_true", help="host / eager / graph timings and profiles only")
    args = ap.parse_args()
    kernel = load_kernel()
    ex = sys.modules[kernel.__name__ + ".moe.experts"]
    gg = sys.modules.get(kernel.__name__ + ".moe.grouped_gemm")
    if gg is None:
        import importlib

        gg = importlib.import_module(kernel.__name__ + ".moe.grouped_gemm")
    ops = kernel._ops.ops
    mlp = _mlp()
    fwd = kernel.layers.MoeMLP.forward
    prepare = ex._PREPARE
    log("fast path op:", prepare)

    with torch.inference_mode():
        # --- correctness: fast path vs traced-op path, bit for bit; TMA vs pointer tiles
        for T in (1, 4, 64, 1024, 4096, 16384):
            x = torch.randn(1, T, H, device="cuda", dtype=torch.bfloat16)
            a_out, a_s = fwd(mlp, x)
            ex._PREPARE = None
            b_out, b_s = fwd(mlp, x)
            ex._PREPARE = prepare
            mlp.experts.config._experts_implementation = "grouped_mm"
            r_out, _ = mlp(x)
            err = ((a_out.float() - r_out.float()).abs().max() / r_out.float().abs().max()).item()
            log(f"T={T}: fast==traced out {torch.equal(a_out, b_out)} scores {torch.equal(a_s, b_s)}; "
                f"rel err vs grouped_mm {err:.2e}")

        # --- host time and eager / graph timings at decode sizes
        for T in (1, 4, 64):
            x = torch.randn(1, T, H, device="cuda", dtype=torch.bfloat16)
            f_fast = lambda: fwd(mlp, x)  # noqa: E731
            h, w = host_us(f_fast, 200)
            ex._PREPARE = None
            h2, w2 = host_us(f_fast, 200)
            slow_bench = median_us(f_fast)
            ex._PREPARE = prepare
            mlp.experts.config._experts_implementation = "grouped_mm"
            h3, w3 = host_us(lambda: mlp(x), 50)
            res = {"ours": median_us(f_fast), "ours_traced_path": slow_bench}
            for impl in ("grouped_mm", "batched_mm"):
                mlp.experts.config._experts_implementation = impl
                res[impl] = median_us(lambda: mlp(x))
            mlp.experts.config._experts_implementation = "grouped_mm"
            res["ours_again"] = median_us(f_fast)
            res["ours_graph"] = median_us_graph(f_fast)
            log(f"T={T}: host us/call fast {h:.1f} (wall {w:.1f}), traced path {h2:.1f} (wall {w2:.1f}), "
                f"transformers grouped_mm {h3:.1f} (wall {w3:.1f})")
            log(f"T={T}: eager do_bench / graph us: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))
            if T == 1:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(300):
                    f_fast()
                pr.disable()
                s = io.StringIO()
                pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(16)
                print(s.getvalue()[-3500:], flush=True)
                # pieces
                hid = x.reshape(-1, H)
                rw, rb = mlp.router.weight, mlp.router.bias
                ge = mlp.experts
                pieces = {
                    "F.linear": lambda: torch.nn.functional.linear(hid, rw, rb),
                    "moe_prepare": lambda: prepare(hid, rw, rb, K, 16, I),
                    "checks": lambda: (ex._check_experts(hid, ge.gate_up_proj, ge.gate_up_proj_bias, ge.down_proj,
                                                         ge.down_proj_bias, ge.alpha, ge.limit),
                                       ex._check_router(hid, rw, rb, E)),
                    "empty": lambda: torch.empty((64, I), device="cuda", dtype=torch.bfloat16),
                }
                wts, wlo, ids, sp, be, act, y = prepare(hid, rw, rb, K, 16, I)
                pieces["finalize"] = lambda: ops.moe_finalize(y, ids, E)
                pieces["gemm1 launch"] = lambda: gg.gemm1_swiglu(hid, ge.gate_up_proj, ge.gate_up_proj_bias, act, sp,
                                                                 be, K, 1.702, 7.0, 16, 3)
                pieces["gemm2 launch"] = lambda: gg.gemm2_weighted(act, ge.down_proj, ge.down_proj_bias, wts, y, sp, be,
                                                                   16, 3)
                log("host us/call pieces: " + ", ".join(f"{k} {host_us(f, 300)[0]:.1f}" for k, f in pieces.items()))

        # --- GEMM tile sweep
        C = gg.Cfg
        sweep128 = [
            C(128, 64, 8, 4, 8), C(256, 64, 8, 3, 8),
            C(128, 64, 8, 4, 8, True, True), C(256, 64, 8, 3, 8, True, True), C(256, 64, 8, 4, 8, True, True),
            C(256, 64, 8, 4, 16, True, True), C(256, 64, 8, 3, 256, True, True), C(128, 128, 8, 3, 8, True, True),
            C(128, 64, 4, 4, 8, True, True), C(256, 128, 8, 2, 8, True, True),
        ]
        sweep64 = [C(128, 64, 4, 4, 8), C(128, 64, 4, 4, 8, True, True), C(256, 64, 4, 3, 8, True, True),
                   C(256, 64, 8, 3, 8, True, True), C(128, 64, 4, 4, 256, True, True)]
        ge = mlp.experts
        for T, bms in ((4096, (128, 64)), (16384, (128,)), (1024, (128, 64))):
            x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
            rw, rb = mlp.router.weight, mlp.router.bias
            for bm in bms:
                wts, wlo, ids, sp, be, act, y = prepare(x, rw, rb, K, bm, I)
                mb = (T * K).bit_length()
                for cfg in ([] if args.no_sweep else sweep128 if bm == 128 else sweep64):
                    if time.time() - T0 > args.budget_s:
                        log("budget reached, sweep stopped")
                        break
                    res = []
                    for first in (True, False):
                        gg.FORCE.clear()
                        gg.FORCE[(bm, first)] = cfg
                        try:
                            if first:
                                f = lambda: gg.gemm1_swiglu(x, ge.gate_up_proj, ge.gate_up_proj_bias, act, sp, be, K,  # noqa: E731
                                                            1.702, 7.0, bm, mb)
                            else:
                                f = lambda: gg.gemm2_weighted(act, ge.down_proj, ge.down_proj_bias, wts, y, sp, be,  # noqa: E731
                                                              bm, mb)
                            f()
                            res.append(median_us(f, warmup_ms=10, rep_ms=60))
                        except Exception as e:  # noqa: BLE001
                            res.append(float("nan"))
                            log(f"  fail {cfg} first={first}: {repr(e)[:300]}")
                    gg.FORCE.clear()
                    log(f"T={T} BM={bm} {tuple(cfg)}: gemm1 {res[0]:.1f} us, gemm2 {res[1]:.1f} us, "
                        f"sum {res[0] + res[1]:.1f}")
            # whole block with the shipped choice (autotune on)
            xx = x.reshape(1, T, H)
            log(f"T={T}: whole block eager do_bench {median_us(lambda: fwd(mlp, xx)):.1f} us, graph "
                f"{median_us_graph(lambda: fwd(mlp, xx), replays=10):.1f} us; chosen "
                f"{ {k: tuple(v) for k, v in gg._CHOSEN.items() if k[4] == (T * K).bit_length()} }")
            for bm in (() if args.no_sweep else (64, 128)):
                gg_b = gg.block_m_for
                gg.block_m_for = lambda m, e, bm=bm: bm
                try:
                    log(f"T={T}: whole block BLOCK_M={bm} eager {median_us(lambda: fwd(mlp, xx)):.1f} us")
                finally:
                    gg.block_m_for = gg_b
            if time.time() - T0 > args.budget_s:
                break
            if T == 16384 or args.no_sweep:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        fwd(mlp, xx)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10,
                                                max_name_column_width=50), flush=True)
    log("done")


if __name__ == "__main__":
    main()
