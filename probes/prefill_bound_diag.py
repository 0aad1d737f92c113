"""Probe (2026-12-07): why test_moe_gemm_prefill_mxfp4_vs_float64 fails its element bound with bias=False (11 cases on
the H100, 12:31 UTC; the probe's blocks were bit-equal to the bf16 block). Runs the test's data, then for the elements
past the bound prints the kernel's y, float64 y_ref, the bound, the column's down scale bytes, and the same product
by torch's bf16 matmul (tensor cores) and float32 matmul on the GPU. Expected from a float32 emulation on the CPU (the
bound had no underflow term, fixed in the test since): past the old bound only elements below ~2^-126."""
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
import harness  # noqa: E402
import test_moe_mxfp4 as t  # noqa: E402

kernel = harness.load_kernel()
CASES = [("odd", 64, 300, 3), ("big", 128, 300, 3), ("odd", 64, 1, None), ("odd", 128, 700, None)]
for (shape, bm, T, skew), trial in itertools.product(CASES, range(3)):
    torch.manual_seed(trial)
    s = t.BIG if shape == "big" else t.ODD
    H, I, k = s["H"], s["I"], s["k"]
    p, x, ids, sorted_pos, wf, act, y = t._prefill_gemms(kernel, s, T, skew, bm, False)
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
