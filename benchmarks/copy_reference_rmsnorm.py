"""Same-size references for RMSNorm: a device copy (torch clone, and the best of a plain Triton copy over
several program sizes) and an add of the same bytes, against our ops and Liger.

Graph replay with rotating inputs and outputs kept alive (harness.median_us_graph), three repeats each.
Usage (GPU machine, after the build): python benchmarks/copy_reference_rmsnorm.py OUTDIR
"""
import json, sys
from pathlib import Path
import torch
import triton
import triton.language as tl
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import median_us_graph, rotation, measure_ceilings, load_kernel  # noqa: E402
from liger_kernel.ops.rms_norm import LigerRMSNormFunction  # noqa: E402
kernel = load_kernel()


@triton.jit
def _copy(X, Y, n, BLOCK: tl.constexpr):
    # each program copies one BLOCK-element slice in one go (all loads in flight at once)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


def triton_copy(x, block):
    y = torch.empty_like(x)
    _copy[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), BLOCK=block, num_warps=4 if block <= 4096 else 8)
    return y


H, EPS = 2880, 1e-5
ceil = measure_ceilings(); print("ceilings", ceil, flush=True)
w = 1 + 0.1 * torch.randn(H, device="cuda", dtype=torch.float32)
res = []
with torch.no_grad():
    for T in (1024, 4096, 16384):
        n = T * H * 2
        sets = [(torch.randn(T, H, device="cuda", dtype=torch.bfloat16), torch.randn(T, H, device="cuda", dtype=torch.bfloat16)) for _ in range(rotation(4 * n))]
        def rec(name, fn, nbytes):
            for rep in range(3):
                us = median_us_graph([lambda a=a: fn(*a) for a in sets])
                res.append({"T": T, "impl": name, "rep": rep, "us": round(us, 3), "pct_of_copy_ceiling": round(100 * nbytes / ceil["copy_bytes_per_us"] / us, 1)})
                print(res[-1], flush=True)
        rec("torch clone (x read, copy written)", lambda x, r: x.clone(), 2 * n)
        for block in (2048, 4096, 8192, 16384):
            rec(f"Triton copy, {block} elements per program", lambda x, r, b=block: triton_copy(x, b), 2 * n)
        rec("ours rms_norm", lambda x, r: kernel.rms_norm(x, w, EPS), 2 * n)
        rec("Liger", lambda x, r: LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", False), 2 * n)
        rec("torch add (x, r read, sum written)", lambda x, r: x + r, 3 * n)
        rec("ours fused_add_rms_norm", lambda x, r: kernel.fused_add_rms_norm(x, r, w, EPS), 4 * n)
        del sets; torch.cuda.empty_cache()
Path(sys.argv[1], "copy_probe.json").write_text(json.dumps({"ceilings": ceil, "rows": res}, indent=1))
