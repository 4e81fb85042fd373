"""Preemption and resume of the entrypoint: SIGUSR1 mid-training -> full checkpoint, status `preempted`,
exit 4; a re-run resumes from the checkpoint and ends where an uninterrupted run ends (CPU, tiny cell)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import cells

pytestmark = pytest.mark.slow

# The shared trained cell (conftest.py `trained_cell`) with scheduled checkpoints: that cell is the
# uninterrupted reference.
RESUME = dict(cells.TRAINED, save_every=5)


def start(cell_yaml: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(cells.TRAIN_PY), "--cell", str(cell_yaml)], cwd=cells.ROOT,
                            env=cells.clean_env(WANDB_MODE="offline"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = cells.CEILING_S) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before {path} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def states(cell_dir: Path) -> list[str]:
    return [h["state"] for h in cells.status(cell_dir)["history"]]


def test_sigusr1_checkpoints_exits_4_and_rerun_matches(tmp_path, trained_cell):
    uninterrupted = cells.metrics(trained_cell[0])
    cell = tmp_path / "preempted"
    cell_yaml = cells.make_cell(cell, **RESUME)
    proc = start(cell_yaml)
    # The scheduled checkpoint at step 5 proves training is under way; then the real signal.
    wait_for(cell / "checkpoints" / "checkpoint-5" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=cells.CEILING_S)
    assert proc.returncode == 4, out[-3000:]
    status = cells.status(cell)
    assert status["state"] == "preempted", status
    stopped = status["step"]
    assert 5 <= stopped < cells.TINY["max_steps"], status
    assert Path(status["checkpoint"]).name == f"checkpoint-{stopped}"
    ckpt = Path(status["checkpoint"])
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), f"{name} missing from {sorted(p.name for p in ckpt.iterdir())}"
    assert list(ckpt.glob("rng_state*.pth")), "no RNG state in the checkpoint"
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == stopped
    assert not (cell / "metrics.json").exists()

    again = cells.train(cell_yaml, WANDB_MODE="offline")
    assert again.returncode == 0, cells.explain(again)
    assert f"resuming from {ckpt}" in again.stdout
    m = cells.metrics(cell)
    assert m["steps"] == uninterrupted["steps"] == cells.TINY["max_steps"]
    assert m["tokens"] == uninterrupted["tokens"]
    assert m["eval_loss"] == pytest.approx(uninterrupted["eval_loss"], abs=1e-4)
    assert m["train_loss_last"] == pytest.approx(uninterrupted["train_loss_last"], abs=1e-4)
    assert m["initial_eval_loss"] == pytest.approx(uninterrupted["initial_eval_loss"], abs=1e-6)
    # every step's logged loss after the resume point equals the uninterrupted run's
    straight = {h["step"]: h["loss"] for h in uninterrupted["history"] if "loss" in h}
    resumed = {h["step"]: h["loss"] for h in m["history"] if "loss" in h}
    for step in (s for s in straight if s > stopped + RESUME_LOG_WINDOW(stopped)):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-4), step
    print(f"\nresume: stopped at {stopped}; eval {m['eval_loss']!r} vs {uninterrupted['eval_loss']!r}; train last "
          f"{m['train_loss_last']!r} vs {uninterrupted['train_loss_last']!r}; tokens {m['tokens']} vs "
          f"{uninterrupted['tokens']}")
    history = states(cell)
    assert history[-3:] == ["preempted", "running", "done"], history
    assert cells.status(cell)["resume_from"] == str(ckpt)


def RESUME_LOG_WINDOW(stopped: int) -> int:
    """A logged loss averages the steps since the last log; the first log after a resume covers fewer."""
    return 5 - stopped % 5 if stopped % 5 else 0


def test_save_every_is_validated(tmp_path):
    proc = cells.train(cells.make_cell(tmp_path / "bad", save_every=-1))
    assert proc.returncode == 2, cells.explain(proc)
    assert "save_every must be >= 0" in proc.stderr
    assert not (tmp_path / "bad" / "status.json").exists()


GRID = cells.ROOT / "launch" / "grid.py"


def grid_cmd(out: Path, *extra) -> list[str]:
    return [sys.executable, str(GRID), "--models", "pythia-tiny", "--ranks", "8", "--executor", "local",
            "--gpu", "cpu", "--out", str(out), "--set", "target_modules=all-linear", "--lrs", "3e-3",
            "--set", "seq_len=96", "--set", "max_steps=40", "--set", "save_every=5", "--set", "eval_rows=64",
            "--set", "warmup=0.0", "--set", "num_samples=0", *extra]


def test_kill_9_of_a_local_cell_then_sweep_rerun_resumes(tmp_path):
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(grid_cmd(out), cwd=cells.ROOT, env=cells.clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list(out.glob("*/checkpoints/checkpoint-10/trainer_state.json")):
        assert sweep.poll() is None, sweep.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    cell = next(p.parent for p in out.glob("*/cell.yaml"))
    pid = cells.status(cell)["pid"]
    os.kill(pid, signal.SIGKILL)  # no handler runs: only the scheduled checkpoints survive
    sweep.communicate(timeout=cells.CEILING_S)
    status = cells.status(cell)
    assert status["state"] == "failed" and status["exit_code"] == -9, status
    saved = max(int(p.name.split("-")[1]) for p in (cell / "checkpoints").glob("checkpoint-*"))
    assert saved >= 10 and saved % 5 == 0

    again = subprocess.run(grid_cmd(out, "--rerun", "failed"), cwd=cells.ROOT, env=cells.clean_env(),
                           capture_output=True, text=True, timeout=cells.CEILING_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (cell / "logs" / "train.log").read_text()
    assert f"resuming from {cell / 'checkpoints' / f'checkpoint-{saved}'}" in log
    m = cells.metrics(cell)
    assert m["steps"] == 40 and cells.status(cell)["state"] == "done"
    # a third run of the same command submits nothing: the cell is done
    third = subprocess.run(grid_cmd(out), cwd=cells.ROOT, env=cells.clean_env(), capture_output=True, text=True,
                           timeout=cells.CEILING_S)
    assert "0 cell(s) to run" in third.stdout, third.stdout


def test_a_running_local_cell_whose_process_is_gone_is_marked_failed(tmp_path):
    import socket
    from ftgrid import rundir
    from ftgrid.launch import submit
    cell = tmp_path / "cell"
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process now
    rundir.write_status(cell, "running", pid=dead.pid, host=socket.gethostname(), slurm_job_id=None)
    alive = tmp_path / "alive"
    rundir.write_status(alive, "running", pid=os.getpid(), host=socket.gethostname(), slurm_job_id=None)
    got = submit.refresh([cell, alive])
    assert got[cell]["state"] == "failed" and "died before recording an outcome" in got[cell]["error"]
    assert got[alive]["state"] == "running"




def torchrun_popen(cell_yaml: Path) -> subprocess.Popen:
    """Two CPU ranks under torchrun, which forwards USR1 to them as the rendered job.sbatch has it do."""
    cmd = cells.torchrun_command(cell_yaml, 2, "--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                                 "--shutdown-timeout", "120")
    return subprocess.Popen(cmd, cwd=cells.ROOT, env=cells.clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# ZeRO-3 with optimizer and parameter offload: its checkpoint holds partitioned weights and offloaded optimizer
# states, a superset of what ZeRO-2 or plain ZeRO-3 saves, and the kit's resume path (latest checkpoint ->
# Trainer -> DeepSpeed engine) is the same for all. The uninterrupted reference is the shared plain ZeRO-3
# run, so the same run also shows that offloading moves states, not the math.
@pytest.mark.parametrize("zero", [3])
def test_usr1_under_zero_offload_with_two_ranks_resumes_to_the_uninterrupted_loss(tmp_path, zero, zero_run):
    _, want = zero_run(zero)  # the same cell run straight through, without offload (shared with test_deepspeed.py)
    cell_yaml = cells.make_cell(tmp_path / "preempted", zero=zero, offload="optimizer+params", save_every=4,
                                **cells.ZERO_RUNS[zero])
    cell = cell_yaml.parent
    proc = torchrun_popen(cell_yaml)
    wait_for(cell / "checkpoints" / "checkpoint-4" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGUSR1)  # to torchrun: it forwards the signal to both ranks
    out, _ = proc.communicate(timeout=cells.CEILING_S)
    status = cells.status(cell)
    assert proc.returncode != 0 and status["state"] == "preempted", out[-4000:]
    stopped = status["step"]
    assert 4 <= stopped < cells.ZERO["max_steps"], status
    ckpt = Path(status["checkpoint"])
    assert list(ckpt.glob(f"global_step{stopped}/*optim_states.pt")), sorted(p.name for p in ckpt.rglob("*"))

    again = cells.torchrun(cell_yaml)
    assert again.returncode == 0, cells.explain(again)
    assert f"resuming from {ckpt}" in again.stdout + again.stderr
    m = cells.metrics(cell)
    assert m["deepspeed"]["offload_optimizer"] and m["deepspeed"]["offload_param"]
    assert m["steps"] == want["steps"] == cells.ZERO["max_steps"] and m["zero_stage"] == zero
    assert m["tokens"] == want["tokens"]
    # The logged losses as the plain uninterrupted run logged them, but for the first log after the resume:
    # the Trainer averages that one over the steps since the resume, not since the previous log.
    def comparable(run):
        return {h["step"]: h["loss"] for h in run["history"]
                if "loss" in h and not stopped < h["step"] <= stopped + cells.ZERO["logging_steps"]}
    assert len(comparable(m)) >= 2 and comparable(m) == pytest.approx(comparable(want), rel=1e-5)
    assert m["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5)
    assert m["train_loss_last"] == pytest.approx(want["train_loss_last"], rel=1e-5)
    cells.assert_adapter_not_empty(cell)
    print(f"\nZeRO-{zero} + offload resume: stopped at {stopped}; eval {m['eval_loss']!r} vs {want['eval_loss']!r}; "
          f"tokens {m['tokens']} vs {want['tokens']}")
