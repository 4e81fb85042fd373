"""Executors without a cluster: submitit parameters, outcomes recorded in status.json, sacct reconciling."""
import json
import sys

import pytest

from ftgrid import rundir
from ftgrid.launch import submit
from ftgrid.launch.spec import Resources, slurm_time_minutes


def test_submitit_parameters_carry_the_cells_sbatch_settings():
    res = Resources(gpu="h100-80gb", nodes=2, gpus_per_node=8, cpus_per_task=16, mem="200G", time="1-02:00:00",
                    partition="gpu", account="proj", constraint="h100&ib", exclusive=True,
                    sbatch=("--mail-type=END", "overcommit"), container={"image": "nvcr.io/x:1", "mount-home": False})
    params = submit.submitit_parameters(res, "sweep", max_parallel=3)
    assert params["nodes"] == 2 and params["tasks_per_node"] == 1 and params["gpus_per_node"] == 8
    assert params["timeout_min"] == 26 * 60 and params["slurm_array_parallelism"] == 3
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "proj" and params["slurm_mem"] == "200G"
    assert params["slurm_additional_parameters"] == {"requeue": True, "mail-type": "END", "overcommit": True,
                                                     "constraint": "h100&ib", "exclusive": True}
    assert params["slurm_srun_args"] == ["--container-image=nvcr.io/x:1", "--no-container-mount-home"]
    assert "gpus_per_node" not in submit.submitit_parameters(Resources(gpus_per_node=0), "s", 0)


@pytest.mark.parametrize("text, minutes", [("04:00:00", 240), ("00:10:00", 10), ("1-00:00:00", 1440), ("90", 90),
                                           ("00:00:30", 1), ("01:30", 2), ("1-02", 26 * 60),
                                           ("2-03:04", 2 * 1440 + 184)])
def test_slurm_time_to_minutes(text, minutes):
    assert slurm_time_minutes(text) == minutes


def test_a_cell_that_dies_before_the_entrypoint_speaks_is_marked_failed_with_its_log_tail(tmp_path):
    cell = tmp_path / "cell"
    (cell / "logs").mkdir(parents=True)
    (cell / "cell.yaml").write_text("model: pythia-tinyy\n")  # the entrypoint refuses it: exit 2, no status
    (outcome,) = submit.LocalExecutor(python=sys.executable, echo=lambda *_: None).submit([cell])
    assert outcome["state"] == "failed" and outcome["exit_code"] == 2
    status = json.loads((cell / "status.json").read_text())
    assert status["error"] == "exit code 2 before the entrypoint recorded an outcome"
    assert "error: unknown model 'pythia-tinyy'" in status["log_tail"]


def test_record_exit_keeps_the_entrypoints_verdict_and_adds_the_tail(tmp_path):
    log = tmp_path / "logs" / "train.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    rundir.write_status(tmp_path, "oom", error="CUDA out of memory")
    status = submit.record_exit(tmp_path, 3, log)
    assert status["state"] == "oom" and status["error"] == "CUDA out of memory"
    assert status["log_tail"].splitlines() == [f"line {i}" for i in range(15, 30)]
    rundir.write_status(tmp_path, "done")
    assert "log_tail" in submit.record_exit(tmp_path, 0, log)  # done stays done, untouched
    assert submit.record_exit(tmp_path, 0, log)["state"] == "done"


def test_refresh_marks_cells_slurm_ended_without_an_outcome(tmp_path, monkeypatch):
    cells = [tmp_path / n for n in ("a", "b", "c", "d")]
    for c in cells:
        (c / "logs").mkdir(parents=True)
    rundir.write_status(cells[0], "submitted", job_id="10_0")
    rundir.write_status(cells[1], "running", job_id="10_1")
    rundir.write_status(cells[2], "submitted", job_id="10_2")
    rundir.write_status(cells[3], "done", job_id="10_3")
    (cells[0] / "logs" / "train.log").write_text("slurmstepd: error: *** JOB 10 CANCELLED DUE TO TIME LIMIT ***\n")
    asked = []

    def fake_sacct(job_ids):  # what sacct answers for an array whose task 0 timed out
        asked.extend(job_ids)
        return {"10_0": "TIMEOUT", "10_1": "RUNNING", "10_2": "OUT_OF_MEMORY", "10_3": "COMPLETED"}

    monkeypatch.setattr(submit, "sacct_states", fake_sacct)
    statuses = submit.refresh(cells)
    assert sorted(asked) == ["10_0", "10_1", "10_2"]  # only cells SLURM may still hold
    assert statuses[cells[0]]["state"] == "failed" and "ended TIMEOUT" in statuses[cells[0]]["error"]
    assert "TIME LIMIT" in statuses[cells[0]]["log_tail"]
    assert statuses[cells[1]]["state"] == "running" and statuses[cells[1]]["slurm_state"] == "RUNNING"
    assert statuses[cells[2]]["state"] == "oom"
    assert json.loads((cells[0] / "status.json").read_text())["state"] == "failed"  # written, not only shown


def test_sacct_states_without_sacct_is_empty(monkeypatch):
    monkeypatch.setattr(submit.shutil, "which", lambda name: None)
    assert submit.sacct_states(["1"]) == {}
