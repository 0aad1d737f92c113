#!/usr/bin/env python3
"""Probe (issues 15 / 17): whole-model decode with MXFP4 experts, DecodeRunner N = 32 at batch 1 and 16, with the
night's two changes (MXFP4 kernel words, rotary + KV-write fusion) each undone in the same process (--ab).
Delete once its numbers are in docs/results.

    python probes/e2e_decode_ab.py --out $OUT
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import e2e_decode  # noqa: E402

out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "probe_out"
e2e_decode.main(["--mxfp4", "--no-cb", "--no-static", "--steps", "32", "--reps", "3", "--ab", "--out", out])
