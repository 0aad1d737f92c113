"""MoE rows for the harness: our MoeMLP layer (router included) vs transformers' GptOssMLP with
its `grouped_mm` (default) and `batched_mm` (decode) experts, gpt-oss-20b shapes, bf16, random
weights (std 0.02), on the same module and input, alternating.

Our row's median_us is the CUDA-graph replay median (device time of the whole block, what the
issue's targets are judged on); eager_us beside it is do_bench's eager median (L2 flushed, host
launch cost included where the host is slower than the GPU). The transformers anchors are eager
(do_bench); vs_best_transformers compares them with our eager number. From T=1024 our row also
has sm_clock_mhz / power_w: the median SM clock and board power while the same graph replays for
0.5 s after the timing (these sizes run at power-limited clocks, which differ from machine to machine).

Floor: max(bytes of the experts that uniform routing touches, E * (1 - (1 - k/E)^T) experts of
(H*2I + I*H) * 2 bytes, over the copy bandwidth; FLOPs 2 * T * k * 3 * H * I over the bf16 matmul
rate), both ceilings measured in the same run.

MXFP4 rows (``mxfp4_rows``): the block with the checkpoint's MXFP4 experts (``moe_with_scores_mxfp4``, router
included, CUDA-graph replay) at T = 1, 4, 64, 1024, 4096, beside our bf16 block on exactly the dequantized
weights (same router, same input); floor as above with (H*2I + I*H) * (1/2 + 1/32) bytes per expert (4-bit
values + one scale byte per 32). Weights: random normal (std 0.02) quantized with quantize_mxfp4.
"""

from __future__ import annotations

import torch

import harness
from harness import floor_us, median_us, median_us_graph, rotation, row

H = I = 2880
E, K = 32, 4
TOKENS = (1, 4, 64, 1024, 4096, 16384)
TARGET_US = {1: 100, 4: 280, 64: 640, 1024: 700, 4096: 1600, 16384: 6000}
BATCHED_MM_MAX_T = 256  # batched_mm runs out of memory from ~1000 tokens (anchors)
# Rows-per-block experiments (the default comes from moe.grouped_gemm.block_m_for).
BLOCK_M_EXPERIMENTS = {1024: (64,), 4096: (64,)}
# v3's tiles (no split tiles), graph-timed beside the default at these sizes (v4 ablation).
V3_TILE_EXPERIMENT = (1024, 4096, 16384)


def _mlp():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    config = GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K)
    config._experts_implementation = "grouped_mm"
    mlp = GptOssMLP(config)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0.0, 0.02)
    return mlp.to(device="cuda", dtype=torch.bfloat16).eval()


def floor_for(ceilings: dict, T: int) -> float:
    touched = E * (1 - (1 - K / E) ** T)
    expert_bytes = (H * 2 * I + I * H) * 2
    flops = 2 * T * K * 3 * H * I
    return floor_us(ceilings, bytes_moved=touched * expert_bytes + T * H * 4, flops=flops)


