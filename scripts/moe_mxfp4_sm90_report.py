#!/usr/bin/env python3
"""Compile the MoE grouped GEMM for sm_90a without a GPU (Triton's bundled ptxas / nvdisasm) in the bf16,
"mxfp4", "mxfp4_asm", "fp8" and "fp8_block" formats, with the host's first tile of each family at gpt-oss-20b
shapes (plain loads and, for bf16 / FP8 tiles that use them, TMA descriptors), and finalize_slice
(quant/fp8_triton.py; the CUDA C++ FP8 activation kernels: `make check-cuda`), and report registers, local memory (spills), shared memory, MMA instructions (HMMA:
mma.sync, HGMMA / QGMMA: bf16 / e4m3 wgmma), `.ftz` in the PTX, and the SASS instruction mix of the main loop per
weight value and thread. A kernel that does not compile for sm_90a fails here, before any device time is spent.

    python scripts/moe_mxfp4_sm90_report.py        # needs triton (the CPU wheel is enough)
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from interpret_common import load

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
gg = load("moe/grouped_gemm.py")
fq = load("quant/fp8_triton.py")


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
    fp8 = fmt.startswith("fp8")
    a_t = "*fp8e4nv" if fp8 else "*bf16"
    w_t = {"bf16": "*bf16", "fp8": "*fp8e4nv", "fp8_block": "*fp8e4nv"}.get(fmt, "*i32")
    ws_t = "*fp32" if fp8 else ("*u8" if fmt != "bf16" else "*bf16")
    # TMA descriptors: bf16 weights (E, K, N) in (1, BLOCK_K, BLOCK_N) blocks, FP8 weights (E, N, K) in (1, BLOCK_N,
    # BLOCK_K) blocks; GEMM 2's activation rows (BLOCK_M, BLOCK_K).
    w_tma = cfg.w_tma and fmt in ("bf16", "fp8", "fp8_block")
    a_tma = cfg.a_tma and not first
    tail = gg.bn_tail(n, cfg)
    w_blk = (lambda bn: f"[1,{bn},{cfg.bk}]") if fp8 else (lambda bn: f"[1,{cfg.bk},{bn}]")
    w_desc = lambda bn: f"tensordesc<{w_t[1:]}{w_blk(bn)}>"  # noqa: E731
    ptr = {"a_ptr": f"tensordesc<{a_t[1:]}[{block_m},{cfg.bk}]>" if a_tma else a_t,
           "w_ptr": w_desc(cfg.bn) if w_tma else w_t, "ws_ptr": ws_t, "as_ptr": "*fp32", "bias_ptr": "*bf16",
           "out_ptr": "*bf16", "sorted_pos_ptr": "*i32", "block_expert_ptr": "*i32", "groups_ptr": "*i32",
           "topk_w_ptr": "*i32" if first else "*fp32",
           "a_half_ptr": f"tensordesc<{a_t[1:]}[{block_m // 2},{cfg.bk}]>" if a_tma else a_t,
           "w_tail_ptr": w_desc(tail or cfg.bn) if w_tma else w_t}
    const = dict(FIRST=first, HAS_BIAS=True, EVEN_K=k % cfg.bk == 0, W_FORMAT=fmt, DOT_PRECISION="tf32",
                 W_TMA=w_tma, A_TMA=a_tma, BLOCK_M=block_m, BLOCK_N=cfg.bn, BLOCK_K=cfg.bk, GROUP_M=cfg.group_m or 8,
                 SPLIT_M=cfg.split_m and block_m >= 128, BN_TAIL=tail, NARROW_LAST=cfg.narrow_last,
                 SPLIT_K=cfg.split_k,
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
    return dict(fmt=fmt, gemm=1 if first else 2, block_m=block_m,
                tile=f"{cfg.bn}x{cfg.bk}/{cfg.warps}w/{cfg.stages}s" + ("/tma" if w_tma or a_tma else ""),
                regs=int(regs), local_bytes=int(local), stack=int(stack), smem=ck.metadata.shared,
                hmma=sass.count("HMMA"), hgmma=sass.count("HGMMA"), qgmma=sass.count("QGMMA"),
                ptx_ftz=len(re.findall(r"\.ftz", ck.asm["ptx"])),
                loop_instr_per_value=round(n_loop / per_thread, 2), top=dict(ops.most_common(8)))


def compile_finalize_slice():
    """finalize_slice (weighted, foreign ids skipped) with the host's block at gpt-oss-20b shapes: H 2880."""
    for kern, sig, const, warps in (
            (fq._finalize_slice_kernel, dict(y_ptr="*bf16", ids_ptr="*i32", w_ptr="*fp32", out_ptr="*bf16", h="i32",
                                             k="i32", num_experts="i32", stride_y="i32"),
             dict(HAS_WEIGHTS=True, SKIP_FOREIGN=True, BLOCK_N=1024), 4),):
        full = {a: "constexpr" if a in const else sig[a] for a in kern.arg_names}
        ck = triton.compile(ASTSource(fn=kern, signature=full, constexprs=const),
                            target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
        cubin = Path("/tmp") / f"gok_{kern.fn.__name__}.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        res = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
        regs, stack, _, local = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res).groups()
        print(json.dumps(dict(kernel=kern.fn.__name__, warps=warps, regs=int(regs), local_bytes=int(local),
                              stack=int(stack))), flush=True)


def main():
    for fmt in ("bf16", "mxfp4", "mxfp4_asm", "fp8", "fp8_block"):
        for block_m in (16, 128):
            for first, n in ((True, 5760), (False, 2880)):
                cfg = gg.tiles(block_m, first, True, fmt)[0]
                print(json.dumps(compile_one(first, cfg, fmt, block_m, n, 2880)), flush=True)
                if cfg.w_tma or (cfg.a_tma and not first):  # and the plain-load variant (no TMA on the device)
                    print(json.dumps(compile_one(first, cfg._replace(w_tma=False, a_tma=False), fmt, block_m, n,
                                                 2880)), flush=True)
    compile_finalize_slice()


if __name__ == "__main__":
    main()
