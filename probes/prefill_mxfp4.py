"""Probe (2026-12-07): the CUDA prefill GEMM for MXFP4 kernel words (kernel_src/moe/prefill_gemm_cuda.cu, opt-in
GOK_PREFILL_GEMM=1) against the path it replaces (the default: the Triton in-loop tile below DEQUANT_MIN_ROWS routed
rows, the one-pass dequantization to bf16 from there) and our bf16 block on the dequantized weights; 20b shapes, CUDA-graph replay,
whole block (router included) at T = 512, 1024, 4096, and each GEMM alone at T = 4096 (TFLOP/s of the real rows).

First run (H100, 2026-12-07 01:21 UTC; scale bytes then staged in shared memory, 4 stages): block 653.9 / 701.9 /
1,989.1 us at T = 512 / 1024 / 4096 against 1,030.7 / 1,741.5 / 2,502.8 for the old path and 640.5 / 649.0 /
1,428.1 for the bf16 block; GEMM 1 432 TFLOP/s, GEMM 2 382 (bf16 matmul 756); outputs equal to the bf16 block's.
The double-buffered A operand (one CTA per SM): 651.4 / 1,076.4 / 3,111.4 us (removed). Not run since: the code as
it stands (scale bytes read per stage from global memory, bf16x2 stores in GEMM 2's epilogue, each k16 step's A
registers dequantized under the previous step's wgmma). Predicted for it: GEMM 1 1,000-1,100 us at T = 4096 on the
H100 (65-75% of the matmul rate), the block ~1,700-1,800 us."""
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
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    mx, deq = weights(kernel, g)
    mx_args = (*mx["gate_up"], *mx["down"])
    res = {"device": torch.cuda.get_device_name(), "ceilings": harness.measure_ceilings()}
    with torch.inference_mode():
        for T in (512, 1024, 4096):
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2)]
            ours = [lambda x=x: kernel.moe_mxfp4(x, rw, rb, K, *mx_args)[0] for x in xs]
            os.environ["GOK_PREFILL_GEMM"] = "1"
            row = {"ours_us": round(median_us_graph(ours, replays=20), 1)}
            out = ours[0]()
            os.environ.pop("GOK_PREFILL_GEMM")
            bf16 = [lambda x=x: kernel.moe(x, rw, rb, K, deq["gate_up"], mx["gate_up"][2], deq["down"],
                                           mx["down"][2], 1.702, 7.0)[0] for x in xs]
            ref = bf16[0]().float()
            row["rel_err_vs_bf16"] = f"{((out.float() - ref).abs().max() / ref.abs().max()).item():.1e}"
            row["bf16_block_us"] = round(median_us_graph(bf16, replays=20), 1)
            row["old_path_us"] = round(median_us_graph(ours, replays=20), 1)
            if T == 4096:
                row.update(gemm_alone(kernel, mx, xs[0], rw, rb))
            res[T] = row
            print("T", T, row, flush=True)
    (args.out / "prefill_mxfp4.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
