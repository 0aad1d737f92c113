"""Fusion rows for the harness: the post-attention RMSNorm and the MoE block of one decoder layer, as two
modules (our RMSNorm layout, then our MoeMLP layout) against the fused module (NormMoeMLP), gpt-oss-20b
shapes, bf16, random weights (std 0.02), the same parameters and input for both, alternating.

Each is timed as a CUDA-graph replay (device time: what the fusion changes on the GPU) and eagerly with
do_bench (host launch cost included: what generate()'s eager loop sees at small T). The fused module is
kept in the default route only where it is not slower (docs/moe.md).
"""

from __future__ import annotations

import torch

from harness import median_us, median_us_graph, row

H = I = 2880
E, K = 32, 4
TOKENS = (1, 64, 4096)


def modules(kernel):
    """(norm, mlp, fused): the fused module adopts the same router, experts and norm."""
    from transformers import GptOssConfig

    config = GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K)
    layers = kernel.layers
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            norm = layers.RMSNormLayout(H, eps=config.rms_norm_eps)
            mlp = layers.MoeMLPLayout(config)
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn_like(norm.weight))
        norm.float()  # transformers keeps the norms in fp32 (_keep_in_fp32_modules)
        for p in mlp.parameters():
            p.normal_(0.0, 0.02)
    return norm, mlp, layers.NormMoeMLPLayout(mlp, norm)


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    rows = []
    norm, mlp, fused = modules(kernel)

    def unfused(x):
        return mlp(norm(x))

    for T in TOKENS:
        xs = [torch.randn(1, T, H, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
        with torch.inference_mode():
            a, b = unfused(xs[0]), fused(xs[0])
            same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            times = {}
            for rnd in range(2):  # interleaved rounds, best of each: clocks drift over a run
                for name, fn in (("unfused", unfused), ("fused", fused)):
                    g = median_us_graph([lambda x=x, fn=fn: fn(x) for x in xs])
                    e = median_us(lambda fn=fn: fn(xs[0]))
                    best = times.get(name, (float("inf"), float("inf")))
                    times[name] = (min(best[0], g), min(best[1], e))
        for name, (g, e) in times.items():
            rows.append(row("fusion", f"T={T}", f"ours {'NormMoeMLP' if name == 'fused' else 'RMSNorm + MoeMLP'} "
                            "(CUDA graph)", g, eager_us=round(e, 2), bit_identical=same))
        print(rows[-2:], flush=True)
    return rows
