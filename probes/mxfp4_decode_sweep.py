#!/usr/bin/env python3
"""Probe (issue 15, decode): MXFP4 MoE block at T = 1 / 4 / 64 (gpt-oss-20b shapes, CUDA graph, rotated inputs)
for decode tiles of the grouped GEMMs, one GEMM's tile varied at a time (the other at the default); plus the
per-kernel device times of one block (torch.profiler, eager) for the default and the best tile.
Question: which decode tile (narrower / deeper / fewer warps / split K: more CTAs in flight) streams the MXFP4
weights fastest? (swap_ab, the weights as wgmma's register operand, lost: 1.4-1.8x slower, decisions-moe.md.)
Writes $OUT/mxfp4_decode_sweep.json. Delete once answered (git keeps it).

    python probes/mxfp4_decode_sweep.py --out $OUT
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402

H = I = 2880
E, K = 32, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    import importlib

    gg = importlib.import_module(kernel.__name__ + ".moe.grouped_gemm")
    mx = importlib.import_module(kernel.__name__ + ".moe.mxfp4")
    g = torch.Generator(device="cuda").manual_seed(0)
    packed = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        packed[name + "_blocks"], packed[name + "_scales"] = kernel.quantize_mxfp4(w)
        del w
        packed[name + "_bias"] = (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    wargs = [packed[n] for n in ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales",
                                 "down_bias")]
    C = gg.Cfg
    base = gg.candidates(16, True, False, "mxfp4")[0]
    cfgs = {"default": None}
    for bn, bk, w, st in ((32, 64, 4, 4), (64, 64, 2, 4), (64, 128, 4, 4), (64, 256, 4, 3), (32, 128, 4, 4),
                          (32, 256, 4, 3), (64, 128, 8, 4), (128, 128, 8, 3)):
        c = C(bn, bk, w, st, 64)
        cfgs[f"both {bn}x{bk}/{w}w/{st}s"] = (c, c)
    for sk in (2, 4):  # split K: sk programs per output tile, partial sums + an epilogue launch
        c = base._replace(split_k=sk)
        cfgs[f"both split_k={sk}"] = (c, c)
    for sk in (3,):
        c = base._replace(split_k=sk)
        cfgs[f"gemm1 split_k={sk}"] = (c, base)
        cfgs[f"gemm2 split_k={sk}"] = (base, c)
    for c in (C(32, 64, 4, 4, 64, split_k=2), C(64, 128, 4, 4, 64, split_k=2), C(32, 128, 4, 4, 64, split_k=3)):
        cfgs[f"both {c.bn}x{c.bk} split_k={c.split_k}"] = (c, c)
    rows = []
    ref_out = {}
    for T in (1, 4, 16, 64):
        n_sets = harness.rotation(int(E * (1 - (1 - K / E) ** T) * 3 * H * I * (0.5 + 1 / 32)))
        xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(n_sets)]
        for name, pair in cfgs.items():
            gg.FORCE.clear()
            if pair is not None:
                gg.FORCE[(16, True, "mxfp4")], gg.FORCE[(16, False, "mxfp4")] = pair
            calls = [lambda x=x: mx.moe_with_scores_mxfp4(x, rw, rb, K, *wargs, 1.702, 7.0)[0] for x in xs]
            try:
                with torch.inference_mode():
                    out = calls[0]().float()
                    if name == "default":
                        ref_out[T] = out
                    err = ((out - ref_out[T]).abs().max() / ref_out[T].abs().max()).item()
                    us = harness.median_us_graph(calls, replays=40)
            except Exception as ex:  # a tile that does not compile or fit
                rows.append(dict(T=T, tile=name, error=repr(ex)[:200]))
                print(rows[-1], flush=True)
                continue
            rows.append(dict(T=T, tile=name, us=round(us, 2), rel_err_vs_default=f"{err:.1e}"))
            print(rows[-1], flush=True)
    gg.FORCE.clear()
    # per-kernel device times, eager, T = 1 and 64: default and the best swap tile at that T
    prof = {}
    for T in (1, 64):
        best = min((r for r in rows if r["T"] == T and "us" in r and r["tile"] != "default"), key=lambda r: r["us"])
        for name in ("default", best["tile"]):
            gg.FORCE.clear()
            if cfgs[name] is not None:
                gg.FORCE[(16, True, "mxfp4")], gg.FORCE[(16, False, "mxfp4")] = cfgs[name]
            x = torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16)
            with torch.inference_mode():
                for _ in range(3):
                    mx.moe_with_scores_mxfp4(x, rw, rb, K, *wargs, 1.702, 7.0)
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
                    for _ in range(20):
                        mx.moe_with_scores_mxfp4(x, rw, rb, K, *wargs, 1.702, 7.0)
                    torch.cuda.synchronize()
            ev = {}
            for e in p.key_averages():
                if e.device_time_total > 0:
                    ev[e.key[:80]] = round(e.device_time_total / 20, 2)
            prof[f"T={T} {name}"] = ev
            print(f"T={T} {name}", ev, flush=True)
    gg.FORCE.clear()
    (args.out / "mxfp4_decode_sweep.json").write_text(json.dumps(dict(rows=rows, profile=prof), indent=1))


if __name__ == "__main__":
    main()
