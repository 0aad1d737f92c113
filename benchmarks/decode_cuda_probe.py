#!/usr/bin/env python3
"""Sq = 1 decode: the native CUDA cluster kernel (attn_decode) against `_decode` + `_combine` (issue 4).

Needs the CUDA build (`scripts/build_kernel.py`). Every row goes through the public
`flash_attn_with_kvcache`, timed as the harness's decode rows: device time per call from CUDA-graph
replays over rotating caches that together exceed 3x L2 (B=1: 10 caches of 16.8 MB). Each variant is
first checked against float64 (B=1: the whole batch; B=32: 4 sequences). Variants: the Triton pair
(SQ1_CUDA off), the native kernel with the op's own choice, and fixed cluster sizes / ring depths.
Writes $OUT/decode_cuda_probe.json.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import floor_us, load_kernel, load_package_file, measure_ceilings, median_us_graph, rotation  # noqa: E402

HQ, HKV, D, S, PAGE = 64, 8, 64, 8192, 64
OUT = Path(os.environ.get("OUT", "probe_out"))
OUT.mkdir(parents=True, exist_ok=True)


def ncu_target(spec: str) -> None:
    """Three B=1 decode calls of each `splits:stages` in spec (comma-separated) for Nsight Compute."""
    kernel = load_kernel()
    ta = importlib.import_module(kernel.__name__ + ".attention._triton_attn")
    kc = torch.randn(1, S, HKV, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(1, 1, HQ, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((1,), S, dtype=torch.int32, device="cuda")
    for item in spec.split(","):
        c, st = (int(x) for x in item.split(":"))
        ta.SQ1_CUDA, ta.SQ1_CUDA_SPLITS, ta.SQ1_CUDA_STAGES = True, c, st
        for _ in range(3):
            kernel.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
    torch.cuda.synchronize()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--ncu":
        return ncu_target(sys.argv[2])
    b1_only = "--b1" in sys.argv
    kernel = load_kernel()
    ta = importlib.import_module(kernel.__name__ + ".attention._triton_attn")  # imported lazily by the package
    ref = load_package_file("reference.py")
    dev, bf = "cuda", torch.bfloat16
    ceil = measure_ceilings()
    res = {"ceilings": ceil, "device": torch.cuda.get_device_name(), "rows": [],
           "cluster_policy": os.environ.get("GOK_DECODE_CLUSTER_POLICY", "1")}
    print("ceilings", ceil, flush=True)
    sinks = torch.randn(HQ, device=dev)
    for b in ((1,) if b1_only else (1, 32)):
        kv_bytes = 2 * b * S * HKV * D * 2
        n_sets = rotation(kv_bytes)
        floor = floor_us(ceil, bytes_moved=kv_bytes + 2 * 2 * b * HQ * D)  # as the harness's decode rows
        caches = [(torch.randn(b, S, HKV, D, device=dev, dtype=bf), torch.randn(b, S, HKV, D, device=dev, dtype=bf))
                  for _ in range(n_sets)]
        pages = S // PAGE
        paged = []
        for kc, vc in caches:
            bt = torch.randperm(b * pages, device=dev).reshape(b, pages).to(torch.int32)
            kp = torch.empty(b * pages, PAGE, HKV, D, device=dev, dtype=bf)
            vp = torch.empty_like(kp)
            kp[bt.long()] = kc.reshape(b, pages, PAGE, HKV, D)
            vp[bt.long()] = vc.reshape(b, pages, PAGE, HKV, D)
            paged.append((kp, vp, bt))
        q = torch.randn(b, 1, HQ, D, device=dev, dtype=bf)
        lens = torch.full((b,), S, dtype=torch.int32, device=dev)
        check = range(b) if b == 1 else (0, 7, 19, 31)
        expected = {i: ref.attention(q[i].double(), caches[0][0][i].double(), caches[0][1][i].double(),
                                     scale=D**-0.5, sinks=sinks.double()) for i in check}
        variants = [("triton _decode+_combine", False, 0, 4), ("native (op's choice)", True, 0, 4)]
        if b == 1:
            variants += [(f"native {c} splits, {st} stages", True, c, st) for c, st in
                         ((8, 2), (8, 3), (8, 4), (8, 6), (16, 2), (16, 3))]
        else:
            variants += [(f"native {c} splits, {st} stages", True, c, st) for c in (1, 2) for st in (2, 4)]
        layouts = ("batched",) if b1_only else ("batched", "paged")
        for name, native, splits, stages in variants:
            ta.SQ1_CUDA, ta.SQ1_CUDA_SPLITS, ta.SQ1_CUDA_STAGES = native, splits, stages
            for layout in layouts:
                if layout == "batched":
                    calls = [lambda kc=kc, vc=vc: kernel.flash_attn_with_kvcache(
                        q, kc, vc, cache_seqlens=lens, causal=True, s_aux=sinks) for kc, vc in caches]
                else:
                    calls = [lambda kp=kp, vp=vp, bt=bt: kernel.flash_attn_with_kvcache(
                        q, kp, vp, cache_seqlens=lens, block_table=bt, causal=True, s_aux=sinks)
                        for kp, vp, bt in paged]
                try:
                    out = calls[0]()
                    torch.cuda.synchronize()
                    err = max(((out[i].double() - e).abs().max() / e.abs().max()).item() for i, e in expected.items())
                    nan = bool(torch.isnan(out).any())
                    us = median_us_graph(calls)
                    us2 = median_us_graph(calls)
                except Exception as ex:  # noqa: BLE001
                    print(f"B={b} {layout} {name}: FAILED {ex!r}"[:300], flush=True)
                    res["rows"].append(dict(b=b, layout=layout, variant=name, error=repr(ex)[:300]))
                    continue
                r = dict(b=b, layout=layout, variant=name, us=round(us, 2), us_repeat=round(us2, 2),
                         pct_of_floor=round(100 * floor / min(us, us2), 1), rel_err=err, nan=nan, caches=n_sets)
                res["rows"].append(r)
                print(r, flush=True)
                (OUT / f"decode_cuda_probe{os.environ.get('PROBE_TAG', '')}.json").write_text(json.dumps(res, indent=1))
        ta.SQ1_CUDA, ta.SQ1_CUDA_SPLITS, ta.SQ1_CUDA_STAGES = True, 0, 4
        del caches, paged
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
