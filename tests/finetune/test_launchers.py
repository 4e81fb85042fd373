"""One cell, three launchers: plain python, torchrun with one process, and the DeepSpeed launcher
(which passes --local_rank); the cell carries a ZeRO-0 DeepSpeed config. Same seed, same CPU: the
same losses at every logged step."""
import shutil

import pytest

from cells import deepspeed_launcher, explain, losses, make_cell, metrics, torchrun, train

pytestmark = pytest.mark.slow


def test_same_cell_same_losses_under_python_torchrun_and_deepspeed(tmp_path):
    template = make_cell(tmp_path / "template", zero=0, max_steps=12, logging_steps=2, num_samples=0)
    results = {}
    for name, launch in [("python", train), ("torchrun", lambda c: torchrun(c, nproc=1)),
                         ("deepspeed", lambda c: deepspeed_launcher(c, nproc=1))]:
        cell = tmp_path / name
        shutil.copytree(template.parent, cell)
        proc = launch(cell / "cell.yaml")
        assert proc.returncode == 0, f"{name}: {explain(proc)}"
        results[name] = metrics(cell)
        assert results[name]["deepspeed"]["stage"] == 0 and results[name]["world_size"] == 1, name
    assert "--local_rank=0" in proc.stdout + proc.stderr  # the DeepSpeed launcher's argument was accepted
    base = results["python"]
    assert len(losses(base)) == 6 and losses(base)[-1] < losses(base)[0]
    for name, m in results.items():
        assert losses(m) == pytest.approx(losses(base), rel=1e-6), name
        assert m["eval_loss"] == pytest.approx(base["eval_loss"], rel=1e-6), name
        assert m["tokens"] == base["tokens"], name
