#!/usr/bin/env python3
"""Probe (issue 16): rms_norm_quant_fp8 reached 53-60% of a same-size copy at T = 4096 (target 85%), pad_quant_fp8
77%. Question: is it the warps per row (one program per row, BLOCK_H 4096 for H 2880, 8 warps today)? Times both
ops (CUDA graph, rotated inputs) at warps 1 / 2 / 4 / 8 / 16 against a copy of the same bytes in the same run.
Writes $OUT/fp8_act_sweep.json. Delete once answered (git keeps it).

    python probes/fp8_act_sweep.py --out $OUT
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402
import harness_fp8  # noqa: E402

H, T = 2880, 4096


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    kernel = harness.load_kernel()
    ft = importlib.import_module(kernel.__name__ + ".quant.fp8_triton")
    block_h = ft._block_h
    norm_w = torch.ones(H, device="cuda")
    xs = [torch.randn(T, H, device="cuda", dtype=torch.bfloat16) for _ in range(harness.rotation(T * H * 2, max_sets=8))]
    rows = []
    with torch.inference_mode():
        specs = (("rms_norm_quant_fp8 (q, scale, bf16 rows)",
                  lambda x: ft.rms_norm_quant_fp8(x, norm_w, 1e-5, H, None, True), T * H * 5 + T * 4),
                 ("rms_norm_quant_fp8 + residual (q, scale, bf16 rows, residual out)",
                  lambda x: ft.rms_norm_quant_fp8(x, norm_w, 1e-5, H, x, True), T * H * 9 + T * 4),
                 ("pad_quant_fp8", lambda x: ft.pad_quant_fp8(x, H), T * H * 3 + T * 4))
        for name, fn, nbytes in specs:
            copy = harness_fp8._copy_us(nbytes)
            for warps in (1, 2, 4, 8, 16):
                ft._block_h = lambda h_pad, w=warps: (block_h(h_pad)[0], w)
                us = harness.median_us_graph([lambda a=a, fn=fn: fn(a) for a in xs])
                rows.append(dict(op=name, warps=warps, us=round(us, 2), copy_us=round(copy, 2),
                                 pct_of_copy=round(100 * copy / us, 1)))
                print(json.dumps(rows[-1]), flush=True)
            ft._block_h = block_h
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fp8_act_sweep.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
