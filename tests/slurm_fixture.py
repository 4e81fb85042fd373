"""A real one-node SLURM cluster for the tests.

``slurm_cluster`` (session fixture) makes sure the local cluster is up, running
``tests/slurm/start_cluster.sh`` only when ``sinfo`` does not already show a
usable node, and returns a :class:`SlurmCluster`. When the cluster cannot be
had the test is skipped, or failed if ``REQUIRE_SLURM=1`` (CI).

``wait_job`` and ``sacct_rows`` read job results from accounting (sacct).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cells import CEILING_S, ROOT, SECRETS, explain, run

START_SCRIPT = Path(__file__).resolve().parent / "slurm" / "start_cluster.sh"
START_TIMEOUT_S = 1200  # a cold start may have to apt-get install slurm first
USABLE_STATES = {"idle", "mix", "alloc", "comp"}
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
}


@dataclass(frozen=True)
class SlurmCluster:
    node: str       # node (and host) name
    cpus: int
    mem_mb: int     # RealMemory of the node; jobs get DefMemPerCPU=2048 MB per CPU by default
    partition: str  # the default partition

    def __getitem__(self, key: str):  # also usable as a dict: cluster["node"]
        return getattr(self, key)


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _local_slurmctld_running() -> bool:
    # sinfo against a dead controller takes ~10 s to give up; /proc is instant.
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "slurmctld":
                return True
        except OSError:
            pass
    return False


def _ready_cluster() -> SlurmCluster | None:
    """The cluster if sinfo shows a usable node and sacct answers, else None."""
    if not shutil.which("sinfo") or not shutil.which("sacct") or not _local_slurmctld_running():
        return None
    try:
        info = _run(["sinfo", "-h", "-N", "-o", "%N|%t|%c|%m|%P"], timeout=10)
        if info.returncode != 0:
            return None
        for line in info.stdout.splitlines():
            node, state, cpus, mem, part = line.strip().split("|")
            if state in USABLE_STATES and part.endswith("*"):
                if _run(["sacct", "-n", "-X", "-S", "now"], timeout=10).returncode != 0:
                    return None
                return SlurmCluster(node, int(cpus), int(mem), part.rstrip("*"))
    except (subprocess.TimeoutExpired, ValueError):
        return None
    return None


def _unavailable(reason: str):
    if os.environ.get("REQUIRE_SLURM") == "1":
        pytest.fail(f"REQUIRE_SLURM=1 but no SLURM cluster: {reason}", pytrace=False)
    pytest.skip(f"no SLURM cluster: {reason}")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    cluster = _ready_cluster()
    if cluster:
        return cluster
    if os.geteuid() != 0:
        _unavailable(f"cluster not running and not root, cannot run {START_SCRIPT}")
    if not shutil.which("sinfo") and not shutil.which("apt-get"):
        _unavailable("slurm not installed and no apt-get to install it")
    try:
        proc = _run(["bash", str(START_SCRIPT)], timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        _unavailable(f"{START_SCRIPT.name} timed out after {START_TIMEOUT_S}s\n{_tail(out)}")
    if proc.returncode != 0:
        _unavailable(f"{START_SCRIPT.name} exited {proc.returncode}\n"
                     f"{_tail(proc.stdout + proc.stderr)}")
    cluster = _ready_cluster()
    if not cluster:
        _unavailable(f"{START_SCRIPT.name} succeeded but sinfo shows no usable node\n"
                     f"{_tail(proc.stdout + proc.stderr)}")
    return cluster


# A tiny cell as a SLURM job: one CPU, memory for torch, a few steps.
TINY_GRID = ["--models", "pythia-tiny", "--lrs", "3e-3", "--gpu", "cpu", "--cpus-per-task", "1", "--mem", "3G",
             "--time", "00:10:00", "--max-steps", "8", "--seq-len", "64", "--set", "eval_rows=32",
             "--executor", "slurm"]


@dataclass(frozen=True)
class SlurmSweep:
    out: Path            # the sweep folder
    broken: Path         # the data file that leaves its cell nothing to train on
    args: list           # launch/grid.py arguments that made it (without --wait)
    proc: subprocess.CompletedProcess  # the submitting grid.py run


@pytest.fixture(scope="session")
def slurm_sweep(slurm_cluster, tmp_path_factory) -> SlurmSweep:
    """One sweep on the real SLURM serving the array, status, re-run and secrets checks: three cells as one
    job array run one at a time (--max-parallel 1), two that train and one whose dataset passes the grid's
    layout check (alpaca columns) but has only empty responses, so it fails at run time; credentials in the
    submitting environment (the jobs inherit them) and wandb offline."""
    work = tmp_path_factory.mktemp("slurm_sweep")
    broken = work / "broken.jsonl"
    broken.write_text("".join(f'{{"instruction": "word {i}", "input": "", "output": ""}}\n' for i in range(64)))
    out = work / "sweep"
    args = ["--name", "shared", "--out", str(out), "--ranks", "2,4", "--datasets", f"wordnet:small,{broken}",
            "--exclude", f"dataset={broken},rank=4", *TINY_GRID, "--max-parallel", "1",
            "--set", "wandb_mode=offline"]
    proc = run([sys.executable, ROOT / "launch" / "grid.py", *args, "--wait"], **SECRETS)
    assert proc.returncode in (0, 1), explain(proc)
    return SlurmSweep(out, broken, args, proc)


def sacct_rows(job_id, fields, steps: bool = False, duplicates: bool = False) -> list[dict[str, str]]:
    """sacct rows of a job as dicts keyed by the requested field names.

    ``fields``: list or comma string, e.g. ["JobID", "State", "ExitCode"].
    Only allocation rows (one per job / array task) unless ``steps=True``.
    """
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",")]
    cmd = ["sacct", "-j", str(job_id), "-n", "-P", "-o", ",".join(fields)]
    if not steps:
        cmd.append("-X")
    if duplicates:  # every run of a requeued job, not only the last
        cmd.append("--duplicates")
    proc = _run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line]


def wait_for_file(path: Path, job_id, timeout: float = CEILING_S) -> None:
    """Until a job's run writes `path` (e.g. a checkpoint: training is under way)."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"no {path} after {timeout} s: {sacct_rows(job_id, ['State'])}"
        time.sleep(0.2)


