"""Executors: run or submit rendered cells. One small interface, no dead stubs.

    executor.submit(cell_dirs) -> None    # records job ids / outcomes in each cell's status.json

- LocalExecutor: each cell in a fresh process on this machine, one after another (the demo, tests).
- SlurmExecutor: the cells as submitit job arrays (see launch/grid.py --executor slurm).
Every executor runs the same command a cell's job.sbatch runs: `finetune/train.py --cell cell.yaml`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from finetune import rundir

from launch.render import PROJECT_ROOT, TRAIN_PY


def train_command(cell_dir: Path, python: str = sys.executable) -> list[str]:
    return [python, str(TRAIN_PY), "--cell", str(Path(cell_dir) / "cell.yaml")]


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalExecutor:
    """Runs cells sequentially in fresh processes (an OOM or crash never takes the sweep down)."""

    name = "local"

    def __init__(self, python: str = sys.executable, echo=print):
        self.python = python
        self.echo = echo

    def run_one(self, cell_dir: Path) -> dict:
        cell_dir = Path(cell_dir)
        log = cell_dir / "logs" / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_status(cell_dir, "submitted", executor=self.name, job_id=None)
        t0 = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # a cell starts its own process group, never joins ours
        with open(log, "ab") as out:
            code = subprocess.call(train_command(cell_dir, self.python), stdout=out, stderr=subprocess.STDOUT,
                                   cwd=PROJECT_ROOT, env=env)
        status = rundir.read_status(cell_dir)
        if status.get("state") not in rundir.TERMINAL:  # died before it could say why
            status = rundir.write_status(cell_dir, "failed", exit_code=code,
                                         error=f"exit code {code} before the entrypoint recorded an outcome")
        return dict(status, seconds=time.time() - t0, exit_code=code, log_tail=log_tail(log))

    def submit(self, cell_dirs) -> list[dict]:
        cell_dirs = list(cell_dirs)
        outcomes = []
        for i, cell_dir in enumerate(cell_dirs, 1):
            outcome = self.run_one(cell_dir)
            outcomes.append(outcome)
            extra = (f"eval loss {outcome['eval_loss']:.4f}" if outcome.get("eval_loss") is not None
                     else outcome.get("error", "")[:120])
            self.echo(f"[{i}/{len(cell_dirs)}] {Path(cell_dir).name}: {outcome['state']} "
                      f"in {outcome['seconds']:.1f}s {extra}")
        return outcomes


def _time_minutes(text: str) -> int:
    """SLURM time `[D-]HH:MM:SS`, `HH:MM` or minutes -> minutes (submitit takes minutes)."""
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    else:
        parts = ([0] * (3 - len(parts)) + parts) if len(parts) < 3 else parts
        minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    return minutes + int(days or 0) * 24 * 60


class CellTask:
    """What one array task runs: the same command as the cell's job.sbatch. Checkpointable, so
    submitit requeues it on preemption (the entrypoint resumes from the cell's checkpoint)."""

    def __init__(self, cell_dir: str, python: str, nproc_per_node: int, nodes: int):
        self.cell_dir, self.python = str(cell_dir), python
        self.nproc_per_node, self.nodes = nproc_per_node, nodes

    def command(self) -> list[str]:
        if self.nodes * self.nproc_per_node == 1:
            return train_command(Path(self.cell_dir), self.python)
        head = os.environ.get("SUBMITIT_HEAD_NODE") or subprocess.run(
            ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
            capture_output=True, text=True, check=True).stdout.split()[0]
        port = 29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000
        return [self.python, "-m", "torch.distributed.run", "--nnodes", str(self.nodes),
                "--nproc_per_node", str(self.nproc_per_node), "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"{head}:{port}", "--rdzv_id", os.environ.get("SLURM_JOB_ID", "0"),
                str(TRAIN_PY), "--cell", str(Path(self.cell_dir) / "cell.yaml")]

    def __call__(self) -> str:
        log = Path(self.cell_dir) / "logs" / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        with open(log, "ab") as out:
            code = subprocess.call(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env)
        if code != 0:  # never exit 0 on failure: SLURM must record FAILED
            raise RuntimeError(f"cell {Path(self.cell_dir).name} exited {code}:\n{log_tail(log, 20)}")
        return rundir.read_status(self.cell_dir).get("state", "unknown")

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self)


class SlurmExecutor:
    """Submits cells with submitit as job arrays: one `sbatch` call per chunk of `max_array` cells."""

    name = "slurm"

    def __init__(self, folder: Path, resources, *, python: str = sys.executable, max_parallel: int = 0,
                 max_array: int = 1000, echo=print, cluster: str = "slurm"):
        self.folder, self.res, self.python = Path(folder), resources, python
        self.max_parallel, self.max_array, self.echo, self.cluster = max_parallel, max_array, echo, cluster

    def executor(self, job_name: str):
        import submitit
        ex = submitit.AutoExecutor(folder=self.folder / ".submitit" / "%j", cluster=self.cluster)
        res = self.res
        params = dict(nodes=res.nodes, tasks_per_node=1, cpus_per_task=res.cpus_per_task,
                      timeout_min=_time_minutes(res.time), name=job_name)
        if self.cluster == "slurm":
            params.update(slurm_signal_delay_s=120, slurm_array_parallelism=self.max_parallel or 256,
                          slurm_additional_parameters={"requeue": True})
            if res.gpus_per_node:
                params["gpus_per_node"] = res.gpus_per_node
            for key in ("partition", "account", "qos", "mem"):
                if getattr(res, key):
                    params[f"slurm_{key}"] = getattr(res, key)
        ex.update_parameters(**params)
        return ex

    def submit(self, cell_dirs, job_name: str = "ftgrid") -> list:
        cell_dirs = [Path(d) for d in cell_dirs]
        ex = self.executor(job_name)
        nproc = max(self.res.gpus_per_node, 1)
        jobs = []
        for start in range(0, len(cell_dirs), self.max_array):
            chunk = cell_dirs[start:start + self.max_array]
            tasks = [CellTask(str(d), self.python, nproc, self.res.nodes) for d in chunk]
            with ex.batch():  # one sbatch --array for the whole chunk
                chunk_jobs = [ex.submit(t) for t in tasks]
            for d, job in zip(chunk, chunk_jobs):
                rundir.write_status(d, "submitted", executor=self.name, job_id=str(job.job_id))
            jobs += chunk_jobs
            self.echo(f"submitted {len(chunk)} cell(s) as array {chunk_jobs[0].job_id.split('_')[0]}")
        return jobs
