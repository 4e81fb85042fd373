"""Executors: run or submit rendered cells, and read a sweep's state back. One small interface:

    executor.submit(cell_dirs)    # records job ids / outcomes in each cell's status.json

- LocalExecutor: each cell in a fresh process on this machine, one after another (the demo, tests).
- HostfileExecutor: the same, running each cell's run_deepspeed.sh (servers without SLURM).
- SlurmExecutor: the cells as submitit job arrays, one `sbatch` call per chunk; `wait` follows them.
Every SLURM path runs the cell's own job.sbatch: by hand (`sbatch`) or as an array task (`bash`).
`sweep_status` reads status.json, and sacct for the cells SLURM still holds.
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ftgrid import rundir

from ftgrid.launch.render import PROJECT_ROOT, SIGNAL_GRACE_S, TRAIN_PY
from ftgrid.launch.spec import slurm_time_minutes
from ftgrid.launch.spec import container_flags, sbatch_line

IN_FLIGHT = ("submitted", "running")
LOG_TAIL_LINES = 15
# sacct states after which a job runs no more; how a cell that never recorded its outcome ends.
SLURM_ENDED = {"COMPLETED": "failed", "FAILED": "failed", "CANCELLED": "failed", "TIMEOUT": "failed",
               "NODE_FAIL": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed", "REVOKED": "failed",
               "OUT_OF_MEMORY": "oom", "PREEMPTED": "preempted"}


def train_command(cell_dir: Path, python: str = sys.executable) -> list[str]:
    return [python, str(TRAIN_PY), "--cell", str(Path(cell_dir) / "cell.yaml")]


def last_log(cell_dir: Path) -> Path | None:
    """The cell's most recently written log (train.log of the executors, slurm-<id>.out of sbatch)."""
    logs = [p for p in (Path(cell_dir) / "logs").glob("*") if p.is_file() and not p.name.startswith("hostfile")]
    return max(logs, key=lambda p: p.stat().st_mtime) if logs else None


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except (OSError, TypeError):
        return ""


def record_exit(cell_dir: Path, code: int, log: Path) -> dict:
    """After a cell's process ended: a failure gets the log tail in status.json, and a cell that died
    before the entrypoint could say why (killed, bad config, launcher error) is marked failed."""
    status = rundir.read_status(cell_dir)
    if code == 0 and status.get("state") == "done":
        return status
    fields = {"exit_code": code, "log_tail": log_tail(log)}
    if status.get("state") in rundir.TERMINAL and status.get("state") != "done":
        return rundir.write_status(cell_dir, status["state"], **fields)
    return rundir.write_status(cell_dir, "failed", **fields,
                               error=f"exit code {code} before the entrypoint recorded an outcome")


def mark_submitted(cell_dir: Path, executor: str, job_id: str | None) -> dict:
    """The cell is taken: by a SLURM job, or (no job id) by this process, which runs it here; another
    grid.py then skips it, and a claim whose process died is released by `refresh`."""
    # A re-run starts clean: the last attempt's error, exit code and log tail are cleared (its log stays in logs/).
    here = dict(pid=os.getpid(), host=socket.gethostname()) if job_id is None else dict(pid=None, host=None)
    return rundir.write_status(cell_dir, "submitted", executor=executor, job_id=job_id, error=None, exit_code=None,
                               log_tail=None, slurm_job_id=None, **here)


def _clean_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a cell starts its own process group, never joins ours
    return env


class LocalExecutor:
    """Runs cells sequentially in fresh processes (an OOM or crash never takes the sweep down)."""

    name = "local"

    def __init__(self, python: str = sys.executable, echo=print):
        self.python = python
        self.echo = echo

    def command(self, cell_dir: Path) -> list[str]:
        return train_command(cell_dir, self.python)

    def run_one(self, cell_dir: Path) -> dict:
        cell_dir = Path(cell_dir)
        log = cell_dir / "logs" / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        mark_submitted(cell_dir, self.name, None)
        t0 = time.time()
        with open(log, "ab") as out:
            code = subprocess.call(self.command(cell_dir), stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                   env=_clean_env())
        status = record_exit(cell_dir, code, log)
        return dict(status, seconds=time.time() - t0, exit_code=code)

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


class HostfileExecutor(LocalExecutor):
    """Servers without SLURM: runs each cell's run_deepspeed.sh from this machine (the first host).
    With more than one host DeepSpeed's launcher needs pdsh; `missing()` says so before anything runs."""

    name = "hostfile"

    def __init__(self, hosts, echo=print):
        super().__init__(echo=echo)
        self.hosts = tuple(hosts)

    def command(self, cell_dir: Path) -> list[str]:
        return ["bash", str(Path(cell_dir) / "run_deepspeed.sh")]

    def missing(self) -> str:
        if len(self.hosts) > 1 and not shutil.which("pdsh"):
            return "pdsh is not installed: DeepSpeed's launcher reaches the other hosts with pdsh over ssh"
        return ""


