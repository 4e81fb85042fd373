"""ftgrid: a launch kit for LLM fine-tuning grids on SLURM.

One distribution, one import name: `ftgrid.launch`, `ftgrid.finetune`, `ftgrid.data_prep` and the shared
kernel (`ftgrid.schema`, `ftgrid.registry`, `ftgrid.yamlio`, `ftgrid.errors`, `ftgrid.cli`, `ftgrid.rundir`).
In a wheel those packages sit inside this folder; in a checkout they are the top-level folders next to it,
so the package's search path includes the checkout root (the documented `python launch/grid.py` forms work
there without installing anything).
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "launch" / "grid.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 - a package's own search path
    KIT_ROOT = _CHECKOUT
else:
    KIT_ROOT = _HERE
"""Where `launch/`, `finetune/`, `data_prep/`, `slurm_templates/` and `ds_configs/` live."""

__version__ = "0.2.0"
