#!/usr/bin/env bash
# Device calls of 2026-12-07 (stop 38), each under the 600 s limit; logs to $OUT/run.log.
#   a: build + FP8 harness (issue 16: block T = 4096 <= 1,000 us, fused ops >= 85% of copy), whole model with FP8
#      experts (fused vs unfused, 80,000 tok/s), then the prefill test's new element bound (probe + test).
#   b: moe_small_prepare 256 vs 1024 threads (probe) and the MXFP4 DecodeRunner at batch 1 / 16 with both.
#   c: build + continuous batching against transformers' defaults (issue 17: 5x) + racecheck of the set that ran
#      out of time at 12:29.
set -u
cd "$(dirname "$0")/.."
L=$OUT/run.log
step() { echo "== $(date -u +%T) $*" >> "$L"; }
case "${1:-a}" in
a)
  step "build + harness fp8"
  timeout 270 bash scripts/gpu_run.sh --pack --no-tests --only "fp8" >> "$L" 2>&1
  export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  step "prefill bound"
  timeout 50 python3 probes/prefill_bound_diag.py 2>&1 | tail -20 >> "$L"
  timeout 50 python3 -m pytest -m gpu -q -p no:cacheprovider \
    tests/test_moe_mxfp4.py::test_moe_gemm_prefill_mxfp4_vs_float64 2>&1 | tail -4 >> "$L"
  step "e2e-fp8"
  OUT=$OUT timeout 170 python3 benchmarks/e2e_model.py --fp8 channel 2>&1 | tail -20 >> "$L"
  ;;
b)
  # moe_small_prepare with 1024 threads per cluster CTA (probe-only switch) and issue 17's MXFP4 decode on this card.
  git apply probes/small_prepare_threads.patch 2>/dev/null || patch -p1 < probes/small_prepare_threads.patch >> "$L" 2>&1
  step "build + small_prepare probe"
  timeout 200 bash scripts/gpu_run.sh --no-tests --no-bench --probe probes/small_prepare_threads.py >> "$L" 2>&1
  export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  step "e2e decode mxfp4, runner N = 32, A/B 1024 threads + unrolled logits"
  timeout 170 python3 benchmarks/e2e_decode.py --mxfp4 --no-cb --no-static --steps 32 --reps 2 --ab \
    --ab-env GOK_SMALL_PREPARE_THREADS=1024u --ab-only env_GOK_SMALL_PREPARE_THREADS=1024u --out "$OUT" 2>&1 | tail -30 >> "$L"
  ;;
c)
  timeout 200 bash scripts/gpu_run.sh --pack --no-tests --only "decode-cb" >> "$L" 2>&1
  export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  P=tests/test_moe_mxfp4.py::test_moe_gemm_prefill_mxfp4_vs_float64
  step "racecheck"
  timeout 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python3 -m pytest -m gpu -q \
    -p no:cacheprovider "$P[True-37-None-128-odd]" "tests/test_moe_mxfp4.py::test_moe_gemm_decode_mxfp4_vs_float64[kernel_words-9-3-odd]" \
    "tests/test_rotary.py::test_rotary_kv_cache[7-2-dtype1]" 2>&1 | grep -E "passed|failed|SUMMARY" | tail -3 >> "$L"
  ;;
esac
step end
