#!/usr/bin/env bash
# Third CI leg: the Triton kernels under TRITON_INTERPRET=1 on the CPU against float64 (the attention variants,
# the MoE grouped GEMM's MXFP4 and FP8 branches, finalize_slice): scripts/*_interpret_check.py, the MXFP4 PTX
# emulation (scripts/mxfp4_asm_emulation_check.py) and the CUDA prefill GEMM's A fragments
# (scripts/mxfp4_prefill_fragment_check.py). Triton 3.6 (the GPU machine's) and numpy < 2.3 (its interpreter needs it) go into a folder of their own, put first on PYTHONPATH for
# these runs only, so nothing installed in the environment changes. About 3 minutes.
#
#   scripts/ci_interpret.sh [SITE]     SITE defaults to /tmp/gpt-oss-kernels-interpret (reused if present)
#
# PYTHON (default python3): an interpreter with torch (the first leg's).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
SITE=${1:-/tmp/gpt-oss-kernels-interpret}
py=${PYTHON:-python3}
if [ ! -d "$SITE/triton" ]; then
  "$py" -m pip install -q --target "$SITE" "triton==3.6.0" "numpy<2.3" || { echo "interpret leg: install failed"; exit 1; }
fi
status=0
for check in attn moe_mxfp4 fp8; do
  out=$(PYTHONPATH="$SITE" TRITON_INTERPRET=1 "$py" "scripts/${check}_interpret_check.py" 2>&1)
  rc=$?
  echo "$out" | grep -v "^ok " | tail -5
  echo "interpret leg: ${check}_interpret_check.py rc=$rc"
  [ $rc -eq 0 ] || status=1
done
# the packed PTX dequantization of "mxfp4_asm" (both word forms) emulated bit for bit (no interpreter: PTX)
PYTHONPATH="$SITE" "$py" scripts/mxfp4_asm_emulation_check.py | tail -1
rc=${PIPESTATUS[0]}
echo "interpret leg: mxfp4_asm_emulation_check.py rc=$rc"
[ $rc -eq 0 ] || status=1
# the CUDA prefill GEMM's A fragments from kernel words, emulated lane by lane (no GPU)
"$py" scripts/mxfp4_prefill_fragment_check.py | tail -1
rc=${PIPESTATUS[0]}
echo "interpret leg: mxfp4_prefill_fragment_check.py rc=$rc"
[ $rc -eq 0 ] || status=1
exit $status
