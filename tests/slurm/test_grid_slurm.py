"""The grid submitted with submitit as one job array on the real local SLURM."""
import json
import sys
from datetime import datetime

import pytest

from cells import ROOT, explain, run
from slurm_fixture import sacct_rows, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY_GRID = ["--models", "pythia-tiny", "--lrs", "3e-3", "--gpu", "cpu", "--cpus-per-task", "1", "--mem", "3G",
             "--time", "00:10:00", "--max-steps", "8", "--seq-len", "64", "--set", "eval_rows=32",
             "--executor", "slurm"]


def test_four_cells_as_one_throttled_array(slurm_cluster, tmp_path):
    out = tmp_path / "sweep"
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--name", "array4", "--out", out, "--ranks", "2,4,8,16",
                *TINY_GRID, "--max-parallel", "1", "--wait"], timeout=900)
    assert proc.returncode == 0, explain(proc)
    cells = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(cells) == 4
    job_ids = {json.loads((c / "status.json").read_text())["job_id"] for c in cells}
    arrays = {j.split("_")[0] for j in job_ids}
    assert len(arrays) == 1 and len(job_ids) == 4, job_ids  # one sbatch call, four array tasks
    for c in cells:
        m = json.loads((c / "metrics.json").read_text())
        assert m["steps"] == 8
    (array_id,) = arrays
    assert wait_job(array_id) == "COMPLETED"
    rows = sacct_rows(array_id, ["JobID", "Start", "End", "State"])
    spans = sorted((datetime.fromisoformat(r["Start"]), datetime.fromisoformat(r["End"])) for r in rows)
    assert len(spans) == 4
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"--max-parallel 1 must run tasks one at a time: {spans}"
    # A second run of the same command submits nothing: every cell is done.
    again = run([sys.executable, ROOT / "launch" / "grid.py", "--name", "array4", "--out", out, "--ranks", "2,4,8,16",
                 *TINY_GRID], timeout=120)
    assert again.returncode == 0 and "0 cell(s) to run" in again.stdout, explain(again)
