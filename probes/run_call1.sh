#!/usr/bin/env bash
# Device call (temporary): build, decode GEMM timings per pair, ncu of the MXFP4 block, FP8 + decode tests, sanitizer.
# At most 8 files come back: logs go to /tmp/w, summaries to $OUT.
set -u
export OUT; W=/tmp/w; mkdir -p $W
S=$OUT/summary.txt
OUT=$W bash scripts/gpu_run.sh --no-tests --no-bench > $W/build_run.log 2>&1; tail -5 $W/build_run.log | tee -a $S
tar czf $W/build_cuda.tgz build/torch*cu* 2>/dev/null; ls -la $W/build_cuda.tgz | tee -a $S
[ $(stat -c %s $W/build_cuda.tgz) -lt 16000000 ] && cp $W/build_cuda.tgz $OUT/
export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv >> $S
timeout 120 python3 probes/decode_gemm_profile.py --time --tokens 1 4 64 > $W/time.txt 2>&1; tail -12 $W/time.txt >> $S
timeout 150 ncu --clock-control none --profile-from-start off -k regex:"decode_gemm|small_prepare|finalize" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  --section MemoryWorkloadAnalysis -o $W/prof -f python3 probes/decode_gemm_profile.py --tokens 1 4 > $W/ncu_run.log 2>&1
tail -3 $W/ncu_run.log >> $S
ncu --import $W/prof.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
echo "== fp8 tests" >> $S
timeout 200 python3 -m pytest -m gpu -q -rf -p no:cacheprovider tests/test_fp8.py > $W/fp8_tests.txt 2>&1; tail -15 $W/fp8_tests.txt >> $S
timeout 120 python3 -m pytest -m gpu -q -rf -p no:cacheprovider tests/test_moe_mxfp4.py -k "gemm_decode and big" > $W/decode_big.txt 2>&1; echo "== decode big" >> $S; tail -4 $W/decode_big.txt >> $S
echo "== memcheck decode" >> $S
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_moe_mxfp4.py -k "gemm_decode and odd" > $W/memcheck.txt 2>&1; tail -6 $W/memcheck.txt >> $S
echo "== racecheck decode" >> $S
timeout 120 compute-sanitizer --tool racecheck python3 -m pytest -m gpu -q -p no:cacheprovider "tests/test_moe_mxfp4.py::test_moe_gemm_decode_mxfp4_vs_float64[16-3-odd-4,0]" "tests/test_moe_mxfp4.py::test_moe_gemm_decode_mxfp4_vs_float64[16-3-odd-8,0]" "tests/test_moe_mxfp4.py::test_moe_gemm_decode_mxfp4_vs_float64[9-3-big-4,0]" "tests/test_fp8.py::test_moe_experts_fp8_decode_gemm_configs" > $W/racecheck.txt 2>&1; tail -6 $W/racecheck.txt >> $S
cat $W/fp8_tests.txt $W/decode_big.txt $W/memcheck.txt $W/racecheck.txt $W/time.txt > $OUT/logs.txt 2>/dev/null
cp $W/build_run.log $OUT/ 2>/dev/null
cat $S
