#!/usr/bin/env bash
# Installs what the build, the demo and the tests need into the current Python.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install -q "torch==2.13.0"
fi
"$PYTHON" -m pip install -q -r "$(dirname "$0")/../requirements.txt"
