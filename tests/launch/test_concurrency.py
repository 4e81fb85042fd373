"""Two `launch/grid.py` runs of the same sweep at once (two real processes): one writes and takes cells
while the other waits its turn, then skips the cells the first took and says so; no run crashes on the
other's temp files, and no cell is run twice."""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cells import ROOT, clean_env, explain, run
from ftgrid import rundir
from ftgrid.launch import grid, submit

GRID = ROOT / "launch" / "grid.py"
# 20 ranks x 10 learning rates = 200 cells
BIG = ["--models", "pythia-tiny", "--ranks", ",".join(str(r) for r in range(1, 21)),
       "--lrs", ",".join(f"{i}e-4" for i in range(1, 11)), "--gpu", "cpu", "--executor", "local", "--dry-run"]
TINY = ["--models", "pythia-tiny", "--ranks", "4,8", "--gpu", "cpu", "--executor", "local", "--max-steps", "2",
        "--seq-len", "64", "--set", "eval_rows=16"]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(GRID), *map(str, args)], cwd=ROOT, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 900) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_second_grid_waits_for_the_sweep_lock(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    with rundir.locked(out / grid.LOCK_FILE):
        proc = start("--models", "pythia-tiny", "--ranks", "4", "--gpu", "cpu", "--dry-run", "--out", out)
        line = proc.stdout.readline()  # printed before it waits
        assert line.startswith(f"waiting for another grid.py on {out} (pid "), line
        assert not list(out.glob("*/cell.yaml")) and not (out / "sweep.yaml").exists()
    done = finish(proc)
    assert done.returncode == 0, explain(done)
    assert len(list(out.glob("*/cell.yaml"))) == 1


def test_two_grids_write_the_same_200_cells_at_once(tmp_path):
    out = tmp_path / "sweep"
    procs = [start(*BIG, "--out", out) for _ in range(2)]
    results = [finish(p) for p in procs]
    for r in results:
        assert r.returncode == 0 and "200 cells on" in r.stdout, explain(r)
    assert len(list(out.glob("*/cell.yaml"))) == 200
    assert not list(out.rglob("*.tmp")) and not (out / grid.STAGING).exists()  # no writer's litter left


def test_a_claim_whose_process_ended_is_released(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cell = tmp_path / "cell"
    cell.mkdir()
    rundir.write_status(cell, "submitted", executor="local", pid=int(gone.stdout), host=socket.gethostname())
    status = submit.refresh([cell])[cell]
    assert status["state"] == "pending" and "ended before running it" in status["error"]
    assert submit.mark_submitted(cell, "local", None)["pid"] > 0  # this process's claim is not released
    assert submit.refresh([cell])[cell]["state"] == "submitted"


@pytest.mark.slow
def test_a_second_grid_skips_the_cells_the_first_runs(tmp_path):
    out = tmp_path / "sweep"
    first = start(*TINY, "--out", out)
    ceiling = time.monotonic() + 600
    while not any(rundir.read_status(d)["state"] == "running" for d in out.glob("*/")):
        assert first.poll() is None and time.monotonic() < ceiling, "the first run never started a cell"
        time.sleep(0.2)
    second = run([sys.executable, GRID, *TINY, "--out", out], timeout=600)
    assert second.returncode == 0, explain(second)
    assert "0 cell(s) to run" in second.stdout
    assert "nothing to run here: 2 cell(s) in flight (another grid.py or SLURM runs them)" in second.stdout
    result = finish(first)
    assert result.returncode == 0, explain(result)
    for cell in sorted(p.parent for p in out.glob("*/cell.yaml")):
        states = [h["state"] for h in json.loads((cell / "status.json").read_text())["history"]]
        assert states.count("running") == 1 and states[-1] == "done", states  # trained once
