"""`python launch/grid.py` as a user types it: dry runs, the files of a cell, bad input."""
import csv
import json
import sys

import pytest
import yaml

from cells import ROOT, explain, run

GRID = ROOT / "launch" / "grid.py"


def grid(*args, timeout=120):
    return run([sys.executable, GRID, *args], timeout=timeout)


def test_dry_run_writes_four_cells_and_submits_nothing(tmp_path):
    out = tmp_path / "sweep"
    proc = grid("--models", "pythia-1.4b,mistral-7b", "--ranks", "16,64", "--dry-run", "--out", out)
    assert proc.returncode == 0, explain(proc)
    cells = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(cells) == 4
    for cell in cells:
        assert {"cell.yaml", "job.sbatch", "ds_config.json", "plan.json", "status.json"} <= \
            {p.name for p in cell.iterdir()}
        assert json.loads((cell / "status.json").read_text())["state"] in ("pending", "predicted-oom")
        assert cell.name in proc.stdout  # one line per cell
        run_cfg = yaml.safe_load((cell / "cell.yaml").read_text())
        assert run_cfg["name"] == cell.name and run_cfg["rank"] in (16, 64)
        assert f"--cell {cell.resolve() / 'cell.yaml'}" in (cell / "job.sbatch").read_text()
    assert "nothing submitted" in proc.stdout
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert sorted((r["model"], r["rank"]) for r in rows) == [
        ("mistral-7b", "16"), ("mistral-7b", "64"), ("pythia-1.4b", "16"), ("pythia-1.4b", "64")]
    assert all(float(r["peak_gib"]) > 1 for r in rows)
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["models"] == ["pythia-1.4b", "mistral-7b"] and sweep["ranks"] == [16, 64]


def test_rerunning_the_same_dry_run_gives_the_same_cells(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert grid("--models", "pythia-tiny", "--ranks", "4,8", "--lrs", "1e-3", "--dry-run", "--out", out).returncode == 0
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_sweep_from_yaml_with_flags_overriding(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({"name": "from-file", "models": ["pythia-tiny"], "ranks": [4, 8],
                                   "alphas": ["2r"], "train": {"seq_len": 64}, "resources": {"gpu": "cpu"}}))
    proc = grid("--config", cfg, "--ranks", "16", "--dry-run", "--out", tmp_path / "out")
    assert proc.returncode == 0, explain(proc)
    cells = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(cells) == 1
    run_cfg = yaml.safe_load((cells[0] / "cell.yaml").read_text())
    assert (run_cfg["rank"], run_cfg["alpha"], run_cfg["seq_len"]) == (16, 32.0, 64)


@pytest.mark.parametrize("args, message", [
    (["--models", "pythia-1.4bb"], "error: unknown model 'pythia-1.4bb' (did you mean 'pythia-1.4b'?)"),
    (["--models", "pythia-tiny", "--ranks", "0"], "error: rank must be a positive integer, got 0"),
    (["--models", "pythia-tiny", "--ranks", "-8"], "error: rank must be a positive integer, got -8"),
    (["--models", "pythia-tiny", "--ranks", "four"], "error: rank: 'four' is not a valid int"),
    (["--models", "pythia-tiny", "--gpu", "h1000"], "error: unknown gpu preset 'h1000'"),
    (["--models", "pythia-tiny", "--zero", "4"], "error: unknown zero stage '4'"),
    (["--models", "pythia-tiny", "--set", "lrr=1"], "error: unknown training key 'lrr'"),
    (["--models", "pythia-tiny", "--partition", "gpu;rm -rf /"], "error: partition 'gpu;rm -rf /' has characters"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "never"
    proc = grid(*args, "--dry-run", "--out", out)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    proc = grid("--models", "pythia-tiny", "--dry-run", "--out", target)
    assert proc.returncode == 2 and "is a file" in proc.stderr
