"""`launch/grid.py --fix-oom`: the planner's cheapest fix applied to predicted-OOM cells before rendering."""
import csv
import json
import sys

import yaml

from cells import ROOT, explain, run
from ftgrid.launch import grid as grid_cli
from ftgrid.launch import plan as planner
from ftgrid.launch.spec import Resources, SweepSpec, expand

GRID = ROOT / "launch" / "grid.py"
T4_LORA = ["--models", "gpt2-medium", "--ranks", "16", "--lrs", "2e-4", "--micro-batch", "8", "--seq-len", "1024",
           "--gpu", "t4-16gb", "--zero", "0", "--executor", "local", "--dry-run"]


def grid(*args):
    return run([sys.executable, GRID, *args])


def only_cell(out):
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    return cell


def test_without_fix_oom_the_cell_stays_as_asked(tmp_path):
    proc = grid(*T4_LORA, "--out", tmp_path / "plain")
    assert proc.returncode == 0, explain(proc)
    cell = only_cell(tmp_path / "plain")
    assert yaml.safe_load((cell / "cell.yaml").read_text())["micro_batch"] == 8
    assert json.loads((cell / "status.json").read_text())["state"] == "predicted-oom"
    assert "fits with: micro batch 4 x grad accum 2" in proc.stdout and "fixed (--fix-oom)" not in proc.stdout


def test_fix_oom_changes_the_run_config_and_the_cell_fits(tmp_path):
    plain = grid(*T4_LORA, "--out", tmp_path / "plain")
    old_id = only_cell(tmp_path / "plain").name
    out = tmp_path / "fixed"
    proc = grid(*T4_LORA, "--fix-oom", "--out", out)
    assert plain.returncode == 0 and proc.returncode == 0, explain(proc)
    cell = only_cell(out)
    cfg = yaml.safe_load((cell / "cell.yaml").read_text())
    assert (cfg["micro_batch"], cfg["grad_accum"], cfg["name"]) == (4, 2, cell.name)
    assert cell.name != old_id  # the id of what it trains now
    plan = json.loads((cell / "plan.json").read_text())
    assert plan["fits"] and plan["micro_batch"] == 4 and not (cell / "status.json").exists()
    assert f"fixed (--fix-oom): micro batch 4 x grad accum 2; was {old_id}" in proc.stdout
    assert "PREDICTED OOM" not in proc.stdout and "1 cell(s) to run" in proc.stdout
    (row,) = csv.DictReader((out / "cells.csv").open())
    assert row["id"] == cell.name and row["fits"] == "True"
    # sweep.yaml records the fix: a re-run from it finds the same cell
    assert yaml.safe_load((out / "sweep.yaml").read_text())["fix_oom"] is True
    again = grid("--config", out / "sweep.yaml", "--executor", "local", "--dry-run", "--out", out)
    assert again.returncode == 0, explain(again)
    assert [p.name for p in out.iterdir() if p.is_dir()] == [cell.name]


def test_fix_oom_with_a_zero_stage_renders_its_deepspeed_config(tmp_path):
    args = ["--models", "pythia-6.9b", "--methods", "full", "--micro-batch", "1", "--seq-len", "2048",
            "--gpu", "a100-80gb", "--zero", "0", "--executor", "local", "--dry-run"]
    plain = grid(*args, "--out", tmp_path / "plain")
    assert plain.returncode == 0, explain(plain)
    assert not (only_cell(tmp_path / "plain") / "ds_config.json").exists()
    out = tmp_path / "fixed"
    proc = grid(*args, "--fix-oom", "--out", out)
    assert proc.returncode == 0, explain(proc)
    cell = only_cell(out)
    plan = json.loads((cell / "plan.json").read_text())
    assert plan["fits"] and (plan["zero"], plan["offload"]) == (1, "optimizer")
    ds = json.loads((cell / "ds_config.json").read_text())["zero_optimization"]
    assert ds["stage"] == 1 and ds["offload_optimizer"]["device"] == "cpu"
    assert yaml.safe_load((cell / "cell.yaml").read_text())["deepspeed"] == "ds_config.json"
    assert "(ZeRO 1, offload optimizer: fits)" in (cell / "job.sbatch").read_text()
    assert "fixed (--fix-oom): zero 1 offload optimizer; was pythia-6.9b_full" in proc.stdout
    assert planner.plan_cell(yaml.safe_load((cell / "cell.yaml").read_text()), gpu="a100-80gb", zero=1,
                             offload="optimizer").fits