def run_states(job_id) -> list[str]:
    """Every run of a job, oldest first: a requeued job's first run stays in sacct as REQUEUED."""
    return [r["State"].split()[0] for r in sacct_rows(job_id, ["State"], duplicates=True)]


def wait_job(job_id, timeout: float = CEILING_S, poll: float = 0.5, tasks: int = 1) -> str:
    """Poll sacct until the job is in a terminal state and return that state.

    For an array job every task must be terminal; returns COMPLETED if all
    tasks completed, else the first other state. "CANCELLED by 0" -> "CANCELLED".

    Accounting is asynchronous: a short job can show COMPLETED in sacct a few
    seconds before its submit record lands (Partition empty, ReqMem "16?").
    So this also waits until every row has its Partition, after which the
    other sacct fields are complete too. An array's tasks are recorded one by one: `tasks` says how many
    rows to wait for.
    """
    deadline = time.monotonic() + timeout
    rows: list[dict[str, str]] = []
    while True:
        try:
            rows = sacct_rows(job_id, ["State", "Partition"])
        except RuntimeError:
            rows = []  # slurmdbd briefly unreachable: retry
        states = [(r["State"].split() or [""])[0] for r in rows]
        if (len(rows) >= max(tasks, 1) and all(s in TERMINAL_STATES for s in states)
                and all(r["Partition"] for r in rows)):
            bad = [s for s in states if s != "COMPLETED"]
            return bad[0] if bad else "COMPLETED"
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout}s: sacct rows={rows}")
        time.sleep(poll)
