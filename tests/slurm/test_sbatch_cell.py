"""A rendered job.sbatch, submitted by hand with `sbatch`, trains its cell on the real local SLURM."""
import json
import shutil
import subprocess
import sys

import pytest

from cells import ROOT, explain, metrics, run, train
from slurm_fixture import run_states, sacct_rows, wait_for_file, wait_job

pytestmark = pytest.mark.slurm


def render_tiny_cell(out, *extra, name="by-hand", steps=12):
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--name", name, "--out", out,
                "--models", "pythia-tiny", "--ranks", "4", "--lrs", "3e-3", "--gpu", "cpu", "--cpus-per-task", "1",
                "--mem", "3G", "--time", "00:10:00", "--max-steps", str(steps), "--seq-len", "64",
                "--set", "eval_rows=32", "--dry-run", *extra])
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
    state = wait_job(job_id)
    logs = "\n".join(p.read_text() for p in (cell / "logs").glob("*"))
    assert state == "COMPLETED", logs[-3000:]
    metrics = json.loads((cell / "metrics.json").read_text())
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "done" and status["slurm_job_id"] == job_id
    assert metrics["steps"] == 12 and metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert (cell / "logs" / f"slurm-{job_id}.out").exists()
    (row,) = sacct_rows(job_id, ["JobName", "State"])
    assert row["JobName"] == cell.name


@pytest.mark.slow
def test_sbatch_of_the_deepspeed_launcher_variant_runs_the_cell(slurm_cluster, tmp_path):
    # Set-up lines run verbatim in the job: this one leaves a mark the test can see.
    cell = render_tiny_cell(tmp_path / "sweep", "--launcher", "deepspeed", "--setup", "export FTGRID_SETUP_RAN=yes",
                            "--setup", 'echo "setup ran: $FTGRID_SETUP_RAN"')
    script = (cell / "job.sbatch").read_text()
    assert "-m deepspeed.launcher.runner" in script and "--no_ssh_check" in script  # one node: no ssh needed
    proc = subprocess.run(["sbatch", "--parsable", cell / "job.sbatch"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    state = wait_job(job_id)
    log = (cell / "logs" / f"slurm-{job_id}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-3000:]
    assert "setup ran: yes" in log
    assert "deepspeed.launcher.launch" in log  # DeepSpeed's launcher started the rank
    assert (cell / "logs" / f"hostfile-{job_id}").read_text() == f"{slurm_cluster.node} slots=1\n"
    assert json.loads((cell / "status.json").read_text())["state"] == "done"
    assert json.loads((cell / "metrics.json").read_text())["steps"] == 12


@pytest.mark.slow
def test_scancel_usr1_checkpoints_requeues_and_resumes_to_the_uninterrupted_loss(slurm_cluster, tmp_path):
    steps = 40
    cell = render_tiny_cell(tmp_path / "sweep", "--set", "save_every=5", "--set", "num_samples=0", steps=steps)
    # The same cell run straight through, without SLURM: the reference the resumed job must end on.
    straight = tmp_path / "straight"
    straight.mkdir()
    shutil.copy(cell / "cell.yaml", straight / "cell.yaml")
    ref = train(straight / "cell.yaml")
    assert ref.returncode == 0, explain(ref)

    proc = subprocess.run(["sbatch", "--parsable", cell / "job.sbatch"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    wait_for_file(cell / "checkpoints" / "checkpoint-5" / "trainer_state.json", job_id)  # training is under way
    signal = subprocess.run(["scancel", "--signal=USR1", job_id], capture_output=True, text=True)
    assert signal.returncode == 0, signal.stderr

    state = wait_job(job_id)
    log = (cell / "logs" / f"slurm-{job_id}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-4000:]
    assert "requeueing job" in log and "resuming from" in log, log[-4000:]
    status = json.loads((cell / "status.json").read_text())
    states = [h["state"] for h in status["history"]]
    assert "preempted" in states and states[-1] == "done", states
    assert status["resume_from"].startswith(str(cell / "checkpoints" / "checkpoint-")), status
    # sacct keeps the first run's record as REQUEUED next to the final COMPLETED one.
    records = run_states(job_id)
    assert "REQUEUED" in records and records[-1] == "COMPLETED", records

    m, want = metrics(cell), metrics(straight)
    assert m["steps"] == want["steps"] == steps
    assert m["tokens"] == want["tokens"]
    assert m["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
    assert m["train_loss_last"] == pytest.approx(want["train_loss_last"], abs=1e-4)
    print(f"\nSLURM preemption: requeued, resumed from {status['resume_from']}; eval loss "
          f"{m['eval_loss']!r} vs uninterrupted {want['eval_loss']!r}; sacct {records}")
