#!/usr/bin/env python3
"""Sliding-window prefill (issue 4): the native CUDA kernel (attn_window) against the Triton `_window_fwd`,
through the public `flash_attn_varlen_func` (128-token window as transformers passes it, sinks, GPT-OSS heads).

Needs the CUDA build (`scripts/build_kernel.py`). Shapes: one 8192-token sequence (the harness's row) and
four sequences of 2048 packed. Device time from CUDA-graph replays over 2 input sets (151 MB each, > L2), two
interleaved rounds; each variant is first checked against float64 on three stretches of rows; % of the byte
floor from the copy bandwidth measured in the same call. Variants: Triton (WINDOW_CUDA off) and the native
kernel with 32 / 64 / 128 query positions per CTA. Writes $OUT/window_cuda_probe.json.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import load_kernel, load_package_file, measure_ceilings, median_us_graph  # noqa: E402

HQ, HKV, D, S, W = 64, 8, 64, 8192, 128
OUT = Path(os.environ.get("OUT", "probe_out"))
OUT.mkdir(parents=True, exist_ok=True)
VARIANTS = [("triton _window_fwd", False, 0), ("native P=32", True, 32), ("native P=64", True, 64),
            ("native P=128", True, 128)]


def main() -> None:
    kernel = load_kernel()
    ta = importlib.import_module(kernel.__name__ + ".attention._triton_attn")  # imported lazily by the package
    ref = load_package_file("reference.py")
    ceil = measure_ceilings()
    dev, bf = "cuda", torch.bfloat16
    sinks = torch.randn(HQ, device=dev)
    rows = []
    for lens in ([S], [S // 4] * 4):
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
        sets = [tuple(torch.randn(S, h, D, device=dev, dtype=bf) for h in (HQ, HKV, HKV)) for _ in range(2)]
        q, k, v = sets[0]
        refs = []
        for p0 in (0, 1500, S - 130):
            p1 = p0 + 130
            s0 = max(int(c) for c in cu.tolist() if c <= p0)  # the sequence holding rows p0..p1
            r = ref.attention(q[p0:p1].double(), k[s0:p1].double(), v[s0:p1].double(), scale=0.125,
                              sinks=sinks.double(), causal=True, window=(W - 1, W - 1))
            refs.append((p0, p1, r))
        nbytes = 2 * q.numel() * 2 + 2 * k.numel() * 2
        floor = nbytes / ceil["copy_bytes_per_us"]
        calls = [lambda q=q, k=k, v=v: kernel.flash_attn_varlen_func(
            q, k, v, cu, cu, max(lens), max(lens), causal=True, window_size=(W - 1, W - 1), s_aux=sinks)
            for q, k, v in sets]
        for rnd in range(2):
            for name, native, positions in VARIANTS:
                ta.WINDOW_CUDA, ta.WINDOW_CUDA_POSITIONS = native, positions
                try:
                    out = calls[0]()
                    torch.cuda.synchronize()
                    err = max(((out[p0:p1].double() - r).abs().max() / r.abs().max()).item() for p0, p1, r in refs)
                    t = median_us_graph(calls)
                    res = dict(round=rnd, seqs=len(lens), variant=name, us=round(t, 2),
                               pct_floor=round(100 * floor / t, 1), rel_err=f"{err:.1e}",
                               finite=bool(torch.isfinite(out).all()))
                except Exception as e:  # noqa: BLE001
                    res = dict(round=rnd, seqs=len(lens), variant=name, error=repr(e)[:300])
                rows.append(res)
                print(res, flush=True)
        del sets
    ta.WINDOW_CUDA, ta.WINDOW_CUDA_POSITIONS = True, 0
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  torch=torch.__version__, ceilings=ceil, floor_us=round(floor, 2), bytes=nbytes, rows=rows)
    (OUT / "window_cuda_probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
