"""Probe (2026-12-07, stop 39): the decode GEMM's x rows requested with the round's weights (spans 1 .. D - 1 by
cp.async into per-lane shared-memory slots) against loaded at each span's MMAs (main before this change); and
multi_linear's x rows staged in shared memory at M <= 8 (GOK_PROJ_X_SMEM=0: read from global memory at each chunk,
as before; predicted q/k/v 15.2 -> ~12 us, o_proj 11.7 -> ~9.5 on an H100 at M = 1).

Why: the sm_90a SASS of the decode GEMM (FP8 channel and MXFP4 kernel words) issues a span's x loads (L2 hits) only
after the previous span's MMAs, so of a round's three spans two wait an L2 round trip each after the weights have
arrived, with no weight loads of that warp in flight. Predicted: GEMM time -15 to -30% at T = 1 / 4 (the block at
T = 1: MXFP4 ~40 -> ~33 us, FP8 ~54 -> ~46 us on an H200), less at 16 / 64.

First `git apply probes/decode_x_prefetch.patch` (the probe-only switch GOK_DECODE_X_SMEM=0: the old loads), then
`scripts/gpu_run.sh --no-tests --no-bench --probe probes/decode_x_prefetch.py`. Outputs must be bit-identical
(same MMAs, same order)."""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402
from harness import median_us_graph  # noqa: E402

H = I = 2880
E, K = 32, 4
VARIANTS = ("0", "1")  # GOK_DECODE_X_SMEM: 0 = x loaded at each span's MMAs (before), 1 = prefetched (new)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    mx, f8 = {}, {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        bias = (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        b, s = kernel.quantize_mxfp4(w)
        mx[name] = (kernel.mxfp4_kernel_words(b), s, bias)
        q, sc = kernel.quantize_fp8(w, "channel")
        f8[name] = (q, sc, bias)
        del w
    mx_args, f8_args = (*mx["gate_up"], *mx["down"]), (*f8["gate_up"], *f8["down"])
    blocks = {"mxfp4": lambda x: kernel.moe_mxfp4(x, rw, rb, K, *mx_args)[0],
              "fp8": lambda x: kernel.moe_fp8(x, rw, rb, K, *f8_args)[0]}
    res = {"device": torch.cuda.get_device_name(), "rows": {}}
    with torch.inference_mode():
        for T in (1, 4, 16, 64):
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(8)]
            row, outs = {}, {}
            for rnd in range(3):  # interleaved; the minimum of the rounds' medians per variant
                for n in VARIANTS:
                    os.environ["GOK_DECODE_X_SMEM"] = n
                    for fmt, fn in blocks.items():
                        outs[(fmt, n)] = fn(xs[0]).clone()
                        t = median_us_graph([lambda x=x, fn=fn: fn(x) for x in xs], replays=30)
                        key = f"{fmt} x_smem={n}"
                        row[key] = round(min(row.get(key, 1e9), t), 2)
            for fmt in blocks:
                row[f"{fmt} same outputs"] = bool(torch.equal(outs[(fmt, "0")], outs[(fmt, "1")]))
                row[f"{fmt} change %"] = round(100 * (row[f"{fmt} x_smem=1"] / row[f"{fmt} x_smem=0"] - 1), 1)
            res["rows"][T] = row
            print("T", T, row, flush=True)
    os.environ.pop("GOK_DECODE_X_SMEM", None)
    # multi_linear: q, k, v (one launch) and o_proj at gpt-oss-20b shapes, 8 input sets, weights rotated as well
    nh, nkv, d = 64, 8, 64
    sets = []
    for _ in range(4):
        mk = lambda n, k: (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
        sets.append(([mk(nh * d, H), mk(nkv * d, H), mk(nkv * d, H)], [mk(1, nh * d)[0], mk(1, nkv * d)[0],
                     mk(1, nkv * d)[0]], mk(H, nh * d), mk(1, H)[0]))
    res["projections"] = {}
    with torch.inference_mode():
        for T in (1, 4, 8, 16):
            xq = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(8)]
            xo = [torch.randn(T, nh * d, device="cuda", generator=g).to(torch.bfloat16) for _ in range(8)]
            row, outs = {}, {}
            for rnd in range(3):
                for n in VARIANTS:
                    os.environ["GOK_PROJ_X_SMEM"] = n
                    qkv = [lambda x=x, s=s: kernel.multi_linear(x, s[0], s[1]) for x, s in zip(xq, sets * 2)]
                    o = [lambda x=x, s=s: kernel.multi_linear(x, [s[2]], [s[3]]) for x, s in zip(xo, sets * 2)]
                    outs[("qkv", n)], outs[("o", n)] = torch.cat(qkv[0](), -1), torch.cat(o[0](), -1)
                    for name, calls in (("qkv", qkv), ("o_proj", o)):
                        key = f"{name} x_smem={n}"
                        row[key] = round(min(row.get(key, 1e9), median_us_graph(calls, replays=50)), 2)
            for name, o_key in (("qkv", "qkv"), ("o_proj", "o")):
                row[f"{name} same outputs"] = bool(torch.equal(outs[(o_key, "0")], outs[(o_key, "1")]))
                row[f"{name} change %"] = round(100 * (row[f"{name} x_smem=1"] / row[f"{name} x_smem=0"] - 1), 1)
            res["projections"][T] = row
            print("projections T", T, row, flush=True)
    os.environ.pop("GOK_PROJ_X_SMEM", None)
    (args.out / "decode_x_prefetch.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