# ---------------------------------------------------------------------------------------------
# SLURM (submitit)


# The cell process each array task runs, by cell folder (kept out of CellTask, which submitit pickles).
_RUNNING: dict[str, subprocess.Popen] = {}


class CellTask:
    """What one array task runs, once per node: the cell's own job.sbatch in its per-node branch
    (FTGRID_NODE=1: submitit's srun already started one task per node), so the array and a hand
    `sbatch` run the same lines. Checkpointable: submitit requeues it on preemption."""

    def __init__(self, cell_dir: str):
        self.cell_dir = str(cell_dir)

    def __call__(self) -> str:
        cell_dir = Path(self.cell_dir)
        log = cell_dir / "logs" / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(["bash", str(cell_dir / "job.sbatch")], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=PROJECT_ROOT, env=_clean_env(FTGRID_NODE="1"))
            _RUNNING[self.cell_dir] = proc
            try:
                code = proc.wait()
            finally:
                _RUNNING.pop(self.cell_dir, None)
        if os.environ.get("SLURM_NODEID", "0") == "0":  # the head node speaks for the cell
            record_exit(cell_dir, code, log)
        if code != 0:  # never exit 0 on failure: SLURM must record FAILED
            raise RuntimeError(f"cell {cell_dir.name} exited {code}:\n{log_tail(log, 20)}")
        return rundir.read_status(cell_dir).get("state", "unknown")

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook, called on SIGUSR2 (its `--signal=USR2@grace`, or `scancel
        --signal=USR2`). SLURM signals every process of the step, so the cell's ranks got USR2 too and
        are checkpointing at the end of their step (finetune/train.py handles USR1, USR2 and TERM):
        wait for the cell to exit, within the grace time, then let submitit requeue the task; its next
        start resumes from the checkpoint."""
        import submitit
        proc = _RUNNING.get(self.cell_dir)
        if proc is not None:
            wait_exit(proc.pid, SIGNAL_GRACE_S)
        return submitit.helpers.DelayedSubmission(self)


def wait_exit(pid: int, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Until child `pid` has exited (True) or `timeout_s` passed (False). The child is not reaped
    (WNOWAIT): this runs in a signal handler that interrupted a Popen.wait holding its lock."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        time.sleep(poll_s)
    return False


def submitit_parameters(res, job_name: str, max_parallel: int) -> dict:
    """The cell's #SBATCH settings as submitit parameters (its sbatch holds the same requests)."""
    extra = {"requeue": True}
    for line in res.sbatch:
        key, value = sbatch_line(line)
        extra[key] = True if value is None else value
    if res.constraint:
        extra["constraint"] = res.constraint
    if res.exclusive:
        extra["exclusive"] = True
    params = dict(nodes=res.nodes, tasks_per_node=1, cpus_per_task=res.cpus_per_task,
                  timeout_min=slurm_time_minutes(res.time), name=job_name, slurm_signal_delay_s=SIGNAL_GRACE_S,
                  slurm_array_parallelism=max_parallel or 256, slurm_additional_parameters=extra)
    flags = container_flags(res.container)
    if flags:  # the whole task runs in the container: it must hold this python, submitit and the project
        params["slurm_srun_args"] = [flag if value is None else f"{flag}={value}" for flag, value in flags]
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "mem"):
        if getattr(res, key):
            params[f"slurm_{key}"] = getattr(res, key)
    return params


