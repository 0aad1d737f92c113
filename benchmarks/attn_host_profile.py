#!/usr/bin/env python3
"""Where the host time of one batch-1 decode attention call goes (Python level, cProfile; issue 4).

`flash_attn_func` with one query position against a 1024-key cache (GPT-OSS heads, sinks), as transformers'
flash glue calls it in a batch-1 decode step with the dynamic cache: 1000 calls without synchronising under
cProfile, functions sorted by their own time. Also the host time per call without the profiler, for the eager fast
path and for the custom op's dispatcher (flash.py `_attn_fwd`), three interleaved rounds each. Needs the CUDA build.
Writes $OUT/attn_host_profile.txt.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import load_kernel  # noqa: E402

OUT = Path(os.environ.get("OUT", "probe_out"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    kernel = load_kernel()
    q = torch.randn(1, 1, 64, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 1024, 8, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = torch.randn(64, device="cuda")

    def call():
        return kernel.flash_attn_func(q, k, v, causal=True, s_aux=sinks)

    for _ in range(50):
        call()
    torch.cuda.synchronize()

    def host_us():
        start = time.perf_counter()
        for _ in range(1000):
            call()
        us = (time.perf_counter() - start) / 1000 * 1e6
        torch.cuda.synchronize()
        return us

    # The eager fast path (flash.py `_attn_fwd`) against the custom op's dispatcher, interleaved rounds.
    flash = sys.modules[kernel.__name__ + ".attention.flash"]
    fast = flash._attn_fwd
    rounds = {"op path": [], "fast path": []}
    for _ in range(3):
        for name in rounds:
            flash._attn_fwd = (lambda q_, *a: flash.ops.attn_fwd(q_, *a)) if name == "op path" else fast
            try:
                call()
                rounds[name].append(round(host_us(), 1))
            finally:
                flash._attn_fwd = fast
    per_call = sorted(rounds["fast path"])[1]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(1000):
        call()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    head = (f"{torch.cuda.get_device_name()}: host time per call without the profiler {per_call:.1f} us (median of 3 "
            f"rounds of 1000 calls; us per call by round: {rounds}); the profile below is the fast path\n")
    (OUT / "attn_host_profile.txt").write_text(head + text.getvalue())
    print(head + text.getvalue()[:8000])


if __name__ == "__main__":
    main()
