#!/usr/bin/env bash
# One device call: install the wheels of one transformers/kernels pair, build the CUDA variant,
# run the GPU tests and the benchmarks; JSON, markdown and logs land under $OUT.
#
#   scripts/gpu_run.sh [--pair 5.25|5.22] [--both-pairs] [--sanitize] [--only "rmsnorm moe"]
#                      [--tests "tests/test_x.py"] [--no-tests] [--no-bench] [--quick] [--dry-run] [--pack]
#                      [--probe probes/x.py] [--racecheck "tests/test_x.py::test_y ..."] [--initcheck "..."]
#
# --pair: which wheel set goes on PYTHONPATH (default 5.25): 5.25 = transformers 5.25.0 +
#   kernels 0.19.1 + huggingface-hub 2.4.0 (.whl/525/), 5.22 = transformers 5.22.2 + kernels
#   0.17.2 (.whl/522/). `make wheels` copies both sets into the ignored .whl/ folder.
# --both-pairs: the tests under both pairs in one call: under 5.25 the whole `-m gpu` suite (or
#   --tests), then under 5.22 only the transformers-integration test files
#   (tests/test_integration_*.py, test_moe_integration.py, test_attention_transformers.py) with
#   `-m gpu`, logged to tests-522.log. The benchmarks (unless --no-bench) run under 5.25.
# --dry-run: print what would run, run nothing.
# --sanitize: the tests (--tests: files or node ids) under compute-sanitizer memcheck, a few node ids per process.
# --racecheck: these tests (files or node ids, one process) under compute-sanitizer racecheck (shared-memory
#   hazards; slow: name a few), after the tests; summary in $OUT/sanitize_summary.txt.
# --initcheck: the same under compute-sanitizer initcheck (reads of device memory nothing wrote: what the tests'
#   NaN poisoning shows with the caching allocator, and cannot without it).
# FP8 experts (issue 16): --tests tests/test_fp8.py --only fp8 (benchmarks/harness_fp8.py: bf16 block, FP8 block,
#   FP8 unfused / fused norm + block at T = 1, 64, 4096, 16384; rms_norm_quant_fp8 / finalize_slice against a copy).
#
# --only also takes the decode runs (not part of the default set; each fits one device call):
#   decode: benchmarks/profile_decode.py (static-cache generate step profile, DecodeRunner N=8/32, Chrome traces,
#     timeline PNG if matplotlib is there) and benchmarks/e2e_decode.py --no-cb (generate dynamic / static,
#     DecodeRunner N=1/8/32, batch 1 and 16);
#   decode-cb: benchmarks/e2e_decode.py --cb-only --cb-profile (continuous batching, ours vs transformers' defaults;
#     ours once more under the profiler);
#   decode-cb-mxfp4: the same on an MXFP4 checkpoint (transformers' defaults on it: their own MXFP4 path; carry .anchors);
#   decode-mxfp4: both decode scripts with MXFP4 experts.
# and the whole model (benchmarks/e2e_model.py, 20b shapes):
#   e2e: bf16 experts, transformers' defaults against ours (e2e_model.json, with the static cache);
#   e2e-mxfp4: MXFP4 checkpoint, transformers' MXFP4 path against ours (carry .anchors for transformers' path);
#   e2e-fp8: FP8 experts (channel scales), fused against unfused.
# --pack: everything written under a scratch folder, then packed into $OUT/gpu_out.tgz (plus results.md and the
#   e2e JSON files beside it): the device returns at most 8 files from $OUT.
#
# From this machine: run(command="bash scripts/gpu_run.sh", carry=[".whl"]).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu_out}
SANITIZE=0; RACE=""; INIT=""; ONLY="rmsnorm moe attention"; TESTS=""; RUN_TESTS=1; BENCH=1; PAIR=5.25; BOTH=0; DRY=0; PACK=0
quick_args=(); probes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pair) PAIR="${2:-}"; shift ;;
    --both-pairs) BOTH=1 ;;
    --sanitize) SANITIZE=1 ;;
    --racecheck) RACE="${2:-}"; shift ;;
    --initcheck) INIT="${2:-}"; shift ;;
    --only) ONLY="${2:-}"; shift ;;
    --tests) TESTS="${2:-}"; shift ;;
    --no-bench) BENCH=0 ;;
    --no-tests) RUN_TESTS=0 ;;
    --quick) quick_args=(--quick) ;;
    --dry-run) DRY=1 ;;
    --pack) PACK=1 ;;
    --probe) [ -f "${2:-}" ] || { echo "--probe needs a probe script, got '${2:-}'"; exit 2; }
             probes+=("$2"); shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
