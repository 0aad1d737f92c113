"""Probe (2026-12-07): why test_moe_gemm_prefill_mxfp4_vs_float64 fails its element bound with bias=False (11 cases on
the H100, 12:31 UTC; the probe's blocks were bit-equal to the bf16 block). Runs the test's data, then for the elements
past the bound prints the kernel's y, float64 y_ref, the bound, the column's down scale bytes, and the same product
by torch's bf16 matmul (tensor cores) and float32 matmul on the GPU. Expected from a float32 emulation on the CPU (the
bound had no underflow term, fixed in the test since): past the old bound only elements below ~2^-126."""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
import harness  # noqa: E402
import test_moe_mxfp4 as t  # noqa: E402

kernel = harness.load_kernel()
ops = kernel._ops.ops
for shape, bm, T, skew in [("odd", 64, 300, 3), ("big", 128, 300, 3), ("odd", 64, 1, None), ("odd", 128, 700, None)]:
  for trial in range(3):
    torch.manual_seed(trial)
    s = t.BIG if shape == "big" else t.ODD
    H, I, E, k = s["H"], s["I"], s["E"], s["k"]
    p = t._packed(kernel, s, "cuda", bias=False)
    for name in ("gate_up_scales", "down_scales"):
        edge = torch.tensor([0, 1, 127, 200], dtype=torch.uint8, device="cuda")
        sc = p[name]
        pick = edge[torch.randint(0, 4, sc.shape, device="cuda")]
        p[name] = torch.where(torch.rand(sc.shape, device="cuda") < 0.3, pick, sc).contiguous()
    x = (torch.randn(T, H, device="cuda") * 0.25).to(torch.bfloat16)
    w, ids = t._route(T, E, k, "cuda", skew=skew)
    sorted_pos, block_expert = ops.moe_dispatch(ids, E, bm)
    act = torch.full((block_expert.numel() * bm, I), float("nan"), dtype=torch.bfloat16, device="cuda")
    wf = w.float().reshape(-1).contiguous()
    ops.moe_gemm_prefill_mxfp4(x, kernel.mxfp4_kernel_words(p["gate_up_blocks"]), p["gate_up_scales"], None,
                               sorted_pos, block_expert, wf, k, t.ALPHA, t.LIMIT, True, act)
    y = torch.full((T * k, H), float("nan"), dtype=torch.bfloat16, device="cuda")
    ops.moe_gemm_prefill_mxfp4(act, kernel.mxfp4_kernel_words(p["down_blocks"]), p["down_scales"], None,
                               sorted_pos, block_expert, wf, 1, 0.0, 0.0, False, y)
    w2f = kernel.dequantize_mxfp4(p["down_blocks"], p["down_scales"], torch.float32)
    w2b = kernel.dequantize_mxfp4(p["down_blocks"], p["down_scales"], torch.bfloat16)
    w2 = w2f.double()
    real = (sorted_pos >= 0).nonzero().flatten()
    slot = sorted_pos[real].long()
    e = ids.reshape(-1)[slot].long()
    ar = act[real]
    y_ref = t._rows_times_experts(ar, w2, e) * wf[slot, None]
    y_abs = t._rows_times_experts(ar.abs(), w2.abs(), e) * wf[slot, None].abs()
    bound = 2.0**-8 * y_ref.abs() + I * 2.0**-23 * y_abs
    got = y[slot].double()
    bad = ((got - y_ref).abs() > bound).nonzero()
    print(f"{shape} bm={bm} T={T} trial {trial}: {bad.shape[0]} of {got.numel()} past the bound", flush=True)
    for r, c in bad[:6].tolist():
        ex = e[r].item()
        bf = (ar[r:r + 1] @ w2b[ex][:, c:c + 1]).double().item() * wf[slot[r]].item()
        f32 = (ar[r:r + 1].float() @ w2f[ex][:, c:c + 1]).double().item() * wf[slot[r]].item()
        scb = p["down_scales"][ex, c].tolist() if p["down_scales"].shape[1] == H else p["down_scales"][ex, :, c].tolist()
        print(f"  row {r} col {c}: kernel {got[r, c].item():.6e} ref {y_ref[r, c].item():.6e} bound "
              f"{bound[r, c].item():.3e} |sum| {y_abs[r, c].item():.3e} bf16mm {bf:.6e} f32mm {f32:.6e} "
              f"scales {scb}", flush=True)
