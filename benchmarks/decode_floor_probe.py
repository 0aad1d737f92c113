#!/usr/bin/env python3
"""Decode B=1 physical floor and the decode variants, in one device call (issue 4).

Every number is device time per call from CUDA-graph replays (benchmarks/harness.py's
`median_us_graph`) over rotating inputs that together exceed 3x L2 (`rotation`: 10 buffers of
16.8 MB for the B=1 size), as the harness's decode rows:

1. floor: read-only passes over 16.8 MB (the B=1 K+V bytes) in Triton (each program sums its
   slice, one 4-byte store per program): one-shot (each program loads its whole slice at once)
   and looped (plain or software-pipelined loads), 128..2048 programs; the decode kernel's own
   access pattern (one program per (split, KV head), 128-byte rows 1 KB apart in K and in V)
   without any attention arithmetic; torch's `x.sum()`; a same-size device copy (16.8 MB read +
   16.8 MB written); an empty Triton kernel (one program and 256), i.e. the cost of a graph node.
2. decode, B=1 and B=32, contiguous and paged (64-token pages, shuffled): the general kernel
   (`_attn_fwd` + `_combine`, PDL; at B=32 also its fused merge) against `_decode` + `_combine`
   (the default, SQ1_DECODE) at other splits / blocks / stages; each variant checked against
   float64 first (poisoned output, run twice so the fused merge's counters must have been reset).

Loads _triton_attn.py straight from torch-ext (no build needed). Writes $OUT/decode_floor.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from harness import median_us_graph, rotation, load_package_file  # noqa: E402

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None



ta = load_package_file("attention/_triton_attn.py")
ref = load_package_file("reference.py")
HQ, HKV, D, S = 64, 8, 64, 8192
dev, bf = "cuda", torch.bfloat16
OUT = Path(os.environ.get("OUT", "probe_out"))
OUT.mkdir(parents=True, exist_ok=True)
NBYTES = 2 * S * HKV * D * 2  # B=1 K + V: 16,777,216 bytes
N = NBYTES // 2  # bf16 elements
results: dict = {"floor": [], "decode": []}


def _save():
    (OUT / "decode_floor.json").write_text(json.dumps(results, indent=1))


# --- floor kernels -----------------------------------------------------------------------------
@triton.jit
def _sum_oneshot(X, Y, per, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * per + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n, other=0.0)
    tl.store(Y + pid, tl.sum(x.to(tl.float32), 0))


@triton.jit
def _sum_loop(X, Y, per, n, BLOCK: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * per
    end = tl.minimum(base + per, n)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(base, end, BLOCK, num_stages=STAGES):
        offs = i + tl.arange(0, BLOCK)
        acc += tl.load(X + offs, mask=offs < end, other=0.0).to(tl.float32)
    tl.store(Y + pid, tl.sum(acc, 0))


@triton.jit
def _sum_decode_pattern(K, V, Y, per, HKV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                        PDL: tl.constexpr):
    # K, V (S, HKV, D): program (split, kvh) reads rows [split*per, +per) of head kvh: 128-byte rows
    # HKV*D*2 bytes apart, in BLOCK_N-row tiles, as the decode kernel does (no attention arithmetic)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid_s = tl.program_id(0)
    kvh = tl.program_id(1)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    s0 = pid_s * per
    for s in tl.range(s0, s0 + per, BLOCK_N):
        off = ((s + offs_n).to(tl.int64) * (HKV * HEAD_DIM) + kvh * HEAD_DIM)[:, None] + offs_d[None, :]
        acc += tl.load(K + off).to(tl.float32) + tl.load(V + off).to(tl.float32)
    tl.store(Y + pid_s * HKV + kvh, tl.sum(tl.sum(acc, 1), 0))


@triton.jit
def _empty(Y):
    pass


def run_floor():
    n_sets = rotation(NBYTES)
    xs = [torch.randn(N, device=dev, dtype=bf) for _ in range(n_sets)]
    ys = torch.empty(4096, device=dev, dtype=torch.float32)
    exp = xs[-1].float().sum().item()  # (the graph's last call reads the last buffer)

    def add(name, calls, check=None, **extra):
        try:
            t0 = time.time()
            t = median_us_graph(calls)
            r = dict(name=name, us=round(t, 2), TBps=round(NBYTES / t / 1e6, 3), **extra)
            if check is not None:
                r["rel_err"] = f"{check():.1e}"
            r["s"] = round(time.time() - t0, 1)
        except Exception as e:  # noqa: BLE001
            r = dict(name=name, error=repr(e)[:300], **extra)
        results["floor"].append(r)
        print("floor", r, flush=True)
        _save()

    pdl_ok = gdc_wait is not None and torch.cuda.get_device_capability()[0] >= 9

    def chk(progs):
        def f():
            torch.cuda.synchronize()
            return abs(ys[:progs].double().sum().item() - exp) / max(abs(exp), 1.0)
        return f

    # one-shot: each program loads its whole slice at once
    for progs, warps in ((256, 8), (512, 8), (1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 4)):
        per = N // progs
        for pdl in (False, True) if progs in (1024, 2048) and pdl_ok else (False,):
            add(f"triton one-shot {progs} progs x {per * 2 // 1024} KB, {warps} warps" + (", PDL" if pdl else ""),
                [lambda x=x: _sum_oneshot[(progs,)](x, ys, per, N, BLOCK=per, PDL=pdl, num_warps=warps,
                                                    launch_pdl=pdl) for x in xs],
                check=chk(progs), progs=progs, warps=warps, pdl=pdl)
    # looped, 132-multiples (one wave = 132 SMs) and powers of two
    for progs in (132, 264, 528, 1056, 256, 512):
        per = triton.cdiv(triton.cdiv(N, progs), 4096) * 4096
        progs_eff = triton.cdiv(N, per)
        for block, stages, warps in ((4096, 1, 8), (4096, 3, 8), (8192, 2, 8), (2048, 4, 4)):
            if per < block:
                continue
            add(f"triton loop {progs_eff} progs, block {block}, stages {stages}, {warps} warps",
                [lambda x=x: _sum_loop[(progs_eff,)](x, ys, per, N, BLOCK=block, STAGES=stages, PDL=False,
                                                     num_warps=warps) for x in xs],
                check=chk(progs_eff), progs=progs_eff, block=block, stages=stages, warps=warps)
    # the decode kernel's access pattern: (split, KV head) programs over K and V (S, HKV, D)
    kv = [(x[: N // 2].view(S, HKV, D), x[N // 2:].view(S, HKV, D)) for x in xs]
    for splits, bn, warps, stages, pdl in ((32, 64, 4, 3, False), (32, 64, 4, 3, True), (32, 256, 8, 1, False),
                                           (16, 64, 4, 3, False), (64, 64, 4, 3, False), (128, 64, 4, 2, False)):
        if pdl and not pdl_ok:
            continue
        per = S // splits
        add(f"decode pattern {splits} splits x {HKV} heads, BLOCK_N {bn}, {warps} warps, {stages} stages"
            + (", PDL" if pdl else ""),
            [lambda k=k, v=v: _sum_decode_pattern[(splits, HKV)](k, v, ys, per, HKV=HKV, HEAD_DIM=D, BLOCK_N=bn,
                                                                 PDL=pdl, num_warps=warps, num_stages=stages,
                                                                 launch_pdl=pdl) for k, v in kv],
            check=chk(splits * HKV), progs=splits * HKV, warps=warps)
    # torch: sum to a scalar, same-size copy
    add("torch x.sum() (bf16 -> bf16 scalar)", [lambda x=x: x.sum() for x in xs])
    dsts = [torch.empty_like(x) for x in xs]
    add("torch copy 16.8 MB (read 16.8 + write 16.8 MB)", [lambda x=x, y=y: y.copy_(x) for x, y in zip(xs, dsts)],
        bytes_moved=2 * NBYTES)
    # an empty kernel: the cost of one graph node
    add("triton empty kernel, 1 program", [lambda: _empty[(1,)](ys) for _ in xs])
    add("triton empty kernel, 256 programs", [lambda: _empty[(256,)](ys) for _ in xs])
    del xs, dsts, kv
    torch.cuda.empty_cache()


# --- decode ---------------------------------------------------------------------------------------
KNOBS = ("SQ1_DECODE", "SQ1_BLOCK_N", "SQ1_WARPS", "SQ1_STAGES", "SQ1_SPLITS")
DEFAULTS = {k: getattr(ta, k) for k in KNOBS}


def V(name, **kw):
    return (name, kw)


# (the fused wide-merge and EARLY variants of the 10:43 UTC run are gone from the code; their
# numbers are in docs/results/2026-11-22-h100-decode-v4.json and docs/NOTES-attention.md)
B1 = [
    V("general kernel (_attn_fwd + _combine, PDL)", SQ1_DECODE=False),
    V("general kernel, no PDL", SQ1_DECODE=False, _NOPDL=True),
    V("_decode + _combine, 32 splits (default)", SQ1_DECODE=True),
    V("_decode, 24 splits", SQ1_DECODE=True, SQ1_SPLITS=24),
    V("_decode, 16 splits, 128/4w/3s", SQ1_DECODE=True, SQ1_SPLITS=16, SQ1_BLOCK_N=128),
    V("_decode, 64 splits, 64/4w/2s", SQ1_DECODE=True, SQ1_SPLITS=64, SQ1_STAGES=2),
]
B1_PAGED = [B1[0], B1[2]]
B32 = [B1[0], V("general kernel, fused merge (FUSED_COMBINE)", SQ1_DECODE=False, FUSED_COMBINE=True), B1[2]]
B32_PAGED = [B1[0], B1[2]]


def apply(kw):
    for k, val in DEFAULTS.items():
        setattr(ta, k, val)
    ta.FUSED_COMBINE = False
    ta.DECODE_PDL = True
    for k, val in kw.items():
        if k == "_NOPDL":
            ta.DECODE_PDL = False
        else:
            setattr(ta, k, val)


def run_decode(copy_Bpus):
    sinks = torch.randn(HQ, device=dev)
    for b, paged, variants in ((1, False, B1), (1, True, B1_PAGED), (32, False, B32), (32, True, B32_PAGED)):
        kv_bytes = 2 * b * S * HKV * D * 2
        n_sets = rotation(kv_bytes)
        caches = [(torch.randn(b, S, HKV, D, device=dev, dtype=bf), torch.randn(b, S, HKV, D, device=dev, dtype=bf))
                  for _ in range(n_sets)]
        qd = torch.randn(b, HQ, D, device=dev, dtype=bf)
        lens = torch.full((b,), S, dtype=torch.int32, device=dev)
        kc, vc = caches[0]
        nb = min(b, 4)  # float64 reference for the first sequences
        exp = torch.cat([ref.attention(qd[i:i + 1].double(), kc[i].double(), vc[i].double(), scale=0.125,
                                       sinks=sinks.double(), causal=True) for i in range(nb)])
        bt = None
        if paged:
            page = 64
            n_pages = b * S // page
            perm = torch.randperm(n_pages, device=dev)
            bt = perm.reshape(b, S // page).to(torch.int32)
            inv = perm.argsort()
            caches = [(k_.reshape(n_pages, page, HKV, D)[inv].contiguous(), v_.reshape(n_pages, page, HKV, D)[inv].contiguous())
                      for k_, v_ in caches]
        floor = kv_bytes / copy_Bpus

        def call(kc_, vc_, kw, out):
            def f():
                apply(kw)
                ta.attn_fwd(qd, kc_, vc_, out, cu_q=None, cu_k=None, seqlens_k=lens, block_table=bt, sinks=sinks,
                            batch=b, seq_q_fixed=1, max_seqlen_q=1, max_seqlen_k=S, scale=0.125, window_left=-1,
                            window_right=0)
            return f

        for name, kw in variants:
            try:
                out = torch.empty(b, HQ, D, device=dev, dtype=bf)
                out.fill_(float("nan"))
                f = call(*caches[0], kw, out)
                f()
                torch.cuda.synchronize()
                err1 = ((out[:nb].double() - exp).abs().max() / exp.abs().max()).item()
                out.fill_(float("nan"))
                f()
                torch.cuda.synchronize()
                err = max(err1, ((out[:nb].double() - exp).abs().max() / exp.abs().max()).item())
                nan = bool(torch.isnan(out).any())
                counters = int(ta._COUNTERS[torch.cuda.current_device()].abs().sum()) if ta._COUNTERS else 0
                t = median_us_graph([call(c[0], c[1], kw, torch.empty(b, HQ, D, device=dev, dtype=bf))
                                     for c in caches])
                t2 = median_us_graph([call(c[0], c[1], kw, torch.empty(b, HQ, D, device=dev, dtype=bf))
                                      for c in caches])
                r = dict(B=b, paged=paged, name=name, us=round(t, 2), us_repeat=round(t2, 2),
                         pct_floor=round(100 * floor / t, 1), GBps=round(kv_bytes / t / 1e3), rel_err=f"{err:.1e}",
                         nan=nan, counters_left=counters, caches=n_sets)
            except Exception as e:  # noqa: BLE001
                r = dict(B=b, paged=paged, name=name, error=repr(e)[:300])
            apply({})
            results["decode"].append(r)
            print("decode", r, flush=True)
            _save()
        del caches
        torch.cuda.empty_cache()


def main():
    results["device"] = torch.cuda.get_device_name()
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(results["device"], results["date"], flush=True)
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    copy_us = 1e3 * triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    copy_Bpus = 2 * n / copy_us
    results["copy_TBps"] = round(copy_Bpus / 1e6, 3)
    results["floor_us_at_copy_bw"] = round(NBYTES / copy_Bpus, 2)
    results["target_us_70pct"] = round(NBYTES / copy_Bpus / 0.7, 2)
    print("copy TB/s", results["copy_TBps"], "floor", results["floor_us_at_copy_bw"], "70% target",
          results["target_us_70pct"], flush=True)
    del src, dst
    torch.cuda.empty_cache()
    run_floor()
    run_decode(copy_Bpus)
    _save()
    print("\nFLOOR (16.8 MB)")
    for r in results["floor"]:
        print(f"  {r.get('us', 'ERR'):>8} us  {r.get('TBps', ''):>6} TB/s  {r['name']}  {r.get('error', '')}")
    print("\nDECODE")
    for r in results["decode"]:
        print(f"  B={r['B']:<2} paged={int(r['paged'])} {r.get('us', 'ERR'):>8} ({r.get('us_repeat', '')}) us "
              f"{r.get('pct_floor', ''):>5}%  err {r.get('rel_err', '')} nan={r.get('nan', '')} "
              f"cnt={r.get('counters_left', '')}  {r['name']}  {r.get('error', '')}")


if __name__ == "__main__":
    main()
