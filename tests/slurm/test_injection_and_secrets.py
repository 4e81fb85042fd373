"""Nothing a user typed reaches a shell unquoted, and secrets never land on disk.

Hostile values carry shell that would create a canary file if any of it ran: `;`, `$(...)`,
backticks, quotes and newlines. Values SLURM or an #SBATCH line cannot carry are refused (exit 2,
nothing written); the rest are rendered, and the rendered scripts are really run (sbatch on the local
SLURM, the hostfile runner with the DeepSpeed launcher): the cells finish and no canary appears.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cells import ROOT, SECRETS, explain, run
from slurm_fixture import wait_job

GRID = ROOT / "launch" / "grid.py"
CANARY = "ftgrid-canary"
# Shell in every form: each would create ftgrid-canary-N in the current folder if it ran.
HOSTILE = (f"x;touch {CANARY}-1;$(touch {CANARY}-2)`touch {CANARY}-3`'\"\n"
           f"touch {CANARY}-4\n")
# The same without whitespace, quotes or newlines (what an #SBATCH --output path can carry): still shell.
HOSTILE_PATH = f"s;touch${{IFS}}{CANARY}-5;$(touch${{IFS}}{CANARY}-6)`touch${{IFS}}{CANARY}-7`&&x"
TINY = ["--models", "pythia-tiny", "--ranks", "4", "--lrs", "3e-3", "--gpu", "cpu", "--cpus-per-task", "1",
        "--mem", "3G", "--time", "00:10:00", "--max-steps", "4", "--seq-len", "64", "--set", "eval_rows=16",
        "--set", "num_samples=1"]


def canaries(work: Path) -> list[Path]:
    """Canaries anywhere under the test's folder, or in the folders a job or script runs in (the
    project root it cds to, the home folder)."""
    return sorted(Path(work).rglob(f"{CANARY}*")) + sorted(ROOT.glob(f"{CANARY}*")) + \
        sorted(Path.home().glob(f"{CANARY}*"))


def grid(*args, **env):
    return run([sys.executable, GRID, *map(str, args)], **env)


REFUSED = [
    (["--name", f"n{HOSTILE}"], "sweep name"),
    (["--partition", f"p{HOSTILE}"], "partition"),
    (["--account", f"a{HOSTILE}"], "account"),
    (["--qos", f"q{HOSTILE}"], "qos"),
    (["--constraint", f"c{HOSTILE}"], "constraint"),
    (["--mem", f"3G{HOSTILE}"], "mem"),
    (["--time", f"10{HOSTILE}"], "time"),
    (["--sbatch", f"--comment={HOSTILE}"], "sbatch line"),
    (["--out", "T/o x"], "an #SBATCH line cannot carry"),
    (["--out", f"T/o{HOSTILE}"], "an #SBATCH line cannot carry"),
    (["--python", f"python{HOSTILE}"], "control character"),
    (["--container", f"image=img{HOSTILE}"], "container"),
]


@pytest.mark.parametrize("argv, expected", REFUSED, ids=[a[0] for a, _ in REFUSED])
def test_hostile_values_slurm_cannot_carry_are_refused_before_anything_is_written(tmp_path, argv, expected):
    argv = [a.replace("T/", f"{tmp_path}/") for a in argv]
    out = [] if "--out" in argv else ["--out", tmp_path / "never"]
    proc = grid(*TINY, *argv, *out, "--executor", "slurm")
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    assert not canaries(tmp_path)


@pytest.fixture
def hostile_inputs(tmp_path):
    """A sweep folder whose path is shell, and a dataset file whose name is shell (newline included)."""
    work = tmp_path / "w"
    work.mkdir()
    data = work / f"d{HOSTILE}.jsonl"
    data.write_bytes((ROOT / "data_prep" / "samples" / "dolly.jsonl").read_bytes())
    return work, data


@pytest.mark.slurm
@pytest.mark.slow
def test_hostile_paths_and_values_render_and_run_on_slurm_without_executing(slurm_cluster, hostile_inputs):
    work, data = hostile_inputs
    out = work / HOSTILE_PATH
    proc = grid(*TINY, "--out", out, "--datasets", data, "--set", f"wandb_project=p{HOSTILE}", "--dry-run")
    assert proc.returncode == 0, explain(proc)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    script = cell / "job.sbatch"
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    job = subprocess.run(["sbatch", "--parsable", script], capture_output=True, text=True, cwd=work)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    state = wait_job(job_id)
    log = (cell / "logs" / f"slurm-{job_id}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-3000:]
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["dataset"] == str(data) and metrics["steps"] == 4
    assert not canaries(work), "a hostile value ran as shell"


@pytest.mark.slow
def test_hostfile_runner_with_a_hostile_sweep_path_runs_without_executing(hostile_inputs):
    work, _ = hostile_inputs
    out = work / HOSTILE_PATH
    hosts = work / "hosts.txt"
    hosts.write_text("localhost slots=1\n")
    proc = grid(*TINY, "--out", out, "--hostfile", hosts, "--executor", "hostfile")
    assert proc.returncode == 0, explain(proc)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    assert json.loads((cell / "status.json").read_text())["state"] == "done"
    assert not canaries(work), "a hostile value ran as shell"


@pytest.mark.slurm
@pytest.mark.slow
def test_planted_secrets_appear_nowhere_in_a_sweep_run_on_slurm(slurm_sweep):
    """Secrets in the environment of the submitting shell: the jobs inherit them (that is how they pass),
    but no rendered file, log (a failed cell's traceback included), status, metrics, results table or
    wandb file holds them. The shared sweep (slurm_fixture.slurm_sweep) was submitted with them planted."""
    out, proc = slurm_sweep.out, slurm_sweep.proc
    report = run([sys.executable, "-m", "launch.report", out], **SECRETS)
    assert report.returncode == 0, explain(report)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"job.sbatch", "cell.yaml", "metrics.json", "status.json", "results.csv", "results.md"} <= names
    assert any(p.suffix == ".wandb" for p in files), "no offline wandb run was written"
    assert sum(1 for p in files if p.name.startswith("slurm-") or p.name == "train.log") >= 2
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} written into {path.relative_to(out)}"
    for name, secret in SECRETS.items():
        assert secret not in proc.stdout + proc.stderr + report.stdout + report.stderr, f"{name} printed"
    assert os.environ.get("WANDB_API_KEY") != SECRETS["WANDB_API_KEY"]  # planted in the children only
