#!/usr/bin/env bash
# Second device call (2026-12-07): FP8 harness (issue 16 block / fused ops), whole model with FP8 experts (fused vs
# unfused), continuous batching against transformers' defaults (issue 17); then the prefill test's new element bound
# (probes/prefill_bound_diag.py, the test) and the racecheck that ran out of time at 12:29. Logs to $OUT/run.log.
set -u
cd "$(dirname "$0")/.."
L=$OUT/run.log
step() { echo "== $(date -u +%T) $*" >> "$L"; }
step "build + harness fp8"
timeout 300 bash scripts/gpu_run.sh --pack --no-tests --only "fp8" >> "$L" 2>&1
export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
step "e2e-fp8"
OUT=$OUT timeout 150 python3 benchmarks/e2e_model.py --fp8 channel 2>&1 | tail -20 >> "$L"
step "decode-cb"
timeout 200 python3 benchmarks/e2e_decode.py --cb-only --out "$OUT" 2>&1 | tail -30 >> "$L"
step "prefill bound + racecheck"
timeout 60 python3 probes/prefill_bound_diag.py 2>&1 | tail -20 >> "$L"
P=tests/test_moe_mxfp4.py::test_moe_gemm_prefill_mxfp4_vs_float64
timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider "$P" 2>&1 | tail -4 >> "$L"
timeout 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider "$P[True-37-None-128-odd]" "tests/test_moe_mxfp4.py::test_moe_gemm_decode_mxfp4_vs_float64[kernel_words-9-3-odd]" \
  "tests/test_rotary.py::test_rotary_kv_cache[7-2-dtype1]" 2>&1 | grep -E "passed|failed|SUMMARY" | tail -3 >> "$L"
step end
