"""Two "nodes" on one machine: the rendered multi-node job.sbatch, run by SLURM as 2 tasks on the one
node, starts one torchrun per task; they rendezvous (c10d) on the head node and train one cell with
world size 2. The script's own lines run: srun fan-out, head-node discovery, port, rendezvous."""
import json
import subprocess
import sys

import pytest

from cells import ROOT, explain, run
from slurm_fixture import sacct_rows, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_two_torchrun_agents_rendezvous_on_the_head_node_and_train_world_size_2(slurm_cluster, tmp_path):
    if slurm_cluster.cpus < 2 or slurm_cluster.mem_mb < 6 * 1024:
        pytest.skip("needs 2 CPUs and 6 GB on the node")
    out = tmp_path / "sweep"
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--name", "two-nodes", "--out", out,
                "--models", "pythia-tiny", "--ranks", "4", "--lrs", "3e-3", "--gpu", "cpu", "--nodes", "2",
                "--cpus-per-task", "1", "--mem", "6G", "--time", "00:15:00", "--max-steps", "8", "--seq-len", "64",
                "--set", "eval_rows=32", "--zero", "2", "--dry-run"])
    assert proc.returncode == 0, explain(proc)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    script = (cell / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "--nnodes 2 --nproc_per_node 1" in script
    assert (cell / "ds_config.json").exists()  # ZeRO-2 across the two "nodes"
    # One machine plays both nodes: the same script, with 2 tasks on 1 node asked on the command line
    # (which overrides its #SBATCH lines); everything after the header runs as rendered.
    proc = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
                           "--cpus-per-task=1", "--mem=6G", cell / "job.sbatch"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    state = wait_job(job_id)  # the ceiling: the first DeepSpeed use may build its shm op
    logs = "\n".join(p.read_text(errors="replace") for p in (cell / "logs").glob("*"))
    assert state == "COMPLETED", logs[-4000:]
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert sorted(r["rank"] for r in metrics["ranks"]) == [0, 1]
    assert all(r["steps"] == 8 for r in metrics["ranks"])
    assert json.loads((cell / "status.json").read_text())["state"] == "done"
    steps = {r["JobID"]: r for r in sacct_rows(job_id, ["JobID", "State", "NTasks"], steps=True)}
    assert steps[f"{job_id}.0"]["NTasks"] == "2" and steps[f"{job_id}.0"]["State"] == "COMPLETED"  # the srun step
