#!/usr/bin/env bash
# One device call on a machine of one or more GPUs for expert parallelism: install the transformers 5.25 wheel
# set, build the CUDA variant (incremental: a warm machine keeps build/), run the GPU tests of the EP ops and
# layer (one GPU is enough: sentinel ids need no second device), then benchmarks/e2e_ep.py over every GPU with
# torchrun. Logs and e2e_ep_<N>gpu.json land under $OUT.
#
#   scripts/gpu_ep_run.sh [--wheels DIR] [--no-tests] [--no-e2e] [-- e2e_ep.py arguments]
#
# --wheels: the wheel set to put on PYTHONPATH (default .whl/525 if it exists, else .whl): transformers 5.25.0,
#   kernels 0.19.1, huggingface-hub 2.4.0 and their needs (../shared/wheels/transformers-5.25/); 5.22.2 works too
#   (EP through all-to-all only). From this machine, e.g. on 2 GPUs, check then bench as two calls:
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash scripts/gpu_ep_run.sh -- --mode check")
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash scripts/gpu_ep_run.sh --no-tests -- --mode bench")
#   run(kind="nvidia-h200", carry=[".whl"], command="bash scripts/gpu_ep_run.sh --no-e2e")   # the GPU tests alone
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
WHEELS=""; TESTS=1; E2E=1; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:-}"; shift ;;
    --no-tests) TESTS=0 ;;
    --no-e2e) E2E=0 ;;
    --) shift; ARGS=("$@"); break ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
if [ -z "$WHEELS" ]; then
  if [ -d .whl/525 ]; then WHEELS=.whl/525; else WHEELS=.whl; fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# NVLink multicast stays off on the lent machines (KINDS.md); keep whatever the machine set, default off.
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" TORCH_SYMM_MEM_DISABLE_MULTICAST="${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}"
export NVSHMEM_DISABLE_NVLS="${NVSHMEM_DISABLE_NVLS:-1}"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
[ ${#wheels[@]} -gt 0 ] || { echo "no wheels in $WHEELS/: copy ../shared/wheels/transformers-5.25/*.whl there and carry .whl"; exit 1; }
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "${wheels[@]}"; then
  echo "wheel install failed"; exit 1
fi
export PYTHONPATH=/tmp/site
python3 -c 'import torch, transformers, kernels; print("torch", torch.__version__, "transformers", transformers.__version__, "kernels", kernels.__version__, "gpus", torch.cuda.device_count())'
nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,memory.used --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1 || true
NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())')

echo "== build (CUDA)"
MAX_JOBS=16 python3 scripts/build_kernel.py --backend cuda 2>&1 | tee "$OUT/build.log" | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed"; exit 1; }

status=0
if [ "$TESTS" = 1 ]; then
  echo "== tests: expert parallelism at the op and layer level, and the MoE suite (pytest -m gpu)"
  python3 -m pytest -m gpu -q tests/test_moe_expert_parallel.py tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tee "$OUT/tests_ep.log" | tail -25
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "$E2E" = 1 ]; then
  echo "== e2e_ep.py on $NGPU GPU(s): ${ARGS[*]:-(defaults: check, then bench)}"
  python3 -m torch.distributed.run --standalone --nproc-per-node "$NGPU" benchmarks/e2e_ep.py --out "$OUT" \
    "${ARGS[@]}" 2>&1 | tee "$OUT/e2e_ep.log" | tail -60
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status
