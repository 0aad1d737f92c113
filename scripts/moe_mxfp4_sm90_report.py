#!/usr/bin/env python3
"""Compile the MoE grouped GEMM for sm_90a without a GPU (Triton's bundled ptxas / nvdisasm) in the bf16,
"mxfp4" and "mxfp4_asm" formats, with the host's first tile of each family at gpt-oss-20b shapes, and report
registers, local memory (spills), shared memory, MMA instructions (HMMA: mma.sync, HGMMA: wgmma), `.ftz` in the
PTX, and the SASS instruction mix of the main loop per weight value and thread.

    python scripts/moe_mxfp4_sm90_report.py        # needs triton (the CPU wheel is enough)
"""

from __future__ import annotations

import collections
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
spec = importlib.util.spec_from_file_location("grouped_gemm", ROOT / "torch-ext/gpt_oss_kernels/moe/grouped_gemm.py")
gg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gg)


def loop_mix(sass: str):
    """Instruction counts of the longest backward-branch loop (the K loop)."""
    lines = [ln for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    addr = lambda ln: int(re.search(r"/\*([0-9a-f]{4,})\*/", ln).group(1), 16)  # noqa: E731
    best = None
    for ln in lines:
        m = re.search(r"BRA.*\.L_x_(\d+)", ln)
        if not m:
            continue
        idx = sass.find(f".L_x_{m.group(1)}:")
        tgt = next((int(mm.group(1), 16) for a in sass[idx:].splitlines()[1:4]
                    if (mm := re.search(r"/\*([0-9a-f]{4,})\*/", a))), None)
        if tgt is not None and tgt < addr(ln) and (best is None or addr(ln) - tgt > best[1] - best[0]):
            best = (tgt, addr(ln))
    ops = collections.Counter()
    for ln in lines:
        if best[0] <= addr(ln) <= best[1]:
            m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", ln)
            if m:
                ops[m.group(1)] += 1
    return sum(ops.values()), ops


def compile_one(first, cfg, fmt, block_m, n, k):
    names = gg._moe_gemm_kernel.arg_names
    wt = "*i32" if fmt != "bf16" else "*bf16"
    ptr = {"a_ptr": "*bf16", "w_ptr": wt, "ws_ptr": "*u8" if fmt != "bf16" else "*bf16", "bias_ptr": "*bf16",
           "out_ptr": "*bf16", "sorted_pos_ptr": "*i32", "block_expert_ptr": "*i32", "groups_ptr": "*i32",
           "topk_w_ptr": "*i32" if first else "*fp32", "a_half_ptr": "*bf16", "w_tail_ptr": wt}
    const = dict(FIRST=first, HAS_BIAS=True, EVEN_K=k % cfg.bk == 0, W_FORMAT=fmt, DOT_PRECISION="tf32",
                 W_TMA=False, A_TMA=False, BLOCK_M=block_m, BLOCK_N=cfg.bn, BLOCK_K=cfg.bk, GROUP_M=cfg.group_m,
                 SPLIT_M=cfg.split_m and block_m >= 128, BN_TAIL=gg.bn_tail(n, cfg), NARROW_LAST=cfg.narrow_last,
                 SWAP_AB=cfg.swap_ab and fmt != "bf16",
                 stride_ak=1, stride_wk=1, stride_bn=1, stride_on=1)
    sig = {a: "constexpr" if a in const else ptr.get(a, "fp32" if a in ("alpha", "limit") else "i32") for a in names}
    div16 = ("N", "K", "stride_am", "stride_we", "stride_wn", "stride_se", "stride_sn", "stride_be", "stride_om")
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(names) if sig[a].startswith("*") or a in div16}
    ck = triton.compile(ASTSource(fn=gg._moe_gemm_kernel, signature=sig, constexprs=const, attrs=attrs),
                        target=GPUTarget("cuda", 90, 32), options=dict(num_warps=cfg.warps, num_stages=cfg.stages))
    cubin = Path("/tmp") / f"gok_moe_{fmt}_{int(first)}_{block_m}.cubin"
    cubin.write_bytes(ck.asm["cubin"])
    res = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    regs, stack, _, local = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res).groups()
    sass = subprocess.run([str(BIN / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True).stdout
    n_loop, ops = loop_mix(sass)
    per_thread = cfg.bn * cfg.bk / (cfg.warps * 32)
    return dict(fmt=fmt, gemm=1 if first else 2, block_m=block_m, tile=f"{cfg.bn}x{cfg.bk}/{cfg.warps}w/{cfg.stages}s{'/swap' if cfg.swap_ab else ''}",
                regs=int(regs), local_bytes=int(local), stack=int(stack), smem=ck.metadata.shared,
                hmma=sass.count("HMMA"), hgmma=sass.count("HGMMA"), ptx_ftz=len(re.findall(r"\.ftz", ck.asm["ptx"])),
                loop_instr_per_value=round(n_loop / per_thread, 2), top=dict(ops.most_common(8)))


def main():
    for fmt in ("bf16", "mxfp4", "mxfp4_asm"):
        for block_m in (16, 128):
            for first, n in ((True, 5760), (False, 2880)):
                fam = "bf16" if fmt == "bf16" else "mxfp4"
                cfg = gg.candidates(block_m, first, True, fam)[0]._replace(w_tma=False, a_tma=False)
                print(json.dumps(compile_one(first, cfg, fmt, block_m, n, 2880)), flush=True)


if __name__ == "__main__":
    main()
