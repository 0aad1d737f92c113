"""RMSNorm rows for the harness: ours vs Liger vs transformers' eager GptOssRMSNorm."""

from __future__ import annotations

import torch

from harness import floor_us, median_us, row

H = 2880
TOKENS = (1, 16, 256, 4096, 16384)


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm

    rows = []
    eps = 1e-5
    for T in TOKENS[::2] if quick else TOKENS:
        x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
        res = torch.randn_like(x)
        w = 1 + 0.1 * torch.randn(H, device="cuda", dtype=torch.float32)
        eager = GptOssRMSNorm(H, eps=eps).cuda()
        with torch.no_grad():
            eager.weight.copy_(w)
        # Bytes: x read, out written (+ weight once). Fused: x, residual read; out, residual_out written.
        floor = floor_us(ceilings, bytes_moved=2 * x.numel() * 2 + H * 4)
        floor_fused = floor_us(ceilings, bytes_moved=4 * x.numel() * 2 + H * 4)
        case = f"T={T}"
        ours = median_us(lambda: kernel.rms_norm(x, w, eps))
        liger = median_us(lambda: LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama", False))
        with torch.no_grad():
            hf = median_us(lambda: eager(x))
        fused = median_us(lambda: kernel.fused_add_rms_norm(x, res, w, eps))
        rows += [
            row("rmsnorm", case, "ours rms_norm", ours, floor, vs_liger=round(liger / ours, 2)),
            row("rmsnorm", case, "Liger RMSNorm", liger, floor),
            row("rmsnorm", case, "transformers eager", hf, floor),
            row("rmsnorm", case, "ours fused_add_rms_norm", fused, floor_fused),
        ]
        print(rows[-4:], flush=True)
    return rows
