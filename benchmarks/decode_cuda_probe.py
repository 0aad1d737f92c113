#!/usr/bin/env python3
"""Sq = 1 decode, batch 4..32: the native CUDA kernel (attn_decode) against `_decode` + `_combine` (issue 4).

Needs the CUDA build (`scripts/build_kernel.py`). Every row goes through the public
`flash_attn_with_kvcache` (8192-token caches, GPT-OSS heads, sinks), timed as the harness's decode rows:
device time per call from CUDA-graph replays over rotating caches that together exceed 3x L2, twice.
Each variant is first checked against float64 (3 sequences). Variants: the Triton pair (SQ1_CUDA off),
the native kernel with the op's choice of ring depth, and each depth; at B=32 also a paged cache
(64-token pages, shuffled) and a 128-token window. Sets SQ1_CUDA_MIN_BH to 1 so every batch can take the
native kernel. `--window`: batch 1..16 with a 128-token window instead. Writes $OUT/decode_cuda_probe*.json. (The cluster version's probe is on branch decode-cluster.)
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


def window_rows(kernel, ta, ref, ceil, res) -> None:
    """--window: batch 1..16 against 8192-token caches with a 128-token window (GPT-OSS's sliding layers)."""
    dev, bf = "cuda", torch.bfloat16
    sinks = torch.randn(HQ, device=dev)
    for b in (1, 2, 4, 8, 16):
        n_sets = rotation(2 * b * S * HKV * D * 2)
        caches = [(torch.randn(b, S, HKV, D, device=dev, dtype=bf), torch.randn(b, S, HKV, D, device=dev, dtype=bf))
                  for _ in range(n_sets)]
        q = torch.randn(b, 1, HQ, D, device=dev, dtype=bf)
        lens = torch.full((b,), S, dtype=torch.int32, device=dev)
        expected = {i: ref.attention(q[i].double(), caches[0][0][i].double(), caches[0][1][i].double(),
                                     scale=D**-0.5, sinks=sinks.double(), window=(127, 127)) for i in (0, b - 1)}
        for name, native in (("triton _decode+_combine", False), ("native (op's choice)", True)):
            ta.SQ1_CUDA, ta.SQ1_CUDA_MIN_BH, ta.SQ1_CUDA_STAGES = native, 1, 0
            calls = [lambda kc=kc, vc=vc: kernel.flash_attn_with_kvcache(
                q, kc, vc, cache_seqlens=lens, causal=True, s_aux=sinks, window_size=(127, 127)) for kc, vc in caches]
            out = calls[0]()
            torch.cuda.synchronize()
            err = max(((out[i].double() - e).abs().max() / e.abs().max()).item() for i, e in expected.items())
            r = dict(b=b, layout="window 127", variant=name, us=round(median_us_graph(calls), 2),
                     us_repeat=round(median_us_graph(calls), 2), rel_err=err, caches=n_sets)
            res["rows"].append(r)
            print(r, flush=True)
        del caches
    ta.SQ1_CUDA, ta.SQ1_CUDA_MIN_BH, ta.SQ1_CUDA_STAGES = True, 128, 0
    (OUT / "decode_cuda_probe_window.json").write_text(json.dumps(res, indent=1))


def main() -> None:
    kernel = load_kernel()
    ta = importlib.import_module(kernel.__name__ + ".attention._triton_attn")  # imported lazily by the package
    ref = load_package_file("reference.py")
    dev, bf = "cuda", torch.bfloat16
    ceil = measure_ceilings()
    res = {"ceilings": ceil, "device": torch.cuda.get_device_name(), "rows": []}
    print("ceilings", ceil, flush=True)
    if "--window" in sys.argv:
        return window_rows(kernel, ta, ref, ceil, res)
    sinks = torch.randn(HQ, device=dev)
    for b in (4, 8, 16, 24, 32):
        kv_bytes = 2 * b * S * HKV * D * 2
        n_sets = rotation(kv_bytes)
        floor = floor_us(ceil, bytes_moved=kv_bytes + 2 * 2 * b * HQ * D)  # as the harness's decode rows
        caches = [(torch.randn(b, S, HKV, D, device=dev, dtype=bf), torch.randn(b, S, HKV, D, device=dev, dtype=bf))
                  for _ in range(n_sets)]
        pages = S // PAGE
        paged = []
        if b == 32:
            for kc, vc in caches:
                bt = torch.randperm(b * pages, device=dev).reshape(b, pages).to(torch.int32)
                kp = torch.empty(b * pages, PAGE, HKV, D, device=dev, dtype=bf)
                vp = torch.empty_like(kp)
                kp[bt.long()] = kc.reshape(b, pages, PAGE, HKV, D)
                vp[bt.long()] = vc.reshape(b, pages, PAGE, HKV, D)
                paged.append((kp, vp, bt))
        q = torch.randn(b, 1, HQ, D, device=dev, dtype=bf)
        lens = torch.full((b,), S, dtype=torch.int32, device=dev)
        check = (0, b // 2, b - 1)
        variants = [("triton _decode+_combine", False, 0), ("native (op's choice)", True, 0),
                    ("native 2 stages", True, 2), ("native 4 stages", True, 4)]
        layouts = ("batched", "paged", "window 127") if b == 32 else ("batched",)
        for layout in layouts:
            wl = 127 if layout == "window 127" else -1
            expected = {i: ref.attention(q[i].double(), caches[0][0][i].double(), caches[0][1][i].double(),
                                         scale=D**-0.5, sinks=sinks.double(), window=(wl, wl)) for i in check}
            for name, native, stages in variants[:2] if layout != "batched" else variants:
                ta.SQ1_CUDA, ta.SQ1_CUDA_MIN_BH, ta.SQ1_CUDA_STAGES = native, 1, stages
                if layout == "paged":
                    calls = [lambda kp=kp, vp=vp, bt=bt: kernel.flash_attn_with_kvcache(
                        q, kp, vp, cache_seqlens=lens, block_table=bt, causal=True, s_aux=sinks)
                        for kp, vp, bt in paged]
                else:
                    calls = [lambda kc=kc, vc=vc: kernel.flash_attn_with_kvcache(
                        q, kc, vc, cache_seqlens=lens, causal=True, s_aux=sinks, window_size=(wl, wl))
                        for kc, vc in caches]
                out = calls[0]()
                torch.cuda.synchronize()
                err = max(((out[i].double() - e).abs().max() / e.abs().max()).item() for i, e in expected.items())
                us = median_us_graph(calls)
                us2 = median_us_graph(calls)
                r = dict(b=b, layout=layout, variant=name, us=round(us, 2), us_repeat=round(us2, 2),
                         pct_of_floor=None if wl >= 0 else round(100 * floor / min(us, us2), 1), rel_err=err,
                         nan=bool(torch.isnan(out).any()), caches=n_sets)
                res["rows"].append(r)
                print(r, flush=True)
                (OUT / "decode_cuda_probe.json").write_text(json.dumps(res, indent=1))
        ta.SQ1_CUDA, ta.SQ1_CUDA_MIN_BH, ta.SQ1_CUDA_STAGES = True, 128, 0
        del caches, paged
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
