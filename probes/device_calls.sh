#!/usr/bin/env bash
# Device calls of 2026-12-07 (stop 39), each under the 600 s limit; logs to $OUT/run.log, files under $OUT.
#   a: the decode GEMM's x prefetch (probes/decode_x_prefetch.py: A/B in one process through the probe-only switch
#      of probes/decode_x_prefetch.patch), its GPU tests, and the whole-model MXFP4 decode A/B (DecodeRunner N = 32).
#   b, c: the GPU suite under compute-sanitizer memcheck (issue 15), split in two calls.
#   d: FP8 harness (fused vs unfused with the corrected harness, T = 16384) + continuous batching (issue 17's 5x).
set -u
cd "$(dirname "$0")/.."
L=$OUT/run.log
step() { echo "== $(date -u +%T) $*" | tee -a "$L"; }
pack() {  # at most 8 files come back: everything but run.log in one archive
  (cd "$OUT" && tar czf all.tgz --exclude=all.tgz --exclude=run.log . && find . -type f ! -name all.tgz ! -name run.log -delete)
}
trap pack EXIT
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader >> "$L"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
case "${1:-a}" in
a)
  git apply probes/decode_x_prefetch.patch 2>>"$L" || patch -p1 < probes/decode_x_prefetch.patch >> "$L" 2>&1
  step "build + probe"
  timeout 280 bash scripts/gpu_run.sh --no-tests --no-bench --probe probes/decode_x_prefetch.py > "$OUT/a.log" 2>&1
  grep -E "^T |^projections|error|Error" "$OUT/a.log" | tail -12 >> "$L"
  export PYTHONPATH=/tmp/site525
  step "GPU tests of the changed kernels"
  timeout 170 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_moe_mxfp4.py tests/test_fp8.py \
    tests/test_projection.py tests/test_integration_decode.py > "$OUT/tests.log" 2>&1
  tail -3 "$OUT/tests.log" >> "$L"
  step "e2e decode mxfp4, runner N = 32, A/B each change off"
  timeout $((570 - SECONDS)) python3 benchmarks/e2e_decode.py --mxfp4 --no-cb --no-static --steps 32 --reps 2 --ab \
    --ab-env GOK_DECODE_X_SMEM=0 GOK_PROJ_X_SMEM=0 --ab-only env_GOK_DECODE_X_SMEM=0 env_GOK_PROJ_X_SMEM=0 \
    --out "$OUT" 2>&1 | tail -30 >> "$L"
  ;;
b)
  step "memcheck part 1"
  timeout 570 bash scripts/gpu_run.sh --no-bench --sanitize --tests "tests/test_rmsnorm.py tests/test_rotary.py \
tests/test_projection.py tests/test_attention.py tests/test_fp8.py tests/test_moe.py tests/test_moe_integration.py \
tests/test_integration_mxfp4.py tests/test_integration_decode.py" > "$OUT/b.log" 2>&1
  ;;
c)
  step "memcheck part 2"
  timeout 570 bash scripts/gpu_run.sh --no-bench --sanitize --tests "tests/test_moe_mxfp4.py" > "$OUT/c.log" 2>&1
  ;;
d)
  step "fp8 harness + continuous batching"
  timeout 570 bash scripts/gpu_run.sh --no-tests --only "fp8 decode-cb" > "$OUT/d.log" 2>&1
  ;;
esac
step end
