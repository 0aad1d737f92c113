#!/usr/bin/env python3
"""Probe (issue 15, decode): the MXFP4 MoE block at T = 1 / 4 / 16 / 64 / 128 / 192 (gpt-oss-20b shapes, CUDA
graph, rotated inputs) with the CUDA decode GEMM (kernel_src/moe/decode_gemm_cuda.cu) at each compiled
(warps over K, spans per round) pair, against the Triton tile (GOK_MXFP4_DECODE=0); the bytes floor from a copy
measured in the same run; per-kernel device times (torch.profiler, eager) at T = 1 and 64.
Question: does the decode GEMM stream the 4-bit weights near the floor, with which pair, and up to which T does it
beat the Triton tile (the dispatch gives 16-row blocks up to T = 192)? Writes $OUT/mxfp4_decode_sweep.json.
Delete once answered (git keeps it).

    python probes/mxfp4_decode_sweep.py --out $OUT
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402

H = I = 2880
E, K = 32, 4
CFGS = {"triton tile": ("0", None), "cuda 4,6": ("1", "4,6"), "cuda 4,3": ("1", "4,3"), "cuda 8,3": ("1", "8,3"),
        "cuda 2,6": ("1", "2,6")}


def _set(cfg):
    on, pair = CFGS[cfg]
    os.environ["GOK_DECODE_GEMM"] = on
    if pair is None:
        os.environ.pop("GOK_DECODE_GEMM_CFG", None)
    else:
        os.environ["GOK_DECODE_GEMM_CFG"] = pair


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    import importlib

    mx = importlib.import_module(kernel.__name__ + ".moe.mxfp4")
    ceil = harness.measure_ceilings()
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
    rows = []
    for T in (1, 4, 16, 64, 128, 192):
        touched = E * (1 - (1 - K / E) ** T)  # expected experts hit
        wbytes = touched * 3 * H * I * (0.5 + 1 / 32)
        floor = harness.floor_us(ceil, bytes_moved=wbytes)
        xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(harness.rotation(int(wbytes)))]
        ref = None
        for name in CFGS:
            _set(name)
            calls = [lambda x=x: mx.moe_with_scores_mxfp4(x, rw, rb, K, *wargs, 1.702, 7.0)[0] for x in xs]
            try:
                with torch.inference_mode():
                    out = calls[0]().float()
                    ref = out if ref is None else ref
                    err = ((out - ref).abs().max() / ref.abs().max()).item()
                    us = harness.median_us_graph(calls, replays=40)
            except Exception as ex:
                rows.append(dict(T=T, cfg=name, error=repr(ex)[:300]))
                print(rows[-1], flush=True)
                continue
            rows.append(dict(T=T, cfg=name, us=round(us, 2), floor_us=round(floor, 2),
                             pct_floor=round(100 * floor / us, 1), rel_err_vs_triton=f"{err:.1e}"))
            print(rows[-1], flush=True)
    prof = {}
    for T in (1, 64):
        for name in ("triton tile", "cuda 4,6"):
            _set(name)
            x = torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16)
            with torch.inference_mode():
                for _ in range(3):
                    mx.moe_with_scores_mxfp4(x, rw, rb, K, *wargs, 1.702, 7.0)
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
                    for _ in range(20):
                        mx.moe_with_scores_mxfp4(x, rw, rb, K, *wargs, 1.702, 7.0)
                    torch.cuda.synchronize()
            ev = {e.key[:80]: round(e.device_time_total / 20, 2) for e in p.key_averages() if e.device_time_total > 0}
            prof[f"T={T} {name}"] = ev
            print(f"T={T} {name}", ev, flush=True)
    (args.out / "mxfp4_decode_sweep.json").write_text(json.dumps(dict(ceilings=ceil, rows=rows, profile=prof),
                                                                  indent=1))


if __name__ == "__main__":
    main()
