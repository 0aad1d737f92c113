#!/usr/bin/env bash
# Second CI leg: the older pair, transformers 5.22.2 + kernels 0.17.2, in a venv of its own,
# against the CPU build that the first leg (`make test`) made: the same torch==2.13.0, so the
# same build/torch213-cxx11-cpu-x86_64-linux/ (built here only when it is missing). It runs the
# build tests and every transformers-integration test file (tests/test_integration_*.py and the
# MoE and attention ones); the CUDA compile check is left to the first leg (it does not depend
# on the pair).
#
#   scripts/ci_compat.sh [VENV]      VENV defaults to /tmp/gpt-oss-kernels-522 (reused if present)
#
# PYTHON (default python3) creates the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/gpt-oss-kernels-522}
export HF_HUB_OFFLINE=1

[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
py=$VENV/bin/python
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q "transformers==5.22.2" "kernels==0.17.2" accelerate pytest numpy ninja
"$py" -c 'import torch, transformers, kernels; print("compat leg: torch", torch.__version__, "transformers", transformers.__version__, "kernels", kernels.__version__)'

variant=$("$py" -c 'import torch; print("torch%s%s-cxx11-cpu-x86_64-linux" % tuple(torch.__version__.split(".")[:2]))')
if [ ! -f "build/$variant/metadata.json" ]; then
  "$py" scripts/build_kernel.py --backend cpu
fi

shopt -s nullglob
tests=(tests/test_build.py tests/test_integration_transformers.py tests/test_moe_integration.py
       tests/test_attention_transformers.py tests/test_integration_*.py)
mapfile -t tests < <(printf '%s\n' "${tests[@]}" | sort -u)
"$py" -m pytest -q "${tests[@]}" --deselect tests/test_build.py::test_cuda_sources_compile_for_sm90a
