"""Render a cell's files from the templates in `slurm_templates/` and `ds_configs/`.

Templates are data; this module only builds their context. Jinja runs with StrictUndefined (a
missing value is an error, never an empty string) and one filter, `shquote`, quotes every value
that reaches a shell line.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import jinja2

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = PROJECT_ROOT / "finetune" / "train.py"
SIGNAL_GRACE_S = 120  # SLURM sends USR1 this long before the time limit: time to checkpoint


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([PROJECT_ROOT / "slurm_templates", PROJECT_ROOT / "ds_configs"]),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
        trim_blocks=False, lstrip_blocks=False)
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


ENV = _environment()


def ds_config(zero: int, offload: str, *, pin_memory: bool = True) -> dict:
    text = ENV.get_template("zero.json.j2").render(zero=zero, offload=offload, pin_memory=pin_memory)
    return json.loads(text)


def sbatch(*, cell, sweep: str, run_dir: Path, plan, python: str, project_root: Path = PROJECT_ROOT,
           nproc_per_node: int = 1) -> str:
    run_dir = Path(run_dir)
    paths = {"job": run_dir / "job.sbatch", "cell_yaml": run_dir / "cell.yaml", "logs": run_dir / "logs"}
    return ENV.get_template("job.sbatch.j2").render(
        cell=cell, sweep=sweep, res=cell.resources.__dict__, plan=plan, paths=paths, python=python,
        train_py=Path(project_root) / "finetune" / "train.py", project_root=project_root,
        nproc_per_node=nproc_per_node, signal_grace=SIGNAL_GRACE_S)
