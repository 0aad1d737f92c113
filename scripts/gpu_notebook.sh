#!/usr/bin/env bash
# examples/gpt_oss_20b.ipynb on the GPU machine, unchanged but for its two parameters, against a gpt-oss-20b-shaped
# MXFP4 checkpoint with random weights written there (the real weights cannot be downloaded there):
#
#   scripts/gpu_notebook.sh [--tiny] [--checkpoint DIR]
#
# 1. the wheels: .whl/525/ (transformers 5.25 pair, as gpu_run.sh installs it) into /tmp/site525, and from
#    .whl/nb/ (nbclient, nbformat, ipykernel and their dependencies; `make wheels`) those the machine lacks into
#    /tmp/sitenb; both on PYTHONPATH;
# 2. the CUDA build (scripts/build_kernel.py --backend cuda, as gpu_run.sh), unless build/ already has it;
# 3. scripts/random_mxfp4_checkpoint.py --shape 20b --device cuda to DIR (default /tmp/gpt-oss-20b-random-mxfp4,
#    ~13.8 GB in 25 shards; a complete one from an earlier call on the same machine is reused);
# 4. examples/run_notebook.py DIR cuda: MODEL_ID=DIR, DEVICE="cuda". With .anchors/gpt-oss-triton-kernels carried
#    (as benchmarks/e2e_model.py --mxfp4 uses it), LOCAL_KERNELS resolves the Hub kernel of transformers' own MXFP4
#    path to it, so the notebook's baseline is transformers' MXFP4 path (Mxfp4GptOssMLP) rather than its
#    dequantized bf16 fallback; the baseline's label names the MoE class it got.
# --tiny: the same steps on the CPU with the tiny shape and this Python's packages, no wheels (CI runs this:
#   tests/test_notebook.py).
#
# $OUT (default ./gpu_out) gets: gpu.txt (nvidia-smi), build.log (when it built), checkpoint.log (the write, timed),
# notebook.log, gpt_oss_20b.executed.ipynb (the executed notebook) and gpt_oss_20b.outputs.txt (each code cell's
# source and output as text: the speed and memory table is in the "Memory and speed" cell's output).
#
# From this machine (after `make wheels`): run(command="bash scripts/gpu_notebook.sh", carry=[".whl/525", ".whl/nb",
# ".anchors"]); a machine kept warm reuses build/ and the checkpoint.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu_out}
TINY=0; CKPT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --checkpoint) CKPT="${2:-}"; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
if [ "$TINY" = 1 ]; then
  SHAPE=tiny; DEVICE=cpu; BACKEND=cpu; PY=${PYTHON:-python3}
  CKPT=${CKPT:-SCRATCH/tiny-random-mxfp4}
else
  SHAPE=20b; DEVICE=cuda; BACKEND=cuda; PY=python3
  CKPT=${CKPT:-/tmp/gpt-oss-20b-random-mxfp4}
fi
mkdir -p "$OUT"
scratch=$(mktemp -d)
CKPT=${CKPT/#SCRATCH/$scratch}
# The Jupyter kernel's connection files and IPython's profile go to scratch space, not $HOME.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export JUPYTER_RUNTIME_DIR=$scratch/jupyter-runtime IPYTHONDIR=$scratch/ipython JUPYTER_PLATFORM_DIRS=1
shopt -s nullglob

if [ "$TINY" = 0 ]; then
  wheels=(.whl/525/*.whl)
  nb_wheels=(.whl/nb/*.whl)
  [ ${#wheels[@]} -gt 0 ] && [ ${#nb_wheels[@]} -gt 0 ] || {
    echo "no wheels in .whl/525/ or .whl/nb/: run \`make wheels\` and carry .whl/525 and .whl/nb"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site525 \
    "${wheels[@]}" || { echo "wheel install failed (.whl/525)"; exit 1; }
  export PYTHONPATH=/tmp/site525
  # Only what neither the machine nor the 5.25 set has: the image's own numpy, packaging, ... stay in charge.
  mapfile -t missing < <("$PY" - "${nb_wheels[@]}" <<'EOF'
import importlib.metadata as md
import sys

for wheel in sys.argv[1:]:
    try:
        md.distribution(wheel.rsplit("/", 1)[-1].split("-")[0])
    except md.PackageNotFoundError:
        print(wheel)
EOF
)
  if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sitenb \
      "${missing[@]}" || { echo "wheel install failed (.whl/nb)"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site525:/tmp/sitenb
  echo "== wheels: .whl/525, and ${#missing[@]} of .whl/nb's ${#nb_wheels[@]} (PYTHONPATH=$PYTHONPATH)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c 'import torch, transformers, kernels, nbclient, ipykernel; print("torch", torch.__version__, "transformers",
transformers.__version__, "kernels", kernels.__version__, "nbclient", nbclient.__version__)' || exit 1

anchor=$PWD/.anchors/gpt-oss-triton-kernels
if [ "$TINY" = 0 ] && [ -d "$anchor" ]; then
  export LOCAL_KERNELS="${LOCAL_KERNELS:+$LOCAL_KERNELS:}kernels-community/gpt-oss-triton-kernels=$anchor"
  echo "LOCAL_KERNELS=$LOCAL_KERNELS"
fi

if [ "$BACKEND" = cpu ]; then built=(build/torch*-cpu-*/metadata.json); else built=(build/torch*-cu[0-9]*/metadata.json); fi
if [ ${#built[@]} -eq 0 ]; then
  echo "== build ($BACKEND)"
  SECONDS=0
  env MAX_JOBS=16 "$PY" scripts/build_kernel.py --backend "$BACKEND" 2>&1 | tee "$OUT/build.log" | tail -5
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed"; exit 1; }
  echo "build: ${SECONDS} s"
fi

echo "== checkpoint ($SHAPE-shaped, random MXFP4) in $CKPT"
if [ -f "$CKPT/.complete" ] && [ "$(cat "$CKPT/.complete")" = "$SHAPE" ]; then
  echo "reusing the complete checkpoint in $CKPT" | tee "$OUT/checkpoint.log"
else
  rm -rf "$CKPT"
  "$PY" scripts/random_mxfp4_checkpoint.py "$CKPT" --shape "$SHAPE" --device "$DEVICE" 2>&1 | tee "$OUT/checkpoint.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "checkpoint write failed"; exit 1; }
  echo "$SHAPE" > "$CKPT/.complete"
fi
df -h "$CKPT" | tee -a "$OUT/checkpoint.log"

echo "== notebook (MODEL_ID=$CKPT, DEVICE=$DEVICE)"
SECONDS=0
"$PY" examples/run_notebook.py "$CKPT" "$DEVICE" --out "$OUT/gpt_oss_20b.executed.ipynb" \
  --text "$OUT/gpt_oss_20b.outputs.txt" --timeout 420 2>&1 | tee "$OUT/notebook.log"
status=${PIPESTATUS[0]}
echo "notebook: ${SECONDS} s, exit status $status" | tee -a "$OUT/notebook.log"
[ -f "$OUT/gpt_oss_20b.outputs.txt" ] && cat "$OUT/gpt_oss_20b.outputs.txt"
rm -rf "$scratch"
exit "$status"
