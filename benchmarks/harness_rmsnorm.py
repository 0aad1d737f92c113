"""RMSNorm rows for the harness: ours vs Liger vs transformers' eager GptOssRMSNorm.

`median_us` is the device time per call from CUDA-graph replays over rotating inputs (no
host overhead, inputs not in L2); `eager_us` is do_bench's eager median (L2 flushed), which
includes the host's launch latency when the host is the bottleneck.
"""

from __future__ import annotations

import torch

from harness import floor_us, median_us, median_us_graph, rotation, row

H = 2880
TOKENS = (1, 16, 256, 4096, 16384)
EPS = 1e-5


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm

    rows = []
    w = 1 + 0.1 * torch.randn(H, device="cuda", dtype=torch.float32)
    eager = GptOssRMSNorm(H, eps=EPS).cuda()
    with torch.no_grad():
        eager.weight.copy_(w)
    impls = {
        "ours rms_norm": lambda x, r: kernel.rms_norm(x, w, EPS),
        "Liger RMSNorm": lambda x, r: LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", False),
        "transformers eager": lambda x, r: eager(x),
        "ours fused_add_rms_norm": lambda x, r: kernel.fused_add_rms_norm(x, r, w, EPS),
    }
    for T in TOKENS[::2] if quick else TOKENS:
        nbytes = T * H * 2
        sets = [(torch.randn(T, H, device="cuda", dtype=torch.bfloat16),
                 torch.randn(T, H, device="cuda", dtype=torch.bfloat16)) for _ in range(rotation(4 * nbytes))]
        # Bytes: x read, out written (+ weight once); fused: x and residual read, out and new residual written.
        floors = {name: floor_us(ceilings, bytes_moved=(4 if "fused" in name else 2) * nbytes + H * 4) for name in impls}
        times = {}
        with torch.no_grad():
            for name, fn in impls.items():
                graph_us = median_us_graph([lambda fn=fn, a=a: fn(*a) for a in sets])
                x0, r0 = sets[0]
                eager_us = median_us(lambda fn=fn: fn(x0, r0))
                times[name] = graph_us
                rows.append(row("rmsnorm", f"T={T}", name, graph_us, floors[name], eager_us=round(eager_us, 2)))
        rows[-4]["vs_liger"] = round(times["Liger RMSNorm"] / times["ours rms_norm"], 2)
        print(rows[-4:], flush=True)
        del sets
    return rows
