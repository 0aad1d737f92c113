"""Probe (2026-12-06, late; not run yet: no device time was left): moe_small_prepare with 256 against 1024 threads
per cluster CTA, the op alone and the MXFP4 block, CUDA-graph replay, T = 1, 4, 16, 20b shapes.

Why: in a batch-16 decode step (H100, docs/results/2026-12-06-decode-gemm-variants.md) moe_small_prepare takes 18.1 us
per layer at T = 16 against 7.2 at T = 1; its logit loop gives each of 8 warps 8 (token, expert) pairs at T = 16.
Predicted: T = 16 about 13 us, T = 1 unchanged. Added 2026-12-07: the logit loop unrolled by 4 ("u" variants: its
shared-memory loads issued ahead of the FMA chain, same summation order), predicted -2 to -3 us at T = 16. First `git apply probes/small_prepare_threads.patch` (the probe-only
switch GOK_SMALL_PREPARE_THREADS in kernel_src/moe/moe_cuda.cu), then
`scripts/gpu_run.sh --no-tests --no-bench --probe probes/small_prepare_threads.py`; the whole-model A/B:
`benchmarks/e2e_decode.py --mxfp4 --no-cb --no-static --steps 32 --ab --ab-env GOK_SMALL_PREPARE_THREADS=1024
--ab-only env_GOK_SMALL_PREPARE_THREADS=1024`, and the sanitizers on tests/test_moe.py's prepare test with the
variable set."""
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
VARIANTS = ("256", "1024", "256u", "1024u")  # threads per CTA; "u": the logit loop unrolled by 4
E, K = 32, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = harness.load_kernel()
    ops = kernel._ops.ops
    g = torch.Generator(device="cuda").manual_seed(0)
    rw = (torch.randn(E, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    rb = (torch.randn(E, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    mx = {}
    for name, shape in (("gate_up", (E, H, 2 * I)), ("down", (E, I, H))):
        w = torch.randn(shape, device="cuda", generator=g) * 0.02
        b, s = kernel.quantize_mxfp4(w)
        mx[name] = (kernel.mxfp4_kernel_words(b), s,
                    (torch.randn(shape[0], shape[2], device="cuda", generator=g) * 0.02).to(torch.bfloat16))
        del w
    mx_args = (*mx["gate_up"], *mx["down"])
    res = {"device": torch.cuda.get_device_name()}
    with torch.inference_mode():
        for T in (1, 4, 16):
            xs = [torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16) for _ in range(8)]
            row, outs = {}, {}
            for rnd in range(2):
                for n in VARIANTS:
                    os.environ["GOK_SMALL_PREPARE_THREADS"] = n
                    outs[n] = [t.clone() for t in ops.moe_prepare(xs[0], rw, rb, K, 16, I)[:5]]
                    prep = median_us_graph([lambda x=x: ops.moe_prepare(x, rw, rb, K, 16, I) for x in xs], replays=50)
                    block = median_us_graph([lambda x=x: kernel.moe_mxfp4(x, rw, rb, K, *mx_args)[0] for x in xs],
                                            replays=30)
                    row[f"prepare {n}"] = round(min(row.get(f"prepare {n}", 1e9), prep), 2)
                    row[f"block {n}"] = round(min(row.get(f"block {n}", 1e9), block), 2)
            row["same outputs"] = all(torch.equal(a, b) for n in VARIANTS[1:] for a, b in zip(outs["256"], outs[n]))
            res[T] = row
            print("T", T, row, flush=True)
    os.environ.pop("GOK_SMALL_PREPARE_THREADS", None)
    (args.out / "small_prepare_threads.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
