#!/usr/bin/env python3
"""The kernels as plain functions, loaded through ``kernels.get_kernel``: each op on small random tensors, checked
against ``reference`` (the same math in plain torch, float64).

    python examples/get_kernel.py [--device cuda|cpu]

In a checkout with a build (``python scripts/build_kernel.py``), ``LOCAL_KERNELS`` points the repo id at the
checkout and ``get_kernel`` loads that build; elsewhere it downloads the kernel from the Hub.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO_ID = "kernels-community/gpt-oss-kernels"
ROOT = Path(__file__).resolve().parents[1]
ALPHA, LIMIT = 1.702, 7.0  # GPT-OSS's clamped SwiGLU


def get_kernel():
    import kernels

    if any((ROOT / "build").glob("torch*/metadata.json")) and f"{REPO_ID}=" not in os.environ.get("LOCAL_KERNELS", ""):
        os.environ["LOCAL_KERNELS"] = ":".join(filter(None, [os.environ.get("LOCAL_KERNELS"), f"{REPO_ID}={ROOT}"]))
    # backend="cpu" without a GPU: torch built for CUDA (PyPI's default) would make kernels look for a CUDA variant
    return kernels.get_kernel(REPO_ID, version=1, backend=None if torch.cuda.is_available() else "cpu")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32  # CUDA attention takes fp16 / bf16
    tol = 1e-4 if dtype == torch.float32 else 2e-2

    k = get_kernel()
    ref = k.reference
    print(f"{REPO_ID}: {Path(k.__file__).parent} ({dev}, {dtype})")
    torch.manual_seed(0)
    T, H, I, E, TOP_K = 16, 128, 64, 8, 2
    results = {}

    x = torch.randn(T, H, device=dev).to(dtype)
    weight = 1 + 0.1 * torch.randn(H, device=dev)
    results["rms_norm"] = rel_err(k.rms_norm(x, weight, 1e-5), ref.rms_norm(x.double(), weight.double(), 1e-5))

    residual = torch.randn(T, H, device=dev).to(dtype)
    normed, summed = k.fused_add_rms_norm(x, residual, weight, 1e-5)
    want, want_sum = ref.fused_add_rms_norm(x.double(), residual.double(), weight.double(), 1e-5, act_dtype=dtype)
    results["fused_add_rms_norm"] = max(rel_err(normed, want), rel_err(summed, want_sum))

    # The MoE block: router GEMM + top-k routing + experts. The reference is routed from the same logits.
    router_w = (torch.randn(E, H, device=dev) * H**-0.5).to(dtype)
    router_b = (0.1 * torch.randn(E, device=dev)).to(dtype)
    gate_up = torch.randn(E, H, 2 * I, device=dev) * 2 * H**-0.5
    down = torch.randn(E, I, H, device=dev) * I**-0.5
    gate_up_b, down_b = 0.1 * torch.randn(E, 2 * I, device=dev), 0.1 * torch.randn(E, H, device=dev)
    logits = torch.nn.functional.linear(x, router_w, router_b)
    ref_w, ref_ids = ref.moe_route(logits.double(), TOP_K)

    out, _, ids = k.moe(x, router_w, router_b, TOP_K, gate_up.to(dtype), gate_up_b.to(dtype), down.to(dtype),
                        down_b.to(dtype), ALPHA, LIMIT)
    assert torch.equal(logits.gather(1, ids.long()), logits.gather(1, ref_ids)), "moe: other experts than the reference"
    want = ref.moe_experts(x.double(), ref_ids, ref_w, gate_up.to(dtype).double(), gate_up_b.to(dtype).double(),
                           down.to(dtype).double(), down_b.to(dtype).double(), ALPHA, LIMIT)
    results["moe"] = rel_err(out, want)

    # The same block with MXFP4 experts, as the checkpoints store them (uint8 blocks and scales).
    gu_blocks, gu_scales = k.quantize_mxfp4(gate_up)
    dn_blocks, dn_scales = k.quantize_mxfp4(down)
    gate_up_b, down_b = gate_up_b.to(torch.bfloat16), down_b.to(torch.bfloat16)
    out, _, ids = k.moe_mxfp4(x, router_w, router_b, TOP_K, gu_blocks, gu_scales, gate_up_b, dn_blocks, dn_scales,
                              down_b, ALPHA, LIMIT)
    assert torch.equal(logits.gather(1, ids.long()), logits.gather(1, ref_ids)), "moe_mxfp4: other experts"
    want = ref.moe_experts_mxfp4(x.double(), ref_ids, ref_w, gu_blocks, gu_scales, gate_up_b.double(), dn_blocks,
                                 dn_scales, down_b.double(), ALPHA, LIMIT, weight_dtype=dtype)
    results["moe_mxfp4"] = rel_err(out, want)

    # Causal GQA attention with sinks and a sliding window, (batch, seq, heads, head_dim).
    B, S, HQ, HKV, D, WINDOW = 2, 24, 4, 2, 32, 8
    q, kk, v = (torch.randn(B, S, h, D, device=dev).to(dtype) for h in (HQ, HKV, HKV))
    sinks = torch.randn(HQ, device=dev)
    out = k.flash_attn_func(q, kk, v, causal=True, window_size=(WINDOW - 1, 0), s_aux=sinks)
    want = torch.stack([ref.attention(q[b].double(), kk[b].double(), v[b].double(), scale=D**-0.5,
                                      sinks=sinks.double(), window=(WINDOW - 1, 0)) for b in range(B)])
    results["flash_attn_func"] = rel_err(out, want)

    ok = True
    for op, err in results.items():
        good = err <= tol
        ok &= good
        print(f"{op:<20} max relative error vs reference: {err:.1e}  {'ok' if good else f'FAIL (> {tol:g})'}")
    print("all ops match the reference" if ok else "some ops do NOT match the reference")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
