"""Real DeepSpeed with 2 CPU processes (gloo), through the entrypoint the launchers run."""
import pytest

from cells import explain, make_cell, metrics, torchrun

pytestmark = pytest.mark.slow


def test_zero2_two_processes_both_ranks_train(tmp_path):
    cell = tmp_path / "zero2"
    proc = torchrun(make_cell(cell, zero=2, max_steps=20, micro_batch=4))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["world_size"] == 2
    assert sorted(r["rank"] for r in m["ranks"]) == [0, 1]
    assert all(r["steps"] == 20 for r in m["ranks"])
    assert m["global_batch"] == 4 * 1 * 2
    assert m["eval_loss"] < m["initial_eval_loss"]
    assert m["train_loss_last"] < m["train_loss_first"]
    assert "DeepSpeed" in proc.stdout + proc.stderr  # the engine really ran, not plain DDP
