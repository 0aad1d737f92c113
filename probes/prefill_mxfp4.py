"""Probe (2026-12-07): the CUDA prefill GEMM for MXFP4 kernel words (kernel_src/moe/prefill_gemm_cuda.cu, the default on
Hopper) against the path it replaced (GOK_PREFILL_GEMM=0: the Triton in-loop tile below DEQUANT_MIN_ROWS routed rows,
the one-pass dequantization to bf16 from there) and our bf16 block on the dequantized weights; 20b shapes, CUDA-graph
replay, whole block (router included) at T = 512, 1024, 4096, and each GEMM alone at T = 4096 (TFLOP/s of the real
rows). --ncu: only the two GEMMs at T = 4096, twice (for Nsight Compute).

Runs (H100), block at T = 512 / 1024 / 4096: 01:21 UTC, first version (whole-stage A, scale bytes staged in shared
memory) 653.9 / 701.9 / 1,989.1 us; ~03:05 UTC, per-step A double buffer 785.6 / 854.4 / 2,466.3; ~06:40 UTC, the
trimmed loop (scale bytes from global memory one stage ahead): whole-stage A 724.6 / 742.8 / 2,134.7 (GEMM 1 417
TFLOP/s, GEMM 2 354), one- / two-step groups double-buffered 746.9-762.5 / 832.5-841.5 / 2,358.3-2,368.6, blocks in
pairs (one CTA per SM) 725.2-759.1 / 1,013.6-1,035.2 / 2,520.0-2,611.3, all bit-equal to the bf16 block; bf16 block
641.3 / 649.7 / 1,434.1, old path 1,031.5 / 1,741.8 / 2,507.6. ncu (whole-stage A, T = 4096): each scheduler issues
in 49% (GEMM 1) / 42% (GEMM 2) of the cycles with ~4 warps resident; GEMM 2's largest stall (37%) waited on global
loads: its epilogue's top-k weight loads (now staged in shared memory with the slots).
Open: whether that staging brings GEMM 2 back under the first version's 712 us."""
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


def gemm_alone(kernel, mx, x, rw, rb):
    """Each GEMM alone at the block's dispatch (128-row blocks): us and TFLOP/s over the real rows."""
    ops = kernel._ops.ops
    logits = torch.nn.functional.linear(x, rw, rb)
    w, ids = ops.moe_route(logits, K)
    T = x.shape[0]
    sorted_pos, block_expert = ops.moe_dispatch(ids, E, 128)
    act = torch.empty((block_expert.numel() * 128, I), dtype=torch.bfloat16, device="cuda")
    y = torch.empty((T * K, H), dtype=torch.bfloat16, device="cuda")
    wf = w.float().reshape(-1).contiguous()
    w1, s1, b1 = mx["gate_up"]
    w2, s2, b2 = mx["down"]
    g1 = lambda: ops.moe_gemm_prefill_mxfp4(x, w1, s1, b1, sorted_pos, block_expert, wf, K, 1.702, 7.0, True, act)  # noqa: E731
    g1()
    g2 = lambda: ops.moe_gemm_prefill_mxfp4(act, w2, s2, b2, sorted_pos, block_expert, wf, 1, 0.0, 0.0, False, y)  # noqa: E731
    t1, t2 = median_us_graph(g1, replays=30), median_us_graph(g2, replays=30)
    f1, f2 = 2 * T * K * H * 2 * I, 2 * T * K * I * H
    return {"gemm1_us": round(t1, 1), "gemm1_TFLOPs": round(f1 / t1 / 1e6, 1),
            "gemm2_us": round(t2, 1), "gemm2_TFLOPs": round(f2 / t2 / 1e6, 1),
            "blocks": block_expert.numel()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    ap.add_argument("--ncu", action="store_true", help="only GEMM 1 and 2 at T = 4096, twice each (run under ncu)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    mx, deq = weights(kernel, g)
    mx_args = (*mx["gate_up"], *mx["down"])
    if args.ncu:  # ncu -k regex:prefill_gemm --launch-skip 2: the second GEMM 1 and GEMM 2
        x = torch.randn(4096, H, device="cuda", generator=g).to(torch.bfloat16)
        for _ in range(2):
            kernel.moe_mxfp4(x, rw, rb, K, *mx_args)
        torch.cuda.synchronize()
        return
    res = {"device": torch.cuda.get_device_name()}
    res["ceilings"] = harness.measure_ceilings()
    with torch.inference_mode():
        for T in (512, 1024, 4096):
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2)]
            ours = [lambda x=x: kernel.moe_mxfp4(x, rw, rb, K, *mx_args)[0] for x in xs]
            row = {"ours_us": round(median_us_graph(ours, replays=20), 1)}
            out = ours[0]()
            bf16 = [lambda x=x: kernel.moe(x, rw, rb, K, deq["gate_up"], mx["gate_up"][2], deq["down"],
                                           mx["down"][2], 1.702, 7.0)[0] for x in xs]
            ref = bf16[0]().float()
            row["rel_err_vs_bf16"] = f"{((out.float() - ref).abs().max() / ref.abs().max()).item():.1e}"
            row["bf16_block_us"] = round(median_us_graph(bf16, replays=20), 1)
            os.environ["GOK_PREFILL_GEMM"] = "0"
            row["old_path_us"] = round(median_us_graph(ours, replays=20), 1)
            os.environ.pop("GOK_PREFILL_GEMM")
            if T == 4096:
                row["gemms"] = gemm_alone(kernel, mx, xs[0], rw, rb)
            res[T] = row
            print("T", T, row, flush=True)
    (args.out / "prefill_mxfp4.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
