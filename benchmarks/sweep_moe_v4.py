#!/usr/bin/env python3
"""MoE v4 probe (device run, no build needed): the two grouped GEMMs of grouped_gemm.py timed
alone (do_bench) and back to back inside one CUDA graph, for several tile variants, at
T = 4096 / 1024 / 16384, gpt-oss-20b shapes, bf16, random weights (std 0.02) and a random router.
Dispatch is a torch re-implementation of moe_dispatch's layout (host syncs: probe only).

    python benchmarks/sweep_moe_v4.py [--budget-s 150]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def torch_dispatch(ids: torch.Tensor, num_experts: int, block_m: int):
    """moe_dispatch's layout: slots sorted by expert, each expert padded to block_m rows; sorted_pos
    (nb * block_m,) holds the slot or -1, block_expert (nb,) the expert or -1 (nb: the T*k bound)."""
    flat = ids.flatten().long()
    m = flat.numel()
    nb = (m + min(num_experts, m) * (block_m - 1)) // block_m
    counts = torch.bincount(flat, minlength=num_experts).cpu()
    order = torch.sort(flat, stable=True).indices
    sp = torch.full((nb * block_m,), -1, dtype=torch.int32, device=ids.device)
    be = torch.full((nb,), -1, dtype=torch.int32, device=ids.device)
    row, src = 0, 0
    for e in range(num_experts):
        c = int(counts[e])
        if c == 0:
            continue
        sp[row:row + c] = order[src:src + c].to(torch.int32)
        blocks = (c + block_m - 1) // block_m
        be[row // block_m:row // block_m + blocks] = e
        row += blocks * block_m
        src += c
    return sp, be


def probe_args():
    """(args with --out, grouped_gemm loaded from torch-ext) for the MoE probes; the tuner off (fixed tiles)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    os.environ["GOK_MOE_AUTOTUNE"] = "0"
    return args, _gg()


