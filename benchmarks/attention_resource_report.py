#!/usr/bin/env python3
"""Compile the attention Triton kernels for sm_90 WITHOUT a GPU and print the resource report
(registers, stack = spills) and whether the SASS uses HGMMA, for every prefill autotune config and
the decode / combine kernels. Needs triton (its bundled ptxas / cuobjdump / nvdisasm).

    python benchmarks/attention_resource_report.py
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TARGET = GPUTarget("cuda", 90, 32)


def _load():
    spec = importlib.util.spec_from_file_location(
        "_triton_attn", ROOT / "torch-ext" / "gpt_oss_kernels" / "attention" / "_triton_attn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(kernel) -> str:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "attn_report.cubin"
    path.write_bytes(kernel.asm["cubin"])
    usage = subprocess.run([BIN / "cuobjdump", "-res-usage", path], capture_output=True, text=True).stdout
    line = next((l.split() for l in usage.splitlines() if "REG:" in l), ["?", "?"])
    sass = subprocess.run([BIN / "nvdisasm", path], capture_output=True, text=True).stdout
    mma = "HGMMA" if "HGMMA" in sass else "HMMA" if "HMMA" in sass else "no MMA"
    return f"{line[0]:8} {line[1]:10} {mma}"


def main() -> None:
    ta = _load()
    fn = ta._attn_fwd
    names = fn.arg_names
    ptr = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "OPart": "*fp32", "MPart": "*fp32",
           "LPart": "*fp32", "Sinks": "*fp32", "CuQ": "*i32", "CuK": "*i32", "SeqK": "*i32", "BlockTable": "*i32", "Counter": "*i32"}
    consts = {"HQ", "G", "HEAD_DIM", "VARLEN_Q", "KV_MODE", "PAGE", "HAS_WL", "HAS_WR", "HAS_SINK", "SPLIT",
              "BLOCK_M", "BLOCK_N", "LONG", "BLOCK_N_R", "ALIGN", "ONE_LOOP", "FUSED", "BLOCK_S", "CHUNK_S", "TILES", "PDL"}

    def attn(bm, bn, warps, stages, split, wl, kv_mode=0, **extra):
        sig = {n: ptr.get(n, "constexpr" if n in consts else "fp32" if n == "qk_scale" else "i32") for n in names}
        cv = dict(HQ=64, G=8, HEAD_DIM=64, VARLEN_Q=kv_mode == 0, KV_MODE=kv_mode, PAGE=64 if kv_mode == 2 else 1,
                  HAS_WL=wl, HAS_WR=True, HAS_SINK=True, SPLIT=split, BLOCK_M=bm, BLOCK_N=bn, LONG=False,
                  BLOCK_N_R=0, ALIGN=False, ONE_LOOP=False, FUSED=False, BLOCK_S=2, CHUNK_S=1, TILES=1, PDL=False)
        cv.update(extra)
        opts = dict(num_warps=warps, num_stages=stages, launch_pdl=cv["PDL"])
        if cv.get("maxnreg"):
            opts["maxnreg"] = cv["maxnreg"]
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in cv.items() if k != "maxnreg"})
        return triton.compile(src, target=TARGET, options=opts)

    print("kernel                                   regs     stack      mma")
    for cfg in ta._PREFILL_CONFIGS:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        for wl in (False, True):
            tag = f"prefill {bm}x{bn} w{cfg.num_warps} s{cfg.num_stages} {'window' if wl else 'full'}"
            print(f"{tag:40} {_report(attn(bm, bn, cfg.num_warps, cfg.num_stages, False, wl))}")
    for cfg in ta._WINDOW_CONFIGS:
        kw = cfg.kwargs
        tag = f"window {kw['BLOCK_M']}x{kw['BLOCK_N']} r{kw['BLOCK_N_R']} w{cfg.num_warps} s{cfg.num_stages} maxnreg {cfg.maxnreg}"
        print(f"{tag:40} {_report(attn(kw['BLOCK_M'], kw['BLOCK_N'], cfg.num_warps, cfg.num_stages, False, True, BLOCK_N_R=kw['BLOCK_N_R'], maxnreg=cfg.maxnreg))}")
    w = ta._window_fwd
    wn = w.arg_names
    wconsts = {"HQ", "G", "HEAD_DIM", "VARLEN_Q", "KV_MODE", "HAS_SINK", "KEYS_LEFT", "BLOCK_P", "HEADS_PER_STEP"}
    wsig = {n: ptr.get(n, "constexpr" if n in wconsts else "fp32" if n == "qk_scale" else "i32") for n in wn}
    # the runtime specialises pointers and strides divisible by 16: so does this report here
    div16 = {(wn.index(n),): [["tt.divisibility", 16]] for n in wn if n in ptr or n.startswith("stride_")}
    for cfg in ta._WINDOW_FWD_CONFIGS:
        cv = dict(dict(HQ=64, G=8, HEAD_DIM=64, VARLEN_Q=True, KV_MODE=0, HAS_SINK=True, KEYS_LEFT=128,
                       HEADS_PER_STEP=1), **cfg.kwargs)
        opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if cfg.maxnreg:
            opts["maxnreg"] = cfg.maxnreg
        src = ASTSource(fn=w, signature=wsig, constexprs={(wn.index(k),): v for k, v in cv.items()}, attrs=div16)
        tag = (f"window_fwd P{cv['BLOCK_P']}x{cv['HEADS_PER_STEP']}h w{cfg.num_warps} s{cfg.num_stages}"
               f" maxnreg {cfg.maxnreg}")
        print(f"{tag:40} {_report(triton.compile(src, target=TARGET, options=opts))}")
    for kv_mode, layout in ((1, "cache"), (2, "paged")):
        for bm in (16, 32, 64):
            print(f"{'decode ' + layout + f' BLOCK_M={bm} split pdl':40} {_report(attn(bm, 64, 4, 3, True, False, kv_mode, PDL=True))}")
    for bm, bn, warps, stages in ((16, 64, 4, 3), (16, 128, 4, 3), (16, 128, 8, 3), (16, 64, 4, 4), (64, 64, 4, 3)):
        tag = f"decode fused {bm}x{bn} w{warps} s{stages}"
        cs = max(1, 8192 // (bm * 64))
        print(f"{tag:40} {_report(attn(bm, bn, warps, stages, True, False, 1, FUSED=True, BLOCK_S=32, CHUNK_S=min(32, cs)))}")
    # `_decode` (Sq = 1): (BLOCK_N, warps, stages, kv_mode)
    dn = ta._decode.arg_names
    dconsts = {"HQ", "G", "HEAD_DIM", "KV_MODE", "PAGE", "HAS_WL", "HAS_SINK", "BLOCK_M", "BLOCK_N", "SPLIT", "PDL"}
    for bn, warps, stages, kv_mode in ((64, 4, 3, 1), (64, 4, 3, 2), (128, 4, 3, 1)):
        sig = {n: ptr.get(n, "constexpr" if n in dconsts else "fp32" if n == "qk_scale" else "i32") for n in dn}
        cv = dict(HQ=64, G=8, HEAD_DIM=64, KV_MODE=kv_mode, PAGE=64 if kv_mode == 2 else 1, HAS_WL=False,
                  HAS_SINK=True, BLOCK_M=16, BLOCK_N=bn, SPLIT=True, PDL=True)
        k = triton.compile(ASTSource(fn=ta._decode, signature=sig, constexprs={(dn.index(n),): v for n, v in cv.items()}),
                           target=TARGET, options=dict(num_warps=warps, num_stages=stages, launch_pdl=True))
        tag = f"_decode {'paged' if kv_mode == 2 else 'cache'} {bn} w{warps} s{stages}"
        print(f"{tag:40} {_report(k)}")
    c = ta._combine
    cn = c.arg_names
    sig = {"OPart": "*fp32", "MPart": "*fp32", "LPart": "*fp32", "Sinks": "*fp32", "Out": "*bf16", "total_rows": "i32",
           "num_splits": "i32", "HQ": "constexpr", "HEAD_DIM": "constexpr", "HAS_SINK": "constexpr", "BLOCK_S": "constexpr"}
    for bs, warps in ((4, 2), (32, 4), (64, 4)):
        cv = {"HQ": 64, "HEAD_DIM": 64, "HAS_SINK": True, "BLOCK_S": bs}
        k = triton.compile(ASTSource(fn=c, signature=sig, constexprs={(cn.index(n),): v for n, v in cv.items()}),
                           target=TARGET, options=dict(num_warps=warps))
        print(f"{'combine BLOCK_S=' + str(bs):40} {_report(k)}")


if __name__ == "__main__":
    main()
