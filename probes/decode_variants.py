"""Probe (2026-12-07): the decode GEMM's (warps, spans per round, CTAs per SM) for MXFP4 kernel words and FP8 channel weights,
and the FP8 block's new eager fast path (moe_prepare) against its traced path. Whole block, CUDA-graph replay over
rotating inputs, 20b shapes; per-kernel times at T = 1 from the profiler. GOK_DECODE_VARIANT picks the variant
(kernel_src/moe/decode_gemm_cuda.cu, probe-only switch)."""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402
from harness import median_us_graph, rotation  # noqa: E402

H = I = 2880
E, K = 32, 4
# (warps, spans per round, CTAs per SM by the register cap)
MX_VARIANTS = {0: "(4,3,5)", 1: "(4,3,6)", 2: "(4,2,6)"}
FP8_VARIANTS = {0: "(4,3,5)", 1: "(4,3,6)", 2: "(4,3,7)", 3: "(4,3,8)", 4: "(4,2,8)"}
TOKENS = (1, 4, 16, 64)


def touched_bytes(T, per_expert):
    return E * (1 - (1 - K / E) ** T) * per_expert


def kernel_times(fn, n=20):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" and ev.count:
            out[ev.key[:90]] = round(ev.device_time_total / n, 2)  # per block call
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    ceil = harness.measure_ceilings()
    print("copy TB/s", round(ceil["copy_TBps"], 3), flush=True)
    res = {"device": torch.cuda.get_device_name(), "copy_TBps": ceil["copy_TBps"], "mxfp4": {}, "fp8": {},
           "profile": {}}
    g = torch.Generator(device="cuda").manual_seed(0)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)

    # MXFP4, kernel words (as the model holds them)
    mx = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        b, s = kernel.quantize_mxfp4(w)
        mx[name] = (kernel.mxfp4_kernel_words(b), s,
                    (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16))
        del w
    mx_args = (*mx["gate_up"], *mx["down"])
    per_mx = (H * 2 * I + I * H) * (0.5 + 1 / 32)
    # FP8 channel
    f8 = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        q, s = kernel.quantize_fp8(w, "channel")
        f8[name] = (q, s, (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16))
        del w
    f8_args = (*f8["gate_up"], *f8["down"])
    per_f8 = H * 2 * I + I * H
    fp8mod = sys.modules[kernel.__name__ + ".moe.fp8"]

    with torch.inference_mode():
        for T in TOKENS:
            sets = rotation(int(touched_bytes(T, per_f8)))
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(sets)]
            fl_mx = touched_bytes(T, per_mx) / ceil["copy_bytes_per_us"]
            fl_f8 = touched_bytes(T, per_f8) / ceil["copy_bytes_per_us"]
            mx_calls = [lambda x=x: kernel.moe_mxfp4(x, rw, rb, K, *mx_args)[0] for x in xs]
            f8_calls = [lambda x=x: kernel.moe_fp8(x, rw, rb, K, *f8_args)[0] for x in xs]
            row = {"floor_us": round(fl_mx, 2)}
            ref = None
            for rnd in range(2):
                for v, name in MX_VARIANTS.items():
                    os.environ["GOK_DECODE_VARIANT"] = str(v)
                    out = mx_calls[0]()
                    if ref is None:
                        ref = out.float()
                    us = median_us_graph(mx_calls, replays=30)
                    key = f"{name}"
                    row[key] = round(min(row.get(key, 1e9), us), 2)
                    row[key + " maxdiff"] = float((out.float() - ref).abs().max())
            res["mxfp4"][T] = row
            print("mxfp4 T", T, row, flush=True)
            row = {"floor_us": round(fl_f8, 2)}
            ref = None
            for rnd in range(2):
                for v, name in FP8_VARIANTS.items():
                    os.environ["GOK_DECODE_VARIANT"] = str(v)
                    out = f8_calls[0]()
                    if ref is None:
                        ref = out.float()
                    us = median_us_graph(f8_calls, replays=30)
                    row[name] = round(min(row.get(name, 1e9), us), 2)
                    row[name + " maxdiff"] = float((out.float() - ref).abs().max())
                os.environ["GOK_DECODE_VARIANT"] = "0"
                saved = fp8mod._fast_path_ok
                fp8mod._fast_path_ok = lambda h: False
                try:
                    out = f8_calls[0]()
                    row["traced path (4,3,5)"] = round(min(row.get("traced path (4,3,5)", 1e9),
                                                         median_us_graph(f8_calls, replays=30)), 2)
                    row["traced maxdiff"] = float((out.float() - ref).abs().max())
                finally:
                    fp8mod._fast_path_ok = saved
            res["fp8"][T] = row
            print("fp8 T", T, row, flush=True)
            if T == 1:
                for v in ("0", "1"):
                    os.environ["GOK_DECODE_VARIANT"] = v
                    res["profile"][f"mxfp4 T=1 variant {v}"] = kernel_times(mx_calls[0])
                    res["profile"][f"fp8 T=1 variant {v}"] = kernel_times(f8_calls[0])
                print(json.dumps(res["profile"], indent=1), flush=True)
    (args.out / "decode_variants.json").write_text(json.dumps(res, indent=1))
    lines = ["| block | T | floor µs | " + " | ".join(["variant µs"] * 1) + " |", "|---|---|---|---|"]
    for fam in ("mxfp4", "fp8"):
        for T, row in res[fam].items():
            lines.append(f"| {fam} | {T} | {row['floor_us']} | "
                         + ", ".join(f"{k}: {v}" for k, v in row.items() if k != "floor_us" and "diff" not in k)
                         + " |")
    (args.out / "decode_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
