"""Preemption on the grid's own path: submitit asks SLURM for `--signal=USR2@<grace>` in its arrays, and
`scancel --signal=USR2` is what that warning looks like. The cell checkpoints, submitit requeues the task,
the next start resumes, and the cell ends on the loss of an uninterrupted run."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cells import ROOT, explain, run, train
from slurm_fixture import CEILING_S, run_states, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GRID = ROOT / "launch" / "grid.py"
ARGS = ["--models", "pythia-tiny", "--lrs", "3e-3", "--ranks", "4,8", "--gpu", "cpu", "--cpus-per-task", "1",
        "--mem", "3G", "--time", "00:20:00", "--max-steps", "40", "--seq-len", "64", "--set", "eval_rows=32",
        "--set", "num_samples=0", "--executor", "slurm"]


def wait_for_text(path: Path, text: str, timeout: float = CEILING_S) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {timeout} s"
        time.sleep(0.2)


def test_usr2_to_a_submitit_array_task_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    out = tmp_path / "sweep"
    proc = run([sys.executable, GRID, "--name", "usr2", "--out", out, *ARGS], timeout=300)
    assert proc.returncode == 0, explain(proc)
    cell, other = sorted(p.parent for p in out.glob("*/cell.yaml"))
    job_id = json.loads((cell / "status.json").read_text())["job_id"]
    assert "_" in job_id  # a task of the sweep's array
    assert "#SBATCH --signal=USR2@" in next((out / ".submitit").rglob("*_submission.sh")).read_text()
    wait_for_text(cell / "logs" / "train.log", "params trainable/total")  # training under way
    sent = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr
    assert wait_job(job_id.split("_")[0]) == "COMPLETED"  # both tasks
    assert "preempted" not in [h["state"] for h in json.loads((other / "status.json").read_text())["history"]]
    final = json.loads((cell / "status.json").read_text())
    states = [h["state"] for h in final["history"]]
    assert final["state"] == "done" and "preempted" in states and states.count("running") == 2, states
    assert final["resume_from"] and "checkpoint-" in final["resume_from"], final
    log = (cell / "logs" / "train.log").read_text(errors="replace")
    assert f"got signal {int(signal.SIGUSR2)}" in log and f"resuming from {final['resume_from']}" in log
    assert "REQUEUED" in run_states(job_id)
    resumed = json.loads((cell / "metrics.json").read_text())
    assert resumed["steps"] == 40
    straight = train(cell / "cell.yaml", "--out", tmp_path / "straight", timeout=900)
    assert straight.returncode == 0, explain(straight)
    want = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert resumed["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
    assert resumed["train_loss_last"] == pytest.approx(want["train_loss_last"], abs=1e-4)
