#!/usr/bin/env bash
# One device call: install the pinned wheels, build the CUDA variant, run the GPU tests and
# the benchmarks; JSON, markdown and logs land under $OUT.
#
#   scripts/gpu_run.sh [--sanitize] [--only "rmsnorm moe"] [--tests "tests/test_x.py"] [--no-tests] [--no-bench] [--quick]
#
# From this machine, with the wheels copied once into the ignored .whl/ folder
# (`make wheels`), the call is: run(command="bash scripts/gpu_run.sh", carry=[".whl"]).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
SANITIZE=0; ONLY="rmsnorm moe attention"; TESTS=""; RUN_TESTS=1; BENCH=1; QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) SANITIZE=1 ;;
    --only) ONLY="$2"; shift ;;
    --tests) TESTS="$2"; shift ;;
    --no-bench) BENCH=0 ;;
    --no-tests) RUN_TESTS=0 ;;
    --quick) QUICK="--quick" ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || { echo "wheel install failed"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

status=0
echo "== build (CUDA)"
MAX_JOBS=16 python3 scripts/build_kernel.py --backend cuda 2>&1 | tee "$OUT/build.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed"; exit 1; }

echo "== tests (pytest -m gpu $TESTS)"
if [ "$RUN_TESTS" = 0 ]; then
  echo "skipped"
elif [ "$SANITIZE" = 1 ]; then
  # Without the caching allocator every allocation is a cudaMalloc, which CUDA-graph capture
  # refuses: the graph-capture tests cannot run under the sanitizer and are deselected here.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --target-processes all \
    python3 -m pytest -m gpu -x -q -k "not cuda_graph" $TESTS -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40
else
  python3 -m pytest -m gpu -q $TESTS -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40
fi
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ "$BENCH" = 1 ]; then
  echo "== benchmarks ($ONLY)"
  python3 benchmarks/harness.py --out "$OUT" --only $ONLY $QUICK 2>&1 | tee "$OUT/bench.log" | tail -80
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status
