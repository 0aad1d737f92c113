#!/usr/bin/env python3
"""Probe (issue 15/17, MXFP4 decode GEMM): MXFP4 words re-laid-out at load so that a bf16x2 pair takes 2-3
instructions (rotate + mask) instead of ~3.8, and the x words feed the MMA without PRMTs
(GOK_PROBE_DECODE_LAYOUT=1, weights permuted below) against the checkpoint layout (=0). 20b shapes, GEMM 1 and
GEMM 2 alone and the whole MXFP4 block, CUDA-graph replay over enough routed sets to exceed L2. Also checks that
both layouts give the same outputs. The kernel side is probes/mxfp4_decode_layout.diff (apply it to kernel_src/moe/decode_gemm_cuda.cu). Delete
both once answered.

    python probes/mxfp4_decode_layout.py --out $OUT
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
# destination bit of (m, e0, e1, sign) of value p of a word (value p = nibble p of the checkpoint word)
DEST = [(6, 7, 0, 15), (22, 23, 16, 31), (8, 9, 10, 17), (24, 25, 26, 1), (18, 19, 20, 27), (2, 3, 4, 11),
        (12, 13, 14, 21), (28, 29, 30, 5)]


def to_decode_layout(blocks):
    w = blocks.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros_like(w)
    for p in range(8):
        for b in range(4):
            out |= ((w >> (4 * p + b)) & 1) << DEST[p][b]
    out = torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)
    return out.view(torch.uint8).view(blocks.shape)


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
    dl = {n: to_decode_layout(p[n]) for n in ("gate_up_blocks", "down_blocks")}
    words = lambda b: b.view(torch.int32).view(b.shape[0], b.shape[1], -1)  # noqa: E731
    wts = {"0": (words(p["gate_up_blocks"]), words(p["down_blocks"])),
           "1": (words(dl["gate_up_blocks"]), words(dl["down_blocks"]))}
    router_w = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    router_b = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    bargs = {lay: [dl[n] if (lay == "1" and n in dl) else p[n] for n in
                   ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales", "down_bias")]
             for lay in ("0", "1")}
    rows, checks = [], []
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
        # same outputs from both layouts (block, first set)
        outs = {}
        for lay in ("0", "1"):
            os.environ["GOK_PROBE_DECODE_LAYOUT"] = lay
            with torch.inference_mode():
                outs[lay] = mx.moe_with_scores_mxfp4(sets[0][0], router_w, router_b, K, *bargs[lay], 1.702, 7.0)
            outs[lay] = outs[lay][0] if isinstance(outs[lay], tuple) else outs[lay]
        d = (outs["0"].float() - outs["1"].float()).abs()
        ref = outs["0"].float().abs().max().item()
        checks.append(dict(T=T, max_abs_diff=d.max().item(), max_abs=ref, finite=bool(torch.isfinite(outs["1"]).all())))
        print(checks[-1], flush=True)
        for lay in ("0", "1", "0", "1"):
            os.environ["GOK_PROBE_DECODE_LAYOUT"] = lay
            w1, w2 = wts[lay]
            g1 = [lambda s=s: ops.moe_gemm_decode(s[0], None, w1, p["gate_up_scales"], p["gate_up_bias"], s[1], s[2],
                                                  s[3], K, 1.702, 7.0, True, s[4]) for s in sets]
            g2 = [lambda s=s: ops.moe_gemm_decode(s[4], None, w2, p["down_scales"], p["down_bias"], s[1], s[2],
                                                  s[3], 1, 0.0, 0.0, False, s[5]) for s in sets]
            t1 = harness.median_us_graph(g1, replays=40)
            t2 = harness.median_us_graph(g2, replays=40)
            blk = [lambda s=s: mx.moe_with_scores_mxfp4(s[0], router_w, router_b, K, *bargs[lay], 1.702, 7.0)
                   for s in sets]
            with torch.inference_mode():
                tb = harness.median_us_graph(blk, replays=40)
            r = dict(T=T, decode_layout=lay, gemm1_us=round(t1, 2), gemm2_us=round(t2, 2), block_us=round(tb, 2),
                     gemm1_tbs=round(b1 / t1 / 1e6, 3), gemm2_tbs=round(b2 / t2 / 1e6, 3),
                     floor_gemms_us=round((b1 + b2) / copy, 2), sets=n_sets)
            print(r, flush=True)
            rows.append(r)
    res = dict(device=torch.cuda.get_device_name(), ceilings=ceil, checks=checks, rows=rows)
    (args.out / "mxfp4_decode_layout.json").write_text(json.dumps(res, indent=1))
    lines = ["| T | decode layout | GEMM 1 us (TB/s) | GEMM 2 us (TB/s) | block us | floor GEMMs us |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['T']} | {r['decode_layout']} | {r['gemm1_us']} ({r['gemm1_tbs']}) | {r['gemm2_us']} "
              f"({r['gemm2_tbs']}) | {r['block_us']} | {r['floor_gemms_us']} |" for r in rows]
    (args.out / "mxfp4_decode_layout.md").write_text(f"{res['device']}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
