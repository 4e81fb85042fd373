#!/usr/bin/env bash
# Create the project's virtual environment when missing and install the pinned stack into it.
# torch comes first from torch==2.13.0 (the CPU build on this machine's disk); installing it after
# another package would let pip pick a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed")'
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
touch "$VENV/.installed"
echo "setup: $VENV ready ($("$VENV/bin/python" -c 'import torch, transformers, deepspeed; print("torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null))"
