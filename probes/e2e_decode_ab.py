#!/usr/bin/env python3
"""Probe (issues 15 / 17), one device call: the MXFP4 block rows of the harness (benchmarks/harness_moe.py
mxfp4_rows: kernel words against the checkpoint's bytes, same call), then whole-model decode with MXFP4 experts,
DecodeRunner N = 32 at batch 1 and 16, with the night's two changes (MXFP4 kernel words, rotary + KV-write
fusion) each undone in the same process (e2e_decode --ab). Delete once its numbers are in docs/results.

    python probes/e2e_decode_ab.py --out $OUT
"""
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import e2e_decode  # noqa: E402
import harness  # noqa: E402
import harness_moe  # noqa: E402

out = Path(sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "probe_out")
out.mkdir(parents=True, exist_ok=True)
kernel = harness.load_kernel()
ceilings = harness.measure_ceilings()
t0 = time.perf_counter()
harness_moe.MXFP4_TOKENS = (1, 4, 16, 64)  # the decode sizes (prefill is unchanged by the night's work)
rows = harness_moe.mxfp4_rows(kernel, ceilings, quick=False)
(out / "mxfp4_block.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), ceilings=ceilings,
                                                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                      rows=rows), indent=1))
print(f"block rows in {time.perf_counter() - t0:.0f} s", flush=True)
del rows
torch.cuda.empty_cache()
e2e_decode.main(["--mxfp4", "--no-cb", "--no-static", "--steps", "32", "--reps", "2", "--ab", "--out", str(out)])
