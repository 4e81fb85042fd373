"""A rendered job.sbatch, submitted by hand with `sbatch`, trains its cell on the real local SLURM."""
import json
import subprocess
import sys

import pytest

from cells import ROOT, explain, run
from slurm_fixture import sacct_rows, wait_job

pytestmark = pytest.mark.slurm


def render_tiny_cell(out, name="by-hand"):
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--name", name, "--out", out,
                "--models", "pythia-tiny", "--ranks", "4", "--lrs", "3e-3", "--gpu", "cpu", "--cpus-per-task", "1",
                "--mem", "3G", "--time", "00:10:00", "--max-steps", "12", "--seq-len", "64",
                "--set", "eval_rows=32", "--dry-run"])
    assert proc.returncode == 0, explain(proc)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    return cell


def test_sbatch_test_only_accepts_the_rendered_script(slurm_cluster, tmp_path):
    cell = render_tiny_cell(tmp_path / "sweep")
    proc = subprocess.run(["sbatch", "--test-only", cell / "job.sbatch"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr


def test_sbatch_by_hand_runs_the_cell_to_done(slurm_cluster, tmp_path):
    cell = render_tiny_cell(tmp_path / "sweep")
    proc = subprocess.run(["sbatch", "--parsable", cell / "job.sbatch"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    state = wait_job(job_id, timeout=300)
    logs = "\n".join(p.read_text() for p in (cell / "logs").glob("*"))
    assert state == "COMPLETED", logs[-3000:]
    metrics = json.loads((cell / "metrics.json").read_text())
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "done" and status["slurm_job_id"] == job_id
    assert metrics["steps"] == 12 and metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert (cell / "logs" / f"slurm-{job_id}.out").exists()
    (row,) = sacct_rows(job_id, ["JobName", "State"])
    assert row["JobName"] == cell.name