def random_experts(num_experts=32, hidden=2880, inter2=5760, device="cuda"):
    """gpt-oss-20b expert weights for the probes: (w1, b1, w2, b2), bf16, std 0.02, seed 0."""
    torch.manual_seed(0)
    rnd = lambda *s: (torch.randn(*s, device=device) * 0.02).to(torch.bfloat16)  # noqa: E731
    return rnd(num_experts, hidden, inter2), rnd(num_experts, inter2), rnd(num_experts, inter2 // 2, hidden), \
        rnd(num_experts, hidden)


def random_routing(t, num_experts, top_k, block_m, hidden=2880, device="cuda"):
    """(hidden (t, H) bf16, topk weights fp32, sorted_pos, block_expert) for a random router."""
    x = torch.randn(t, hidden, device=device, dtype=torch.bfloat16)
    top = torch.randn(t, num_experts, device=device).topk(top_k, dim=1)
    wts, ids = torch.softmax(top.values, dim=1).contiguous(), top.indices.to(torch.int32)
    sorted_pos, block_expert = torch_dispatch(ids, num_experts, block_m)
    return x, wts, sorted_pos, block_expert


def routed_case(gg, t, num_experts=32, top_k=4, hidden=2880, inter2=5760, device="cuda"):
    """One probe size: (block_m, m_bucket, hidden, weights, sorted_pos, block_expert, act, y) for a random router
    at T = t, with GEMM 1's output (padded sorted rows) and GEMM 2's (T*k slots) allocated."""
    m = t * top_k
    block_m = gg.block_m_for(m, num_experts)
    x, wts, sorted_pos, block_expert = random_routing(t, num_experts, top_k, block_m, hidden, device)
    act = torch.empty(sorted_pos.numel(), inter2 // 2, device=device, dtype=torch.bfloat16)
    y = torch.empty(m, hidden, device=device, dtype=torch.bfloat16)
    return block_m, m.bit_length(), x, wts, sorted_pos, block_expert, act, y


def _gg():
    spec = importlib.util.spec_from_file_location("gg", ROOT / "torch-ext/gpt_oss_kernels/moe/grouped_gemm.py")
    gg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gg)
    return gg


def _variants(gg):
    C = gg.Cfg
    base = C(256, 64, 8, 4, 8, True, True)
    return [
        ("v3", base),
        ("split_n", base._replace(split_n=True)),
        ("split_m", base._replace(split_m=True)),
        ("split_mn", base._replace(split_m=True, split_n=True)),
        ("split_mn g4", base._replace(group_m=4, split_m=True, split_n=True)),
    ]


def compile_only(idx: int):
    """Fill Triton's on-disk cache with variant idx's two kernels (run in parallel subprocesses)."""
    gg = _gg()
    name, cfg = _variants(gg)[idx]
    H = I = 2880
    E, K, T, bm = 2, 4, 256, 128
    dev, dt = "cuda", torch.bfloat16
    x = torch.zeros(T, H, device=dev, dtype=dt)
    w1, b1 = torch.zeros(E, H, 2 * I, device=dev, dtype=dt), torch.zeros(E, 2 * I, device=dev, dtype=dt)
    w2, b2 = torch.zeros(E, I, H, device=dev, dtype=dt), torch.zeros(E, H, device=dev, dtype=dt)
    sp, be = torch.zeros(T * K, device=dev, dtype=torch.int32), torch.zeros(T * K // bm, device=dev, dtype=torch.int32)
    act = torch.zeros(T * K, I, device=dev, dtype=dt)
    y = torch.zeros(T * K, H, device=dev, dtype=dt)
    tw = torch.zeros(T * K, device=dev)
    t0 = time.time()
    gg._compile(gg._args(True, cfg, x, w1, b1, act, sp, be, sp, 2 * I, H, 8, K, 1.702, 7.0, 13, bm), cfg, False)
    gg._compile(gg._args(False, cfg, act, w2, b2, y, sp, be, tw, H, I, 8, 1, 0.0, 0.0, 13, bm), cfg, False)
    print(f"compiled {name} in {time.time() - t0:.1f} s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=150)
    ap.add_argument("--compile-only", type=int, default=None)
    args = ap.parse_args()
    if args.compile_only is not None:
        compile_only(args.compile_only)
        return
    import subprocess

    import triton.testing

    gg = _gg()
    variants = _variants(gg)
    procs = [subprocess.Popen([sys.executable, __file__, "--compile-only", str(i)]) for i in range(len(variants))]
    for p in procs:
        p.wait()
    log("precompiled")
    H = I = 2880
    E, K = 32, 4
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: (torch.randn(*s, device=dev, generator=g) * 0.02).to(dt)  # noqa: E731
    w1, b1, w2, b2, rw, rb = r(E, H, 2 * I), r(E, 2 * I), r(E, I, H), r(E, H), r(E, H), r(E)

    def graph_us(fns, replays):
        graph = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for f in fns:
                f()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(graph):
            for f in fns:
                f()
        graph.replay()
        torch.cuda.synchronize()
        ts = []
        for _ in range(replays):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            ts.append(1e3 * a.elapsed_time(b))
        ts.sort()
        del graph
        return ts[len(ts) // 2]

    with torch.inference_mode():
        for T in (4096, 1024, 16384):
            if time.time() - T0 > args.budget_s:
                log("budget reached")
                break
            x = torch.randn(T, H, device=dev, generator=g).to(dt)
            logits = torch.nn.functional.linear(x, rw, rb)
            tv, ti = torch.topk(logits, K, dim=-1)
            tw = torch.softmax(tv.float(), -1).flatten().contiguous()
            bm = gg.block_m_for(T * K, E)
            sp, be = torch_dispatch(ti.int(), E, bm)
            nb = be.shape[0]
            act = torch.empty((nb * bm, I), device=dev, dtype=dt)
            y = torch.empty((T * K, H), device=dev, dtype=dt)
            mb = (T * K).bit_length()
            pad = (be >= 0).sum().item() * bm / (T * K)
            be_c, sp_c = be.cpu(), sp.cpu()
            half = sum(1 for b in range(nb) if be_c[b] >= 0 and sp_c[b * bm + bm // 2] < 0)
            log(f"T={T}: rows launched / real rows: {pad:.3f} (128-row blocks {(be >= 0).sum().item()}, "
                f"half-height {half})")
            f1 = lambda: gg.gemm1_swiglu(x, w1, b1, act, sp, be, K, 1.702, 7.0, bm, mb)  # noqa: E731
            f2 = lambda: gg.gemm2_weighted(act, w2, b2, tw, y, sp, be, bm, mb)  # noqa: E731
            res = {name: [] for name, _ in variants}
            ref = None
            reps = 20 if T <= 4096 else 8
            for rnd in range(3):
                for name, cfg in variants:
                    gg.FORCE.clear()
                    gg.FORCE[(bm, True)] = cfg
                    gg.FORCE[(bm, False)] = cfg
                    if rnd == 0:
                        f1()
                        f2()
                        out = y.float().view(T, K, H).sum(1)
                        if ref is None:
                            ref = out
                        err = ((out - ref).abs().max() / ref.abs().max()).item()
                        if err > 0:
                            log(f"  {name}: max rel diff vs v3 {err:.1e}")
                    res[name].append((graph_us([f1], reps), graph_us([f2], reps), graph_us([f1, f2], reps)))
            gg.FORCE.clear()
            for name, cfg in variants:
                v = res[name]
                med = [sorted(z[i] for z in v)[1] for i in range(3)]
                log(f"T={T} {name} {tuple(cfg)}: graph gemm1 {med[0]:.1f}, gemm2 {med[1]:.1f}, pair {med[2]:.1f} us "
                    f"(median of 3 interleaved rounds; pair rounds {', '.join(f'{z[2]:.0f}' for z in v)})")
    log("done")


if __name__ == "__main__":
    main()
