"""Probe (written 2026-12-07 evening, stop 40; not run yet): the warp-specialized prefill GEMM for MXFP4 kernel words
(kernel_src/moe/prefill_gemm_cuda.cu, opt-in GOK_PREFILL_WS=256 / 192) against the default register-dequantizing
kernel (GOK_PREFILL_WS unset) and our bf16 block on the dequantized weights: 20b shapes, each GEMM alone at T = 4096
(CUDA graph, TFLOP/s of the real rows, and its outputs against the default's), then the whole block (router included)
at T = 1024 and 4096.

Why: its one run (H100, 19:09 UTC, wrong outputs: activation rows written at twice the shared-memory base, and
cp.async arriving on the stage barrier) took 2,107 / 2,402 us for the block at T = 4096 against the default's 2,054
(bf16 block 1,563); the design was predicted near the bf16 block. Predicted for the fixed version (rows where they
belong; the producer fences its own landed copies and arrives one stage late): the same or slower than that run. If
so, `--ncu` tells what holds it: run under

    ncu --set full -k regex:prefill_ws --launch-skip 2 --launch-count 2 python3 probes/prefill_ws.py --ncu

(GEMM 1 and GEMM 2 of the second block call; GOK_PREFILL_WS=256), and read the producer's and the consumers' stall
reasons, shared-memory throughput and the tensor-pipe utilisation.
Answered when: the variant is made the default (a measured gain) or removed (none, with the profile's reason)."""
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
VARIANTS = ("0", "256", "256-2", "192")  # GOK_PREFILL_WS: the default kernel; warp-specialized with 256-row tiles (lead 1, 2), 192


def weights(kernel, g):
    mx, deq = {}, {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        b, s = kernel.quantize_mxfp4(w)
        del w
        deq[name] = kernel.dequantize_mxfp4(b, s, torch.bfloat16)
        bias = (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        mx[name] = (kernel.mxfp4_kernel_words(b), s, bias)
    return mx, deq


def gemms_alone(kernel, mx, x, rw, rb) -> dict:
    """Each GEMM alone at the block's dispatch (128-row blocks), per variant: us, TFLOP/s over the real rows, and the
    largest difference of its outputs from the default kernel's (relative to their largest magnitude)."""
    ops = kernel._ops.ops
    w, ids = ops.moe_route(torch.nn.functional.linear(x, rw, rb), K)
    T = x.shape[0]
    sorted_pos, block_expert = ops.moe_dispatch(ids, E, 128)
    real = (sorted_pos >= 0).nonzero().flatten()
    wf = w.float().reshape(-1).contiguous()
    (w1, s1, b1), (w2, s2, b2) = mx["gate_up"], mx["down"]
    res, base = {}, None
    for v in VARIANTS:
        os.environ["GOK_PREFILL_WS"] = v
        act = torch.full((block_expert.numel() * 128, I), float("nan"), dtype=torch.bfloat16, device="cuda")
        y = torch.full((T * K, H), float("nan"), dtype=torch.bfloat16, device="cuda")
        g1 = lambda: ops.moe_gemm_prefill_mxfp4(x, w1, s1, b1, sorted_pos, block_expert, wf, K, 1.702, 7.0, True, act)  # noqa: E731
        g2 = lambda: ops.moe_gemm_prefill_mxfp4(act, w2, s2, b2, sorted_pos, block_expert, wf, 1, 0.0, 0.0, False, y)  # noqa: E731
        g1()
        g2()
        outs = (act[real].float(), y.float())
        if base is None:
            base = outs
        diff = [((o - b).abs().max() / b.abs().max()).item() for o, b in zip(outs, base)]
        t1, t2 = median_us_graph(g1, replays=30), median_us_graph(g2, replays=30)
        f1, f2 = 2 * T * K * H * 2 * I, 2 * T * K * I * H
        res[v] = {"gemm1_us": round(t1, 1), "gemm1_TFLOPs": round(f1 / t1 / 1e6, 1), "gemm2_us": round(t2, 1),
                  "gemm2_TFLOPs": round(f2 / t2 / 1e6, 1), "act_diff_vs_default": f"{diff[0]:.1e}",
                  "y_diff_vs_default": f"{diff[1]:.1e}", "nan": bool(outs[0].isnan().any() or outs[1].isnan().any())}
        print("gemms", v, res[v], flush=True)
    os.environ.pop("GOK_PREFILL_WS")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    ap.add_argument("--ncu", action="store_true", help="only two blocks at T = 4096 with GOK_PREFILL_WS=--variant (ncu)")
    ap.add_argument("--variant", default="256", choices=VARIANTS[1:])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    mx, deq = weights(kernel, g)
    mx_args = (*mx["gate_up"], *mx["down"])
    if args.ncu:
        os.environ["GOK_PREFILL_WS"] = args.variant
        x = torch.randn(4096, H, device="cuda", generator=g).to(torch.bfloat16)
        for _ in range(2):
            kernel.moe_mxfp4(x, rw, rb, K, *mx_args)
        torch.cuda.synchronize()
        return
    res = {"device": torch.cuda.get_device_name(), "ceilings": harness.measure_ceilings()}
    with torch.inference_mode():
        x = torch.randn(4096, H, device="cuda", generator=g).to(torch.bfloat16)
        res["gemms_T4096"] = gemms_alone(kernel, mx, x, rw, rb)
        for T in (1024, 4096):
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2)]
            ours = [lambda x=x: kernel.moe_mxfp4(x, rw, rb, K, *mx_args)[0] for x in xs]
            bf16 = [lambda x=x: kernel.moe(x, rw, rb, K, deq["gate_up"], mx["gate_up"][2], deq["down"],
                                           mx["down"][2], 1.702, 7.0)[0] for x in xs]
            ref = bf16[0]().float()
            row = {"bf16_block_us": round(median_us_graph(bf16, replays=20), 1)}
            for v in VARIANTS:
                os.environ["GOK_PREFILL_WS"] = v
                out = ours[0]().float()
                row[f"ws{v}_us"] = round(median_us_graph(ours, replays=20), 1)
                row[f"ws{v}_rel_err_vs_bf16"] = f"{((out - ref).abs().max() / ref.abs().max()).item():.1e}"
            os.environ.pop("GOK_PREFILL_WS")
            res[f"block_T{T}"] = row
            print("block", T, row, flush=True)
    (args.out / "prefill_ws.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
