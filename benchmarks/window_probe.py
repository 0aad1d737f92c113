#!/usr/bin/env python3
"""Sliding-window prefill probe (issue 4, v4): `_window_fwd` configurations against the general
kernel's best window configuration, in one call. S=8192, window 128, causal, sinks, GPT-OSS heads.
Device time from CUDA-graph replays over 2 input sets (151 MB each, > L2), outputs checked against
float64 on two stretches of rows; % of the byte floor from the copy bandwidth measured here.

Loads _triton_attn.py straight from torch-ext (no build needed). Writes $OUT/window_probe.json.

    python benchmarks/window_probe.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from harness import measure_ceilings, median_us_graph, load_package_file  # noqa: E402

ta = load_package_file("attention/_triton_attn.py")
ref = load_package_file("reference.py")
HQ, HKV, D, S, W = 64, 8, 64, 8192, 128
dev, bf = "cuda", torch.bfloat16
OUT = Path(os.environ.get("OUT", "probe_out"))
OUT.mkdir(parents=True, exist_ok=True)

CONFIGS = [  # ("window", _window_fwd config) or ("general", _attn_fwd config); probe w4
    ("general", dict(BLOCK_M=64, BLOCK_N=32, BLOCK_N_R=16, num_warps=4, num_stages=2, maxnreg=80)),
    ("window", dict(BLOCK_P=32, HEADS_PER_STEP=2, num_warps=4, num_stages=3)),
    ("window", dict(BLOCK_P=16, HEADS_PER_STEP=4, num_warps=4, num_stages=3)),
    ("window", dict(BLOCK_P=16, HEADS_PER_STEP=4, num_warps=4, num_stages=4)),
    ("window", dict(BLOCK_P=16, HEADS_PER_STEP=4, num_warps=4, num_stages=3, maxnreg=128)),
    ("window", dict(BLOCK_P=16, HEADS_PER_STEP=8, num_warps=8, num_stages=2)),
    ("window", dict(BLOCK_P=16, HEADS_PER_STEP=8, num_warps=8, num_stages=1)),
    ("window", dict(BLOCK_P=32, HEADS_PER_STEP=4, num_warps=8, num_stages=3)),
    ("window", dict(BLOCK_P=16, HEADS_PER_STEP=8, num_warps=8, num_stages=2, maxnreg=104)),
]


def main() -> None:
    ceil = measure_ceilings()
    sinks = torch.randn(HQ, device=dev)
    cu = torch.tensor([0, S], dtype=torch.int32, device=dev)
    sets = []
    for _ in range(2):
        q = torch.randn(S, HQ, D, device=dev, dtype=bf)
        k = torch.randn(S, HKV, D, device=dev, dtype=bf)
        v = torch.randn(S, HKV, D, device=dev, dtype=bf)
        sets.append((q, k, v, torch.empty_like(q)))
    q, k, v, _ = sets[0]
    refs = []
    for p0 in (0, 4000, S - 130):
        p1 = p0 + 130
        r = ref.attention(q[p0:p1].double(), k[:p1].double(), v[:p1].double(), scale=0.125, sinks=sinks.double(),
                          causal=True, window=(W - 1, W - 1))
        refs.append((p0, p1, r))
    nbytes = 2 * q.numel() * 2 + 2 * k.numel() * 2
    floor_us = nbytes / ceil["copy_bytes_per_us"]
    rows = []

    def call(kind, cfg, st):
        q, k, v, out = st

        def f():
            if kind == "window":
                ta.WINDOW_OVERRIDE = cfg
            else:
                ta.PREFILL_OVERRIDE = cfg
            ta.attn_fwd(q, k, v, out, cu_q=cu, cu_k=cu, seqlens_k=None, block_table=None, sinks=sinks, batch=1,
                        seq_q_fixed=0, max_seqlen_q=S, max_seqlen_k=S, scale=0.125, window_left=W - 1,
                        window_right=0)
            ta.WINDOW_OVERRIDE = ta.PREFILL_OVERRIDE = None
            return out
        return f

    for rnd in range(2):  # two interleaved rounds
        for kind, cfg in CONFIGS:
            tag = kind + " " + ",".join(f"{a}={b}" for a, b in cfg.items())
            try:
                t0 = time.time()
                sets[0][3].fill_(float("nan"))
                call(kind, cfg, sets[0])()
                torch.cuda.synchronize()
                err = max(((sets[0][3][p0:p1].double() - r).abs().max() / r.abs().max()).item() for p0, p1, r in refs)
                nan = bool(torch.isnan(sets[0][3]).any())
                t = median_us_graph([call(kind, cfg, s) for s in sets])
                res = dict(round=rnd, cfg=tag, us=round(t, 2), pct_floor=round(100 * floor_us / t, 1),
                           rel_err=f"{err:.1e}", nan=nan, compile_s=round(time.time() - t0, 1))
            except Exception as e:  # noqa: BLE001
                res = dict(round=rnd, cfg=tag, error=repr(e)[:300])
            rows.append(res)
            print(res, flush=True)
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  torch=torch.__version__, ceilings=ceil, floor_us=round(floor_us, 2), bytes=nbytes, rows=rows)
    (OUT / "window_probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
