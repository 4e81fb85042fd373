#!/usr/bin/env bash
# Create the project's virtual environment when missing and install the verified stack into it:
# pyproject.toml's ranges, held to the exact versions of constraints.txt.
# torch comes first from torch==2.13.0 (the CPU build on this machine's disk); installing it after
# another package would let pip pick a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (transformers 5, trl 1)")'
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt torch
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
# DeepSpeed compiles its CPU communication op (shared-memory all-reduce) on first use: about a minute
# on two cores. Build it once here, into torch's extension cache, not in the first multi-process run.
"$VENV/bin/python" -c 'from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None:
    builder.load(verbose=False)' >/dev/null
touch "$VENV/.installed"
echo "setup: $VENV ready ($("$VENV/bin/python" -c 'import torch, transformers, deepspeed; print("torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null))"
