"""gpt-oss-120b's expert count (E = 128; the other shapes are 20b's) at decode sizes: ``moe_prepare`` (one cluster
launch for router GEMM, route and dispatch up to T = 4 at this E; the separate kernels above) against the separate
ops (``F.linear``, ``moe_route``, ``moe_dispatch``: what ran at every size for E > 64 before 2026-12-08), and
the whole MXFP4 block with kernel words, CUDA-graph replay. Weights: random e2m1 bytes and scale bytes 119-123 (no quantization pass over 128 experts).
``python benchmarks/harness.py --only moe_120b``."""

import torch

from harness import floor_us, median_us_graph, rotation, row
from harness_moe import H, I

E_120B, K_120B = 128, 4


def prepare_120b_rows(kernel, ceilings: dict) -> list[dict]:
    import sys

    mx = sys.modules[kernel.__name__ + ".moe.mxfp4"]
    ops = kernel._ops.ops
    g = torch.Generator(device="cuda").manual_seed(1)

    def packed(n, k):
        blocks = torch.randint(0, 256, (E_120B, n, k // 32, 16), device="cuda", dtype=torch.uint8, generator=g)
        scales = torch.randint(119, 124, (E_120B, n, k // 32), device="cuda", dtype=torch.uint8, generator=g)
        bias = (0.02 * torch.randn(E_120B, n, device="cuda", generator=g)).to(torch.bfloat16)
        return kernel.mxfp4_kernel_words(blocks), scales, bias

    gate_up, down = packed(2 * I, H), packed(H, I)
    rw = (0.02 * torch.randn(E_120B, H, device="cuda", generator=g)).to(torch.bfloat16)
    rb = (0.02 * torch.randn(E_120B, device="cuda", generator=g)).to(torch.bfloat16)
    rows = []
    for T in (1, 4, 16):
        touched = E_120B * (1 - (1 - K_120B / E_120B) ** T)
        n_sets = rotation(int(touched * (H * 2 * I + I * H) * (0.5 + 1 / 32)))
        xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(n_sets)]
        one = [lambda x=x: ops.moe_prepare(x, rw, rb, K_120B, 16, I) for x in xs]

        def separate(x):
            logits = torch.nn.functional.linear(x, rw, rb)
            w, ids = ops.moe_route(logits, K_120B)
            return w, ids, *ops.moe_dispatch(ids, E_120B, 16)

        sep = [lambda x=x: separate(x) for x in xs]
        block = [lambda x=x: mx.moe_with_scores_mxfp4(x, rw, rb, K_120B, *gate_up[:2], gate_up[2], *down[:2], down[2],
                                                      1.702, 7.0) for x in xs]
        with torch.inference_mode():
            a, b = one[0](), sep[0]()
            same = bool(torch.equal(a[2], b[1]) and torch.equal(a[4], b[3]))
            us_one = median_us_graph(one, replays=40)
            us_sep = median_us_graph(sep, replays=40)
            us_block = median_us_graph(block, replays=40)
        router_floor = floor_us(ceilings, bytes_moved=E_120B * H * 2 + T * H * 2)
        path = "one cluster launch" if T * -(-E_120B // 8) <= 64 else "separate kernels inside the op"  # moe_cuda.cu
        rows.append(row("moe_120b", f"T={T}", "moe_prepare, E=128", us_one, router_floor, path=path,
                        same_experts_and_blocks_as_separate_ops=same))
        rows.append(row("moe_120b", f"T={T}", "F.linear + moe_route + moe_dispatch, E=128", us_sep, router_floor))
        block_floor = floor_us(ceilings, bytes_moved=touched * (H * 2 * I + I * H) * (0.5 + 1 / 32) + T * H * 4)
        rows.append(row("moe_120b", f"T={T}", "ours MXFP4 MoeMLP, E=128, kernel words (CUDA graph)", us_block,
                        block_floor, input_sets=n_sets))
        print(rows[-3:], flush=True)
        del xs
    del gate_up, down
    torch.cuda.empty_cache()
    return rows


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    return prepare_120b_rows(kernel, ceilings)