case "$PAIR" in
  5.25|5.22) ;;
  *) echo "--pair must be 5.25 or 5.22, got '$PAIR'"; exit 2 ;;
esac
[ "$BOTH" = 1 ] && PAIR=5.25
read -ra only_args <<< "$ONLY"
read -ra test_args <<< "$TESTS"
shopt -s nullglob
compat_tests=(tests/test_integration_*.py tests/test_moe_integration.py tests/test_attention_transformers.py)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

run() {  # run a command, or print it under --dry-run
  if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi
}

use_pair() {  # install one pair's wheels into /tmp/site<tag> and put it on PYTHONPATH
  local tag=${1/./}
  local wheels=(.whl/"$tag"/*.whl)
  [ ${#wheels[@]} -gt 0 ] || [ "$DRY" = 1 ] || { echo "no wheels in .whl/$tag/: run \`make wheels\` and carry .whl"; exit 1; }
  if ! run python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "/tmp/site$tag" "${wheels[@]}"; then
    echo "wheel install failed (pair $1)"; exit 1
  fi
  export PYTHONPATH="/tmp/site$tag"
  echo "== pair $1 (PYTHONPATH=$PYTHONPATH)"
}

gpu_tests() {  # gpu_tests LOG [pytest args...]: pytest -m gpu, plain or under compute-sanitizer
  local log=$1; shift
  if [ "$SANITIZE" = 1 ]; then
    # Without the caching allocator every allocation is a cudaMalloc, which CUDA-graph capture
    # refuses: the graph-capture tests run in one process of their own at the end, with the allocator on.
    # The others run GOK_SANITIZE_CHUNK (default 8) node ids per process: device memory still ran out within one
    # process per file (H100, 2026-12-07: test_attention.py after 22 tests, test_fp8.py / test_moe.py likewise,
    # every later test of the file failing on cudaMalloc; 0 invalid accesses reported), and one process for the
    # whole suite after ~190 tests (2026-12-04). Files given with --tests (else every tests/test_*.py) are
    # expanded to their GPU node ids; node ids given are used as they are. tests/conftest.py collects garbage
    # after each test when GOK_SANITIZE=1, and the MoE / FP8 / MXFP4 files' 20b-shaped tests use 8 experts, not 32
    # (conftest.gpu_shape; test_moe_mxfp4.py ran out after 2-3 tests per process with 32, H100 2026-12-08).
    # $OUT/sanitize_summary.txt gets each chunk's pytest result, memcheck error count and seconds.
    local entries=("$@") rc=0 f e files=() chunk=${GOK_SANITIZE_CHUNK:-8}
    [ ${#entries[@]} -gt 0 ] || entries=(tests/test_*.py)
    for e in "${entries[@]}"; do
      f=${e%%::*}
      [[ " ${files[*]} " == *" $f "* ]] || files+=("$f")
    done
    : > "$OUT/$log"
    for f in "${files[@]}"; do
      local ids=()
      for e in "${entries[@]}"; do
        if [ "$e" = "$f" ] && [ "$DRY" = 0 ]; then
          mapfile -t -O ${#ids[@]} ids < <(python3 -m pytest --collect-only -q -m gpu -k "not cuda_graph" \
            -p no:cacheprovider "$f" 2>/dev/null | grep '::')
        elif [ "${e%%::*}" = "$f" ]; then
          ids+=("$e")
        fi
      done
      local i n=${#ids[@]}
      [ "$n" -gt 0 ] || echo "$f: no GPU test collected" | tee -a "$OUT/sanitize_summary.txt"
      for ((i = 0; i < n; i += chunk)); do
        local t0=$SECONDS
        run env PYTORCH_NO_CUDA_MEMORY_CACHING=1 GOK_SANITIZE=1 compute-sanitizer --tool memcheck \
          --target-processes all python3 -m pytest -m gpu -q -k "not cuda_graph" "${ids[@]:i:chunk}" \
          -p no:cacheprovider > "$OUT/sanitize_one.log" 2>&1 || rc=1
        cat "$OUT/sanitize_one.log" >> "$OUT/$log"
        echo "$f [$((i + 1))-$((i + chunk < n ? i + chunk : n)) of $n]:" \
          "$(grep -E '(passed|failed|error|no tests ran)' "$OUT/sanitize_one.log" | tail -1) |" \
          "$(grep -E 'ERROR SUMMARY' "$OUT/sanitize_one.log" | tail -1) | $((SECONDS - t0)) s" \
          | tee -a "$OUT/sanitize_summary.txt"
      done
    done
    # The capture tests of the same files in one more process, with the caching allocator on (capture needs it;
    # memcheck then sees the pool's blocks, not each tensor's bounds).
    local t0=$SECONDS
    run env GOK_SANITIZE=1 compute-sanitizer --tool memcheck --target-processes all \
      python3 -m pytest -m gpu -q -k "cuda_graph" "${files[@]}" -p no:cacheprovider > "$OUT/sanitize_one.log" 2>&1
    local prc=$?
    [ "$prc" -eq 0 ] || [ "$prc" -eq 5 ] || rc=1  # 5: no capture test among these files
    cat "$OUT/sanitize_one.log" >> "$OUT/$log"
    echo "cuda_graph tests (caching allocator on): $(grep -E '(passed|failed|error|no tests ran)' "$OUT/sanitize_one.log" | tail -1) |" \
      "$(grep -E 'ERROR SUMMARY' "$OUT/sanitize_one.log" | tail -1) | $((SECONDS - t0)) s" | tee -a "$OUT/sanitize_summary.txt"
    rm -f "$OUT/sanitize_one.log"
    return $rc
  else
    run python3 -m pytest -m gpu -q "$@" -p no:cacheprovider 2>&1 | tee "$OUT/$log" | tail -40
  fi
  return "${PIPESTATUS[0]}"
}

if [ "$PACK" = 1 ] && [ "$DRY" = 0 ]; then
  PACKED_TO=$OUT
  OUT=$(mktemp -d)/gpu_out
  pack() {  # on exit (also after a failed step): the folder as one archive, the summaries beside it
    mkdir -p "$PACKED_TO"
    tar czf "$PACKED_TO/gpu_out.tgz" -C "$(dirname "$OUT")" gpu_out
    cp "$OUT"/results.md "$OUT"/e2e_model*.json "$PACKED_TO"/ 2>/dev/null
    return 0
  }
  trap pack EXIT
fi
mkdir -p "$OUT"
use_pair "$PAIR"
run nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

status=0
echo "== build (CUDA)"
run env MAX_JOBS=16 python3 scripts/build_kernel.py --backend cuda 2>&1 | tee "$OUT/build.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed"; exit 1; }

echo "== tests (pytest -m gpu ${TESTS})"
if [ "$RUN_TESTS" = 0 ]; then
  echo "skipped"
else
  gpu_tests tests.log "${test_args[@]}" || status=1
fi

sanitize_tool() {  # sanitize_tool TOOL "node ids": one process under compute-sanitizer TOOL, after the tests
  local tool=$1 ids=()
  read -ra ids <<< "$2"
  echo "== $tool (${2})"
  run env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --target-processes all \
    python3 -m pytest -m gpu -q -k "not cuda_graph" "${ids[@]}" -p no:cacheprovider > "$OUT/$tool.log" 2>&1 || status=1
  echo "$tool: $(grep -E '(passed|failed|error|no tests ran)' "$OUT/$tool.log" | tail -1) |" \
    "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/$tool.log" | tail -1)" | tee -a "$OUT/sanitize_summary.txt"
}
[ -z "$RACE" ] || sanitize_tool racecheck "$RACE"
[ -z "$INIT" ] || sanitize_tool initcheck "$INIT"

harness_only=(); decode_runs=()
for family in "${only_args[@]}"; do
  case "$family" in
    decode|decode-cb|decode-cb-mxfp4|decode-mxfp4|e2e|e2e-mxfp4|e2e-fp8) decode_runs+=("$family") ;;
    *) harness_only+=("$family") ;;
  esac
done

decode_bench() {  # decode_bench LOG script [args...]
  local log=$1; shift
  run python3 "$@" --out "$OUT" 2>&1 | tee "$OUT/$log" | tail -60
  return "${PIPESTATUS[0]}"
}

if [ "$BENCH" = 1 ]; then
  if [ ${#harness_only[@]} -gt 0 ]; then
    echo "== benchmarks (${harness_only[*]})"
    run python3 benchmarks/harness.py --out "$OUT" --only "${harness_only[@]}" "${quick_args[@]}" 2>&1 | tee "$OUT/bench.log" | tail -80
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  fi
  for what in "${decode_runs[@]}"; do
    echo "== $what"
    case "$what" in
      decode)
        decode_bench profile_decode.log benchmarks/profile_decode.py --runner 8 32 --trace --png || status=1
        decode_bench e2e_decode.log benchmarks/e2e_decode.py --no-cb --reps 2 || status=1 ;;
      decode-cb)
        decode_bench e2e_decode_cb.log benchmarks/e2e_decode.py --cb-only --cb-profile || status=1 ;;
      decode-cb-mxfp4)
        mkdir -p "$OUT/mxfp4"
        OUT="$OUT/mxfp4" decode_bench e2e_decode_cb.log benchmarks/e2e_decode.py --cb-only --cb-profile --mxfp4 || status=1 ;;
      decode-mxfp4)
        mkdir -p "$OUT/mxfp4"
        OUT="$OUT/mxfp4" decode_bench profile_decode.log benchmarks/profile_decode.py --mxfp4 --runner 32 || status=1
        OUT="$OUT/mxfp4" decode_bench e2e_decode.log benchmarks/e2e_decode.py --mxfp4 --no-cb --reps 2 || status=1 ;;
      e2e)  # e2e_model.py reads $OUT from the environment
        OUT="$OUT" run python3 benchmarks/e2e_model.py --static 2>&1 | tee "$OUT/e2e_model.log" | tail -30
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
      e2e-mxfp4)
        OUT="$OUT" run python3 benchmarks/e2e_model.py --mxfp4 --static 2>&1 | tee "$OUT/e2e_model_mxfp4.log" | tail -30
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
      e2e-fp8)
        OUT="$OUT" run python3 benchmarks/e2e_model.py --fp8 channel 2>&1 | tee "$OUT/e2e_model_fp8.log" | tail -20
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    esac
  done
fi

for probe in "${probes[@]}"; do
  echo "== probe $probe"
  mkdir -p "$OUT/probes"
  run python3 "$probe" --out "$OUT/probes" 2>&1 | tee "$OUT/probes/$(basename "$probe" .py).log" | tail -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done

if [ "$BOTH" = 1 ] && [ "$RUN_TESTS" = 1 ]; then
  use_pair 5.22
  echo "== tests under 5.22 (pytest -m gpu ${compat_tests[*]})"
  gpu_tests tests-522.log "${compat_tests[@]}" || status=1
fi
exit $status
