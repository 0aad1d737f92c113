#!/usr/bin/env python3
"""Probe (issue 15, MXFP4 decode): does GEMM 2 prefetching its weight tile into L2 before its PDL wait
(GOK_DECODE_PREFETCH=1, the default) beat no prefetch (GOK_DECODE_PREFETCH=0) at 20b shapes?
GEMM 1 and GEMM 2 alone and the whole MXFP4 block (router included), CUDA-graph replay over enough routed sets to
exceed L2; the copy rate of the same run gives the floor. Delete once the choice in
kernel_src/moe/decode_gemm_cuda.cu is settled (the staged variants lost: docs/moe.md).

    python probes/decode_gemm_prefetch.py --out $OUT
"""

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402

H, I, E, K = 2880, 2880, 32, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    ap.add_argument("--tokens", type=int, nargs="*", default=[1, 4, 16, 64])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    ops = kernel._ops.ops
    mx = importlib.import_module(kernel.__name__ + ".moe.mxfp4")
    ceil = harness.measure_ceilings()
    copy = ceil["copy_bytes_per_us"]
    g = torch.Generator(device="cuda").manual_seed(0)
    p = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        p[name + "_blocks"], p[name + "_scales"] = kernel.quantize_mxfp4(w)
        del w
        p[name + "_bias"] = (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    words = lambda b: b.view(torch.int32).view(b.shape[0], b.shape[1], -1)  # noqa: E731
    w1, w2 = words(p["gate_up_blocks"]), words(p["down_blocks"])
    router_w = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    router_b = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    bargs = [p[n] for n in ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales",
                            "down_bias")]
    rows = []
    for T in args.tokens:
        touched = E * (1 - (1 - K / E) ** T)
        b1 = int(touched * 2 * I * H * (0.5 + 1 / 32))
        b2 = int(touched * I * H * (0.5 + 1 / 32))
        n_sets = harness.rotation(b1 + b2)
        sets = []
        for _ in range(n_sets):
            x = torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16)
            ids = torch.rand(T, E, device="cuda", generator=g).topk(K, dim=1).indices.to(torch.int32)
            wf = torch.rand(T * K, device="cuda", generator=g)
            sp, be = ops.moe_dispatch(ids, E, 16)
            act = torch.empty(be.numel() * 16, I, dtype=torch.bfloat16, device="cuda")
            y = torch.empty(T * K, H, dtype=torch.bfloat16, device="cuda")
            sets.append((x, sp, be, wf, act, y))
        for staged in ("1", "0", "1"):
            os.environ["GOK_DECODE_PREFETCH"] = staged
            g1 = [lambda s=s: ops.moe_gemm_decode(s[0], None, w1, p["gate_up_scales"], p["gate_up_bias"], s[1], s[2],
                                                  s[3], K, 1.702, 7.0, True, s[4]) for s in sets]
            g2 = [lambda s=s: ops.moe_gemm_decode(s[4], None, w2, p["down_scales"], p["down_bias"], s[1], s[2],
                                                  s[3], 1, 0.0, 0.0, False, s[5]) for s in sets]
            t1 = harness.median_us_graph(g1, replays=40)
            t2 = harness.median_us_graph(g2, replays=40)
            blk = [lambda s=s: mx.moe_with_scores_mxfp4(s[0], router_w, router_b, K, *bargs, 1.702, 7.0)
                   for s in sets]
            with torch.inference_mode():
                tb = harness.median_us_graph(blk, replays=40)
            r = dict(T=T, prefetch=staged, gemm1_us=round(t1, 2), gemm2_us=round(t2, 2), block_us=round(tb, 2),
                     gemm1_tbs=round(b1 / t1 / 1e6, 3), gemm2_tbs=round(b2 / t2 / 1e6, 3),
                     floor_gemms_us=round((b1 + b2) / copy, 2), sets=n_sets)
            print(r, flush=True)
            rows.append(r)
    res = dict(device=torch.cuda.get_device_name(), ceilings=ceil, rows=rows)
    (args.out / "decode_gemm_prefetch.json").write_text(json.dumps(res, indent=1))
    lines = ["| T | prefetch | GEMM 1 us (TB/s) | GEMM 2 us (TB/s) | block us | floor GEMMs us |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['T']} | {r['prefetch']} | {r['gemm1_us']} ({r['gemm1_tbs']}) | {r['gemm2_us']} "
              f"({r['gemm2_tbs']}) | {r['block_us']} | {r['floor_gemms_us']} |" for r in rows]
    (args.out / "decode_gemm_prefetch.md").write_text(f"{res['device']}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
