"""The grid submitted with submitit as job arrays on the real local SLURM: throttling, resume, a failing
cell marked with its log tail and re-run alone, `--status` (one shared sweep: slurm_fixture.slurm_sweep)."""
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from cells import ROOT, explain, run
from slurm_fixture import TINY_GRID, run_states, sacct_rows, wait_for_file, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GRID = ROOT / "launch" / "grid.py"


def grid(*args, **env):
    return run([sys.executable, GRID, *args], **env)


def cell_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def status(cell: Path) -> dict:
    return json.loads((cell / "status.json").read_text())


def test_the_cells_go_out_as_one_throttled_array(slurm_sweep):
    assert "submitting: 100%" in slurm_sweep.proc.stderr and "waiting: 100%" in slurm_sweep.proc.stderr
    cells = cell_dirs(slurm_sweep.out)
    assert len(cells) == 3
    job_ids = {status(c)["job_id"] for c in cells}
    arrays = {j.split("_")[0] for j in job_ids}
    assert len(arrays) == 1 and len(job_ids) == 3, job_ids  # one sbatch call, three array tasks
    for c in cells:
        if "broken" not in c.name:
            assert json.loads((c / "metrics.json").read_text())["steps"] == 8
    (array_id,) = arrays
    assert wait_job(array_id) == "FAILED"  # the broken cell's task: a failed cell never exits 0
    rows = sacct_rows(array_id, ["JobID", "Start", "End", "State"])
    assert sorted(r["State"].split()[0] for r in rows) == ["COMPLETED", "COMPLETED", "FAILED"]
    spans = sorted((datetime.fromisoformat(r["Start"]), datetime.fromisoformat(r["End"])) for r in rows)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"--max-parallel 1 must run tasks one at a time: {spans}"
    # A second run of the same command submits nothing: done and failed cells are skipped (and the sweep,
    # still holding a failed cell, still exits 1).
    again = grid(*slurm_sweep.args)
    assert again.returncode == 1 and "0 cell(s) to run, 3 skipped" in again.stdout, explain(again)


def test_a_failing_cell_is_marked_with_its_log_tail_and_rerun_alone(slurm_sweep):
    out, args = slurm_sweep.out, slurm_sweep.args
    assert slurm_sweep.proc.returncode == 1, explain(slurm_sweep.proc)  # a failed cell: the sweep says so
    cells = cell_dirs(out)
    (bad,) = [c for c in cells if "broken" in c.name]
    good = [c for c in cells if c != bad]
    assert [status(c)["state"] for c in good] == ["done", "done"]
    failed = status(bad)
    assert failed["state"] == "failed" and failed["exit_code"] != 0
    assert "broken" in failed["error"], failed["error"]
    assert failed["log_tail"].strip() and "error:" in (bad / "logs" / "train.log").read_text()
    first_jobs = {c.name: status(c)["job_id"] for c in cells}

    shown = grid("--status", out)
    assert shown.returncode == 0, explain(shown)
    lines = shown.stdout.splitlines()
    assert lines[0] == f"{out}: 3 cell(s): done 2, failed 1"
    assert f"FAILED {bad.name}  (job {first_jobs[bad.name]})" in lines
    assert any(x.startswith("  error: ") for x in lines) and any(x.startswith("  | ") for x in lines)
    assert "--rerun failed" in lines[-1]

    # Fix the data, re-run: only the failed cell goes out again (one job: submitit makes no array of one).
    sample = (ROOT / "data_prep" / "samples" / "wordnet_instruct.jsonl").read_text().splitlines()[:300]
    slurm_sweep.broken.write_text("\n".join(sample) + "\n")
    again = grid(*args, "--rerun", "failed", "--wait")
    assert again.returncode == 0, explain(again)
    assert "1 cell(s) to run, 2 skipped" in again.stdout
    assert all(status(c)["state"] == "done" for c in cells)
    assert {c.name: status(c)["job_id"] for c in good} == {c.name: first_jobs[c.name] for c in good}
    new_job = status(bad)["job_id"]
    assert new_job.split("_")[0] != first_jobs[bad.name].split("_")[0]
    assert len(sacct_rows(new_job.split("_")[0], ["JobID"])) == 1


def test_scontrol_requeue_of_a_submitit_array_task_resumes_the_cell(slurm_cluster, tmp_path):
    """The grid's own path: a submitit array task requeued mid-training (what preemption does: SIGTERM to
    the job, torchrun passes it to the rank, which checkpoints) starts again and resumes the cell."""
    out = tmp_path / "sweep"
    args = ["--name", "requeue", "--out", out, "--ranks", "4", *TINY_GRID, "--max-steps", "40",
            "--set", "save_every=5", "--set", "num_samples=0"]
    proc = grid(*args)
    assert proc.returncode == 0, explain(proc)
    (cell,) = cell_dirs(out)
    job_id = status(cell)["job_id"]
    wait_for_file(cell / "checkpoints" / "checkpoint-10" / "trainer_state.json", job_id)
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    assert wait_job(job_id) == "COMPLETED"
    final = status(cell)
    states = [h["state"] for h in final["history"]]
    assert final["state"] == "done" and states.count("running") == 2, states
    assert final["resume_from"] and "checkpoint-" in final["resume_from"], final
    resumed_at = int(final["resume_from"].rsplit("-", 1)[1])
    assert resumed_at >= 10
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["steps"] == 40
    log = (cell / "logs" / "train.log").read_text(errors="replace")
    assert f"resuming from {final['resume_from']}" in log
    records = run_states(job_id)
    assert "REQUEUED" in records and records[-1] == "COMPLETED", records
