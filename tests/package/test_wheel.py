"""The wheel is the kit: built from this tree, installed into a fresh virtualenv, run from an empty folder.

The new environment reuses this environment's already-installed dependencies through a .pth line (installing
torch and the rest again would take minutes and a network), but imports `ftgrid` only from the wheel: the
checkout is neither on its path nor its working directory.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ftgrid import KIT_ROOT

pytestmark = pytest.mark.slow


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # built from a copy: setuptools leaves build/ and *.egg-info in the source folder
    src = tmp_path_factory.mktemp("src") / "ftgrid"
    shutil.copytree(KIT_ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src])
    (whl,) = out.glob("ftgrid-*.whl")
    return whl


def test_wheel_ships_every_template_registry_tokenizer_and_sample(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("ftgrid/models.yaml", "ftgrid/launch/gpus.yaml", "ftgrid/launch/measured_peaks.csv",
                     "ftgrid/slurm_templates/job.sbatch.j2", "ftgrid/slurm_templates/macros.j2",
                     "ftgrid/ds_configs/zero.json.j2", "ftgrid/finetune/assets/tokenizer-tiny/tokenizer.json",
                     "ftgrid/data_prep/samples/wordnet_instruct.jsonl",
                     "ftgrid/finetune/assets/pythia-demo/model.safetensors",
                     "ftgrid/data_prep/samples/ultrachat/train_sft.parquet", "ftgrid/finetune/train.py"):
        assert expected in names, expected
    # one import name: nothing outside ftgrid/ but the distribution's metadata
    assert {n.split("/")[0] for n in names} == {"ftgrid", "ftgrid-0.2.0.dist-info"}
    entry_points = zipfile.ZipFile(wheel).read("ftgrid-0.2.0.dist-info/entry_points.txt").decode()
    assert "ftgrid = ftgrid.cli:main" in entry_points


def test_installed_wheel_plans_renders_and_trains_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    new_site = run([py, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip()
    # reuse this environment's dependencies: every site dir of it except where ftgrid itself comes from
    Path(new_site, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", FTGRID_DATA_CACHE=str(tmp_path / "cache"))
    where = run([py, "-c", "import ftgrid; print(ftgrid.KIT_ROOT)"], cwd=empty, env=env).stdout.strip()
    assert where.startswith(str(venv)), where  # the wheel's copy, not this checkout
    ftgrid = venv / "bin" / "ftgrid"
    run([ftgrid, "grid", "--models", "pythia-tiny", "--ranks", "4", "--gpu", "cpu", "--dry-run", "--out", "runs/dry"],
        cwd=empty, env=env)
    (job,) = (empty / "runs" / "dry").glob("*/job.sbatch")
    text = job.read_text()
    assert f"{where}/finetune/train.py" in text and str(KIT_ROOT) + "/" not in text
    run(["bash", "-n", job])
    run([ftgrid, "train", "--model", "pythia-tiny", "--rank", "4", "--max_steps", "2", "--micro-batch", "2",
         "--seq-len", "64", "--out", "runs/one"], cwd=empty, env=env)
    metrics = json.loads((empty / "runs" / "one" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["tokens"] > 0 and metrics["eval_loss"] > 0
    # the README's one-liner loads the cell's adapter onto its base with PEFT alone
    code = ("from transformers import AutoModelForCausalLM; from peft import PeftModel; "
            "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('runs/one/base'), 'runs/one', "
            "subfolder='adapter'); print(sum(p.numel() for n, p in m.named_parameters() if 'lora_' in n))")
    assert int(run([py, "-c", code], cwd=empty, env=env).stdout.split()[-1]) == metrics["trainable_params"]