def chunks(items: list, size: int) -> list[list]:
    """The sweep's arrays: one `sbatch --array` call each, at most `size` tasks (the cluster's MaxArraySize)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def max_array_size(default: int = 1000) -> int:
    """Tasks per array this cluster takes (MaxArraySize - 1: indices start at 0); the default without scontrol."""
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return default
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(int(value) - 1, 1)
    return default


class SubmitRefused(Exception):
    """sbatch refused a submission; the message names its reason."""


class SlurmExecutor:
    """Submits cells with submitit as job arrays: one `sbatch` call per chunk of `max_array` cells."""

    name = "slurm"

    def __init__(self, folder: Path, resources, *, max_parallel: int = 0, max_array: int | None = None):
        self.folder, self.res, self.max_parallel = Path(folder), resources, max_parallel
        self.max_array = max_array or max_array_size()

    def executor(self, job_name: str):
        import submitit
        ex = submitit.AutoExecutor(folder=self.folder / ".submitit" / "%j", cluster="slurm")
        ex.update_parameters(**submitit_parameters(self.res, job_name, self.max_parallel))
        return ex

    def submit(self, cell_dirs, job_name: str = "ftgrid") -> list:
        """Submits the cells; raises SubmitRefused with sbatch's reason when it refuses a chunk (the cells
        of that chunk and the later ones stay pending)."""
        from submitit.core.utils import FailedJobError
        from tqdm import tqdm
        from ftgrid.launch.cluster import sbatch_reason
        cell_dirs = [Path(d).resolve() for d in cell_dirs]  # the tasks run in the project root
        ex = self.executor(job_name)
        jobs = []
        with tqdm(total=len(cell_dirs), desc="submitting", unit="cell") as bar:
            for chunk in chunks(cell_dirs, self.max_array):
                try:  # submitit prints sbatch's stderr before raising: keep it for the one error line
                    with contextlib.redirect_stderr(io.StringIO()), ex.batch():  # one sbatch --array per chunk
                        chunk_jobs = [ex.submit(CellTask(str(d))) for d in chunk]
                except FailedJobError as e:
                    raise SubmitRefused(f"sbatch refused {len(chunk)} cell(s): {sbatch_reason(str(e))}; "
                                        f"{len(jobs)} submitted, {len(cell_dirs) - len(jobs)} left pending") from None
                for d, job in zip(chunk, chunk_jobs):
                    mark_submitted(d, self.name, str(job.job_id))
                    bar.update(1)
                jobs += chunk_jobs
                bar.write(f"submitted {len(chunk)} cell(s) as array {chunk_jobs[0].job_id.split('_')[0]}")
        return jobs

    @staticmethod
    def wait(jobs, cell_dirs, poll_s: float = 2.0) -> None:
        """Until every job ended; the bar counts finished cells and their states."""
        import submitit
        from tqdm import tqdm
        states = {}
        with tqdm(total=len(jobs), desc="waiting", unit="cell") as bar:
            by_job = dict(zip((j.job_id for j in jobs), cell_dirs))
            for job in submitit.helpers.as_completed(jobs, poll_frequency=poll_s):
                state = rundir.read_status(by_job[job.job_id]).get("state", "unknown")
                states[state] = states.get(state, 0) + 1
                bar.set_postfix(states, refresh=False)
                bar.update(1)


def sacct_states(job_ids) -> dict[str, str]:
    """job id -> SLURM state for the given jobs (array tasks as `123_4`); {} without sacct."""
    job_ids = sorted({str(j) for j in job_ids if j})
    if not job_ids or not shutil.which("sacct"):
        return {}
    try:
        proc = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.partition("|")
        out[job] = (state.split() or ["UNKNOWN"])[0]  # "CANCELLED by 0" -> CANCELLED
    return out


def _job_id(status: dict) -> str | None:
    return status.get("job_id") or status.get("slurm_job_id")


def _local_process_gone(status: dict) -> bool:
    """A cell taken or running outside SLURM on this host whose process no longer exists (kill -9, reboot)."""
    if status.get("state") not in IN_FLIGHT or _job_id(status) or status.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(status["pid"]), 0)
    except ProcessLookupError:
        return True
    except (KeyError, TypeError, ValueError, PermissionError):
        return False
    return False


def refresh(cell_dirs) -> dict[Path, dict]:
    """Each cell's status; a cell SLURM has finished with but whose status.json still says submitted
    or running (killed, timed out, died before the entrypoint started) is marked as it ended."""
    statuses = {Path(d): rundir.read_status(d) for d in cell_dirs}
    for d, s in statuses.items():
        if not _local_process_gone(s):
            continue
        if rundir.read_metrics(d) is not None:  # died after writing its results
            statuses[d] = rundir.write_status(d, "done", recovered="from metrics.json")
        elif s["state"] == "submitted" and rundir.read_status(d).get("state") == "submitted":
            # taken by a grid.py that ended (Ctrl-C, kill) before starting it: free for the next run
            statuses[d] = rundir.write_status(d, "pending", pid=None, host=None,
                                              error=f"process {s['pid']} took this cell and ended before running it")
        elif rundir.read_status(d).get("state") == "running":
            statuses[d] = rundir.write_status(
                d, "failed", log_tail=log_tail(last_log(d)),
                error=f"process {s['pid']} on {s['host']} died before recording an outcome (killed?); "
                      f"a re-run (--rerun failed) resumes from its last checkpoint")
    held = {d: _job_id(s) for d, s in statuses.items() if s.get("state") in IN_FLIGHT and _job_id(s)}
    slurm = sacct_states(held.values())
    for d, job in held.items():
        state = slurm.get(job)
        statuses[d]["slurm_state"] = state
        if state in SLURM_ENDED and rundir.read_status(d).get("state") in IN_FLIGHT:
            statuses[d] = dict(rundir.write_status(
                d, SLURM_ENDED[state], log_tail=log_tail(last_log(d)),
                error=f"SLURM job {job} ended {state} before the entrypoint recorded an outcome"), slurm_state=state)
    return statuses
