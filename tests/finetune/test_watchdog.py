"""The watchdog turns a hang into a failure: a training step that stalls (no step, no CPU work) ends the run
after `watchdog_minutes` with every thread's stack in logs/ and status `failed` saying why."""
import json
import sys

import pytest

from cells import ROOT, explain, make_cell, run

# The real entrypoint with one extra Trainer callback that blocks forever at step 2 without using CPU, as
# a worker stuck on a lock does.
STALL = """
import sys, threading
sys.path.insert(0, {root!r})
from ftgrid.finetune import train
progress = train.ProgressCallback
def stalling():
    cb = progress()
    begin = cb.on_step_begin
    def on_step_begin(args, state, control, **kw):
        begin(args, state, control, **kw)
        if state.global_step == 2:
            threading.Event().wait()  # the stalled step
    cb.on_step_begin = on_step_begin
    return cb
train.ProgressCallback = stalling
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_stalled_step_fails_with_stacks_instead_of_hanging(tmp_path):
    cell = tmp_path / "stall"
    cfg = make_cell(cell, max_steps=6, watchdog_minutes=0.05)  # 3 s without progress
    proc = run([sys.executable, "-c", STALL.format(root=str(ROOT)), "--cell", cfg], timeout=600)
    assert proc.returncode == 1, explain(proc)
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "failed" and status["watchdog"] is True
    assert status["error"].startswith("no progress for "), status["error"]
    assert "phase train, step 2): stacks in " in status["error"]
    (stacks,) = cell.glob("logs/stacks-*.txt")
    assert str(stacks) in status["error"]
    text = stacks.read_text()
    assert "on_step_begin" in text and "Thread 0x" in text  # where it stood, every thread
    assert "no progress for" in proc.stderr and not (cell / "metrics.json").exists()


def test_the_watchdog_is_a_run_config_key():
    from ftgrid import schema
    from ftgrid.errors import ConfigError
    assert schema.RunConfig().watchdog_minutes == 30.0
    assert schema.from_dict({"watchdog_minutes": 0}).watchdog_minutes == 0  # 0 = off
    with pytest.raises(ConfigError):
        schema.from_dict({"watchdog_minutes": -1})
