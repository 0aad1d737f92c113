# device call B (stop 41): MXFP4 block rows, then decode routes (runner N = 32) MXFP4 and bf16, batch 1 and 16
export OUT PYTHONUNBUFFERED=1
left() { echo $((570 - SECONDS)); }
if [ ! -d /tmp/site525 ] || ! ls build/torch*cu130* >/dev/null 2>&1; then
  timeout 260 bash scripts/gpu_run.sh --no-tests --no-bench > $OUT/build_step.log 2>&1; echo "build rc $? at $SECONDS s"
fi
export PYTHONPATH=/tmp/site525 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
timeout 130 python3 benchmarks/harness.py --out $OUT --only moe_mxfp4 --quick > $OUT/bench.log 2>&1; echo "harness rc $? at $SECONDS s"
tail -25 $OUT/bench.log
mkdir -p $OUT/mxfp4
OUT=$OUT/mxfp4 timeout $(( $(left) > 230 ? 230 : $(left) )) python3 benchmarks/e2e_decode.py --mxfp4 --no-cb --no-static --reps 2 --steps 32 > $OUT/e2e_decode_mxfp4.log 2>&1; echo "mxfp4 decode rc $? at $SECONDS s"
tail -16 $OUT/e2e_decode_mxfp4.log
timeout $(( $(left) - 5 )) python3 benchmarks/e2e_decode.py --no-cb --no-static --reps 2 --steps 32 > $OUT/e2e_decode_bf16.log 2>&1; echo "bf16 decode rc $? at $SECONDS s"
tail -16 $OUT/e2e_decode_bf16.log
