"""The local SLURM cluster really runs jobs: sbatch, arrays, limits, srun steps."""
import subprocess

import pytest

from cells import CEILING_S
from slurm_fixture import sacct_rows, wait_job

pytestmark = pytest.mark.slurm


def sbatch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          timeout=CEILING_S, cwd=cwd, stdin=subprocess.DEVNULL)


def submit(*args: str, cwd=None) -> str:
    proc = sbatch(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def test_wrap_job_completes(slurm_cluster, tmp_path):
    out = tmp_path / "hello.txt"
    job = submit("-o", str(tmp_path / "slurm-%j.out"), "--wrap", f"echo hello > {out}")
    assert wait_job(job) == "COMPLETED"
    assert out.read_text().strip() == "hello"
    [row] = sacct_rows(job, ["JobID", "State", "ExitCode", "Partition", "NodeList"])
    assert row == {"JobID": job, "State": "COMPLETED", "ExitCode": "0:0",
                   "Partition": slurm_cluster.partition, "NodeList": slurm_cluster.node}


def test_array_tasks_get_distinct_ids(slurm_cluster, tmp_path):
    job = submit("--array=0-1", "-o", str(tmp_path / "slurm-%A_%a.out"), "--chdir", str(tmp_path),
                 "--wrap", "echo $SLURM_ARRAY_TASK_ID > task_$SLURM_ARRAY_TASK_ID.txt")
    assert wait_job(job, tasks=2) == "COMPLETED"
    assert (tmp_path / "task_0.txt").read_text().strip() == "0"
    assert (tmp_path / "task_1.txt").read_text().strip() == "1"
    rows = sacct_rows(job, ["JobID", "State"])
    assert sorted(r["JobID"] for r in rows) == [f"{job}_0", f"{job}_1"]
    assert {r["State"] for r in rows} == {"COMPLETED"}


def test_over_ask_memory_refused_at_submit(slurm_cluster):
    mem = "100G" if slurm_cluster.mem_mb < 100 * 1024 else f"{2 * slurm_cluster.mem_mb}M"
    proc = sbatch(f"--mem={mem}", "--wrap", "true")
    assert proc.returncode != 0
    assert "Requested node configuration is not available" in proc.stderr


def test_srun_two_task_step(slurm_cluster, tmp_path):
    if slurm_cluster.cpus < 2 or slurm_cluster.mem_mb < 2 * 2048:
        pytest.skip("needs 2 CPUs and 4 GB on the node")
    out = tmp_path / "ranks.txt"
    job = submit("-n", "2", "-o", str(tmp_path / "slurm-%j.out"), "--wrap",
                 f"srun -n 2 bash -c 'echo $SLURM_PROCID $(hostname -s)' > {out}")
    assert wait_job(job) == "COMPLETED", (tmp_path / f"slurm-{job}.out").read_text()
    lines = sorted(out.read_text().splitlines())
    assert lines == [f"0 {slurm_cluster.node}", f"1 {slurm_cluster.node}"]
    steps = {r["JobID"]: r for r in sacct_rows(job, ["JobID", "State", "NTasks"], steps=True)}
    assert steps[f"{job}.0"]["State"] == "COMPLETED"
    assert steps[f"{job}.0"]["NTasks"] == "2"