def _tiles(kernel, T: int) -> str:
    """The tiles the one-shot tuner kept for this T (GEMM 1 / GEMM 2; g0: expert groups; nl: narrow last
    column tiles run last), or 'default'."""
    import sys

    gg = sys.modules[kernel.__name__ + ".moe.grouped_gemm"]
    bm, mb = gg.block_m_for(T * K, E), (T * K).bit_length()
    picked = {key[1]: c for key, c in gg._CHOSEN.items() if key[0] == bm and key[4] == mb}
    fmt = lambda c: (f"{bm}x{c.bn}x{c.bk}/{c.warps}w/{c.stages}s/g{c.group_m}{'/nl' if c.narrow_last else ''}"  # noqa: E731
                     if c else "default")
    return f"{fmt(picked.get(True))} + {fmt(picked.get(False))}"


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    rows = []
    mlp = _mlp()
    ours_fwd = kernel.layers.MoeMLP.forward
    for T in (1, 64, 4096) if quick else TOKENS:
        x = torch.randn(1, T, H, device="cuda", dtype=torch.bfloat16)
        floor = floor_for(ceilings, T)
        case = f"T={T}"
        with torch.inference_mode():
            # correctness spot check against transformers' grouped_mm on the same input
            mlp.experts.config._experts_implementation = "grouped_mm"
            ref_out, _ = mlp(x)
            out, _ = ours_fwd(mlp, x)
            err = ((out.float() - ref_out.float()).abs().max() / ref_out.float().abs().max()).item()
            ours_eager = median_us(lambda: ours_fwd(mlp, x))
            ours = median_us_graph(lambda: ours_fwd(mlp, x), replays=40 if T <= 4096 else 20, gpu_state=T >= 1024)
            state = dict(harness.LAST_GPU_STATE) if T >= 1024 else {}
            timings = {}
            for impl in ("grouped_mm", "batched_mm"):
                if impl == "batched_mm" and T > BATCHED_MM_MAX_T:
                    continue
                mlp.experts.config._experts_implementation = impl
                try:
                    timings[impl] = median_us(lambda: mlp(x))
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                finally:
                    mlp.experts.config._experts_implementation = "grouped_mm"
            experiments = {}
            if not quick:
                import sys

                gg = sys.modules[kernel.__name__ + ".moe.grouped_gemm"]
                default_block_m = gg.block_m_for
                for bm in BLOCK_M_EXPERIMENTS.get(T, ()):
                    gg.block_m_for = lambda m, e, bm=bm: bm
                    try:
                        experiments[f"BLOCK_M={bm}, eager"] = median_us(lambda: ours_fwd(mlp, x))
                    finally:
                        gg.block_m_for = default_block_m
                if T in V3_TILE_EXPERIMENT and gg.block_m_for(T * K, E) == 128:
                    v3 = gg.Cfg(256, 64, 8, 4, 8, True, True)
                    gg.FORCE.update({(128, True): v3, (128, False): v3})
                    try:
                        experiments["v3 tiles (no split), graph"] = median_us_graph(
                            lambda: ours_fwd(mlp, x), replays=40 if T <= 4096 else 20)
                    finally:
                        gg.FORCE.clear()
                    # the default tiles with the narrow last column tiles in place (the order before session 8)
                    mb = (T * K).bit_length()
                    chosen = {key[1]: c for key, c in gg._CHOSEN.items() if key[0] == 128 and key[4] == mb}
                    for first in (True, False):
                        cfg = chosen.get(first) or gg.candidates(128, first, True)[0]
                        gg.FORCE[(128, first)] = cfg._replace(narrow_last=False)
                    try:
                        experiments["narrow tiles in place, graph"] = median_us_graph(
                            lambda: ours_fwd(mlp, x), replays=40 if T <= 4096 else 20)
                    finally:
                        gg.FORCE.clear()
        best = min(timings.values()) if timings else float("nan")
        rows.append(row("moe", case, "ours MoeMLP (CUDA graph)", ours, floor, eager_us=round(ours_eager, 2),
                        vs_best_transformers_eager=round(best / ours_eager, 2), target_us=TARGET_US[T],
                        meets_target=ours <= TARGET_US[T], rel_err_vs_grouped_mm=f"{err:.1e}",
                        tiles=_tiles(kernel, T), **state))
        for name, us in experiments.items():
            rows.append(row("moe", case, f"ours MoeMLP, {name} (experiment)", us, floor))
        for impl, us in timings.items():
            rows.append(row("moe", case, f"transformers {impl} (eager)", us, floor))
        print(rows[-1 - len(timings) - len(experiments):], flush=True)
        del x
        torch.cuda.empty_cache()
    del mlp
    torch.cuda.empty_cache()
    rows += mxfp4_rows(kernel, ceilings, quick)
    return rows


MXFP4_TOKENS = (1, 4, 64, 1024, 4096)
MXFP4_TARGET_US = {1: 25, 4: 60, 64: 150, 4096: 1533}  # T=4096: no slower than our bf16 block (H200, 1,533 us)


def floor_mxfp4(ceilings: dict, T: int) -> float:
    touched = E * (1 - (1 - K / E) ** T)
    expert_bytes = (H * 2 * I + I * H) * (0.5 + 1 / 32)
    return floor_us(ceilings, bytes_moved=touched * expert_bytes + T * H * 4, flops=2 * T * K * 3 * H * I)


