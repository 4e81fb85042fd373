"""Helpers for tests that train tiny cells in fresh processes (as every launcher does)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "finetune" / "train.py"

# A tiny cell that learns visibly in a few seconds on one CPU core.
TINY = dict(model="pythia-tiny", rank=8, target_modules="all-linear", lr=3e-3, dataset="wordnet:small",
            seq_len=96, micro_batch=8, max_steps=30, eval_rows=64, logging_steps=5, warmup=0.0)


def make_cell(cell_dir: Path, zero: int | None = None, offload: str = "none", **overrides) -> Path:
    """Write cell.yaml (and ds_config.json when `zero` is given) the way launch/grid.py does."""
    from launch import render

    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    run = dict(TINY, name=cell_dir.name, **overrides)
    if zero is not None:
        (cell_dir / "ds_config.json").write_text(json.dumps(render.ds_config(zero, offload, pin_memory=False)))
        run["deepspeed"] = "ds_config.json"
    (cell_dir / "cell.yaml").write_text(yaml.safe_dump(run))
    return cell_dir / "cell.yaml"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=clean_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    return proc


def train(cell_yaml: Path, *extra, timeout: float = 300) -> subprocess.CompletedProcess:
    return run([sys.executable, TRAIN_PY, "--cell", cell_yaml, *extra], timeout=timeout)


def torchrun(cell_yaml: Path, nproc: int = 2, timeout: float = 400) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                TRAIN_PY, "--cell", cell_yaml], timeout=timeout)


def metrics(cell_dir: Path) -> dict:
    return json.loads((Path(cell_dir) / "metrics.json").read_text())


def status(cell_dir: Path) -> dict:
    return json.loads((Path(cell_dir) / "status.json").read_text())


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
