#!/usr/bin/env bash
# Device call (temporary): build, decode GEMM timings per pair, decode + FP8 tests, sanitizers, then ncu if time is
# left. At most 8 files come back: logs go to /tmp/w, summaries to $OUT.
set -u
export OUT; W=/tmp/w; mkdir -p $W
S=$OUT/summary.txt
T0=$(date +%s)
OUT=$W bash scripts/gpu_run.sh --no-tests --no-bench > $W/build_run.log 2>&1; tail -4 $W/build_run.log | tee -a $S
echo "build done at +$(( $(date +%s) - T0 )) s" >> $S
export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv >> $S
timeout 100 python3 probes/decode_gemm_profile.py --time --tokens 1 4 64 > $W/time.txt 2>&1; tail -12 $W/time.txt >> $S
echo "== decode big (+$(( $(date +%s) - T0 )) s)" >> $S
timeout 80 python3 -m pytest -m gpu -q -rf -p no:cacheprovider tests/test_moe_mxfp4.py -k "gemm_decode and big" > $W/decode_big.txt 2>&1; tail -4 $W/decode_big.txt >> $S
echo "== fp8 tests (+$(( $(date +%s) - T0 )) s)" >> $S
timeout 100 python3 -m pytest -m gpu -q -rf -p no:cacheprovider tests/test_fp8.py > $W/fp8_tests.txt 2>&1; tail -12 $W/fp8_tests.txt >> $S
cat $W/time.txt $W/decode_big.txt $W/fp8_tests.txt > $OUT/logs.txt
T=tests/test_moe_mxfp4.py::test_moe_gemm_decode_mxfp4_vs_float64
el() { echo $(( $(date +%s) - T0 )); }
[ $(el) -lt ${BUDGET:-330} ] || { cat $S; exit 0; }
echo "== racecheck (+$(( $(date +%s) - T0 )) s)" >> $S
timeout 90 compute-sanitizer --tool racecheck python3 -m pytest -m gpu -q -p no:cacheprovider "$T[16-3-odd-4,0]" "$T[16-3-odd-8,0]" "$T[9-3-odd-4,0]" > $W/racecheck.txt 2>&1; tail -5 $W/racecheck.txt >> $S
[ $(el) -lt ${BUDGET:-330} ] || { cat $S; exit 0; }
echo "== memcheck (+$(( $(date +%s) - T0 )) s)" >> $S
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_moe_mxfp4.py -k "gemm_decode and odd and not big" > $W/memcheck.txt 2>&1; tail -5 $W/memcheck.txt >> $S
cat $W/racecheck.txt $W/memcheck.txt > $OUT/sanitizer.txt
[ $(el) -lt ${BUDGET:-330} ] || { cat $S; exit 0; }
echo "== ncu (+$(( $(date +%s) - T0 )) s)" >> $S
timeout 90 ncu --clock-control none --profile-from-start off -k regex:"decode_gemm" --section SpeedOfLight --section Occupancy \
  --section WarpStateStats --section MemoryWorkloadAnalysis -o $W/prof -f python3 probes/decode_gemm_profile.py --tokens 1 > $W/ncu_run.log 2>&1
ncu --import $W/prof.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
echo "end +$(( $(date +%s) - T0 )) s" >> $S
cat $S