def _transformers_mxfp4_block(packed: dict, router_w, router_b):
    """transformers' own MXFP4 block (Mxfp4GptOssMLP: OpenAI's triton_kernels through the Hub kernel
    gpt-oss-triton-kernels, the carried copy in .anchors/ resolved by LOCAL_KERNELS) on the same packed
    weights, or None when the anchor is not there."""
    import kernels
    from transformers import GptOssConfig
    from transformers.integrations import mxfp4 as tm
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

    repo = "kernels-community/gpt-oss-triton-kernels"
    if harness.use_anchor_kernel(repo) is None:
        print("no .anchors/gpt-oss-triton-kernels: transformers' MXFP4 rows skipped", flush=True)
        return None
    tm.triton_kernels_hub = kernels.get_kernel(repo, version=1)
    config = GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K)
    experts = tm.Mxfp4GptOssExperts(config)
    for proj in ("gate_up", "down"):
        tm.swizzle_mxfp4_convertops(packed[f"{proj}_blocks"], packed[f"{proj}_scales"], experts, f"{proj}_proj",
                                    torch.device("cuda"), tm.triton_kernels_hub)
        setattr(experts, f"{proj}_proj_bias", torch.nn.Parameter(packed[f"{proj}_bias"].float(), requires_grad=False))
    router = GptOssTopKRouter(config).to(device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        router.weight.copy_(router_w)
        router.bias.copy_(router_b)
    return tm.Mxfp4GptOssMLP(router, experts).eval()


def mxfp4_rows(kernel, ceilings: dict, quick: bool) -> list[dict]:
    import sys

    mx = sys.modules[kernel.__name__ + ".moe.mxfp4"]
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    packed = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        packed[name + "_blocks"], packed[name + "_scales"] = kernel.quantize_mxfp4(w)
        del w
        packed[name + "_bias"] = (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    router_w = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    router_b = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    deq = {n: kernel.dequantize_mxfp4(packed[n + "_blocks"], packed[n + "_scales"], torch.bfloat16)
           for n in ("gate_up", "down")}
    # ours as the model holds the experts (kernel words, MoeExpertsLayout.use_kernel_words), and at T < 1024 also on
    # the checkpoint's bytes as they are (what the public ops take from a user's own blocks)
    names = ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales", "down_bias")
    ckpt_args = [packed[n] for n in names]
    args = [kernel.mxfp4_kernel_words(packed[n]) if n.endswith("_blocks") else packed[n] for n in names]
    theirs = _transformers_mxfp4_block(packed, router_w, router_b)
    for T in (1, 64, 4096) if quick else MXFP4_TOKENS:
        # Several inputs per graph at small T: one token touches 4 experts (53 MB in MXFP4, under the 60 MB L2),
        # so replaying one input would read the same experts from L2 every time.
        n_sets = rotation(int(E * (1 - (1 - K / E) ** T) * (H * 2 * I + I * H) * (0.5 + 1 / 32)))
        xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(n_sets)]
        ours = [lambda x=x: mx.moe_with_scores_mxfp4(x, router_w, router_b, K, *args, 1.702, 7.0) for x in xs]
        ckpt = [lambda x=x: mx.moe_with_scores_mxfp4(x, router_w, router_b, K, *ckpt_args, 1.702, 7.0) for x in xs]
        bf16 = [lambda x=x: kernel.moe(x, router_w, router_b, K, deq["gate_up"], packed["gate_up_bias"],
                                       deq["down"], packed["down_bias"], 1.702, 7.0)[0] for x in xs]
        with torch.inference_mode():
            out = ours[0]()[0]
            ref = bf16[0]()
            err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            us = median_us_graph(ours, replays=40, gpu_state=T >= 1024)
            state = dict(harness.LAST_GPU_STATE) if T >= 1024 else {}
            us_eager = median_us(ours[0])
            us_bf16 = median_us_graph(bf16, replays=40)
            if T < 1024:
                ckpt_err = (ckpt[0]()[0].float() - out.float()).abs().max().item()
                us_ckpt = median_us_graph(ckpt, replays=40)
            anchor = {}
            if theirs is not None:
                calls = [lambda x=x: theirs(x[None])[0] for x in xs]
                t_out = calls[0]()[0].float()
                anchor["eager"] = median_us(calls[0])
                try:
                    anchor["graph"] = median_us_graph(calls, replays=40)
                except Exception as e:  # capture refused: the eager number stands alone
                    anchor["graph_error"] = repr(e)[:120]
                anchor["err"] = ((t_out - ref.float()).abs().max() / ref.float().abs().max()).item()
        target = MXFP4_TARGET_US.get(T)
        extra = dict(target_us=target, meets_target=us <= target) if target else {}
        if "graph" in anchor:
            extra["vs_transformers_mxfp4_graph"] = round(anchor["graph"] / us, 2)
        if "eager" in anchor:
            extra["vs_transformers_mxfp4_eager"] = round(anchor["eager"] / us_eager, 2)
        rows.append(row("moe", f"T={T}", "ours MXFP4 MoeMLP, kernel words (CUDA graph)", us, floor_mxfp4(ceilings, T),
                        eager_us=round(us_eager, 2), vs_our_bf16=round(us_bf16 / us, 2), input_sets=n_sets,
                        rel_err_vs_bf16_on_dequantized=f"{err:.1e}", **extra, **state))
        if T < 1024:
            rows.append(row("moe", f"T={T}", "ours MXFP4 MoeMLP, checkpoint's bytes (CUDA graph)", us_ckpt,
                            floor_mxfp4(ceilings, T), max_abs_diff_vs_kernel_words=f"{ckpt_err:.1e}"))
        rows.append(row("moe", f"T={T}", "ours bf16 MoeMLP on the dequantized weights (CUDA graph)", us_bf16,
                        floor_for(ceilings, T)))
        if "graph" in anchor:
            rows.append(row("moe", f"T={T}", "transformers MXFP4 Mxfp4GptOssMLP, triton_kernels (CUDA graph)",
                            anchor["graph"], floor_mxfp4(ceilings, T), eager_us=round(anchor["eager"], 2),
                            rel_err_vs_bf16_on_dequantized=f"{anchor['err']:.1e}"))
        elif "eager" in anchor:
            rows.append(row("moe", f"T={T}", "transformers MXFP4 Mxfp4GptOssMLP, triton_kernels (eager)",
                            anchor["eager"], floor_mxfp4(ceilings, T), capture=anchor.get("graph_error"),
                            rel_err_vs_bf16_on_dequantized=f"{anchor['err']:.1e}"))
        print(rows[-3:], flush=True)
        del xs
        torch.cuda.empty_cache()
    return rows