def test_more_gpus_fill_the_node_then_add_nodes():
    one = Resources(gpu="a100-80gb", nodes=1, gpus_per_node=1, zero="0")
    fix = planner.OomFix("", {}, {"zero": 3, "offload": "none", "gpus": 4})
    res = grid_cli.fixed_resources(one, fix)
    assert (res.nodes, res.gpus_per_node, res.zero, res.offload) == (1, 4, "3", "none")
    fix16 = planner.OomFix("", {}, {"zero": 3, "offload": "none", "gpus": 16})
    assert (grid_cli.fixed_resources(one, fix16).nodes, grid_cli.fixed_resources(one, fix16).gpus_per_node) == (2, 8)
    two = Resources(gpu="a100-80gb", nodes=2, gpus_per_node=4, zero="0")
    assert (grid_cli.fixed_resources(two, fix16).nodes, grid_cli.fixed_resources(two, fix16).gpus_per_node) == (4, 4)
    assert grid_cli.fixed_resources(one, planner.OomFix("", {"micro_batch": 1})) is one


def test_a_fixed_cell_equal_to_another_cell_is_that_cell_and_unfixable_cells_stay():
    res = Resources(gpu="t4-16gb", zero="0")
    spec = SweepSpec(models=["gpt2-medium"], ranks=[16], axes={"micro_batch": [4, 8]}, global_batch=8,
                     train={"seq_len": 1024}, resources=res)
    cells = expand(spec)
    plans = grid_cli.plan_cells(cells, res)
    assert [p.fits for p in plans] == [True, False]
    kept, kept_plans, fixed = grid_cli.fix_oom_cells(cells, plans, res)
    assert [c.id for c in kept] == [cells[0].id] and kept_plans[0].fits
    assert fixed == {cells[0].id: ("micro batch 4 x grad accum 2", [cells[1].id])}
    # nothing fits a 70B full fine-tune on one T4 when no more GPUs may be added: the cell stays as it is
    big = expand(SweepSpec(models=["llama-2-70b"], methods=["full"], train={"seq_len": 4096, "micro_batch": 4},
                           resources=res))
    big_plans = grid_cli.plan_cells(big, res)
    kept, kept_plans, fixed = grid_cli.fix_oom_cells(big, big_plans, res, max_gpus=0)
    assert kept == big and kept_plans == big_plans and fixed == {}


def test_cells_asking_for_other_resources_are_submitted_together(tmp_path):
    res = Resources(gpu="t4-16gb", zero="0")
    cells = expand(SweepSpec(models=["gpt2-medium"], ranks=[4, 8, 16], train={"seq_len": 1024}, resources=res))
    other = grid_cli.fixed_resources(res, planner.OomFix("", {}, {"zero": 3, "offload": "none", "gpus": 2}))
    cells[1] = grid_cli.refit_cell(cells[1], {}, other)
    todo = [tmp_path / c.id for c in cells]
    assert grid_cli.by_resources(todo, cells) == [todo[0], todo[2], todo[1]]  # one array per resource set
    assert cells[1].resources.gpus_per_node == 2 and cells[1].id != expand(
        SweepSpec(models=["gpt2-medium"], ranks=[8], train={"seq_len": 1024}, resources=res))[0].id


def test_fix_oom_in_a_sweep_file_and_a_bad_value(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({"models": ["gpt2-medium"], "lrs": [2e-4], "fix_oom": True,
                                   "train": {"micro_batch": 8, "seq_len": 1024},
                                   "resources": {"gpu": "t4-16gb", "zero": 0}}))
    proc = grid("--config", cfg, "--executor", "local", "--dry-run", "--out", tmp_path / "a")
    assert proc.returncode == 0 and "fixed (--fix-oom): micro batch 4 x grad accum 2" in proc.stdout, explain(proc)
    cfg.write_text(cfg.read_text().replace("fix_oom: true", "fix_oom: maybe"))
    bad = grid("--config", cfg, "--executor", "local", "--dry-run", "--out", tmp_path / "b")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: fix_oom is a flag: true or false, got 'maybe'"
    assert not (tmp_path / "b").exists()
