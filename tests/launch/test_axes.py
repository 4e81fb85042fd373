"""Any run-config key as an axis: `--sweep KEY=V1,V2` and `axes:` in the sweep file, zipped and filtered
like the built-in axes, in cell ids, cells.csv and the report."""
import csv
import dataclasses

import pytest
import yaml

from cells import ROOT
from ftgrid.errors import ConfigError
from ftgrid.launch import grid, report
from ftgrid.launch.spec import SweepSpec, expand

STUDY = ROOT / "examples" / "sweeps" / "gpt2_study.yaml"


def values(cells, key):
    return sorted({c.run[key] for c in cells})


def test_axes_are_a_product_typed_by_the_schema_and_named_in_the_ids():
    cells = expand(SweepSpec(axes={"warmup": ["0.1", 0.2], "max_grad_norm": [0, "1"]}))
    assert len(cells) == 4
    assert values(cells, "warmup") == [0.1, 0.2] and values(cells, "max_grad_norm") == [0.0, 1.0]
    assert len({c.id for c in cells}) == 4
    c = next(c for c in cells if c.run["warmup"] == 0.2 and c.run["max_grad_norm"] == 0.0)
    assert "_warmup0.2_max_grad_norm0_s0_" in c.id
    assert dict(c.params)["warmup"] == 0.2 and dict(c.params)["max_grad_norm"] == 0.0


def test_an_alias_key_is_swept_under_its_own_name_and_values_are_validated():
    cells = expand(SweepSpec(axes={"warmup_ratio": [0.0, 0.1], "optim": ["adamw_torch", "adafactor"]}))
    assert values(cells, "warmup") == [0.0, 0.1] and values(cells, "optimizer") == ["adafactor", "adamw"]
    with pytest.raises(ConfigError, match="warmup is a fraction"):
        expand(SweepSpec(axes={"warmup": [0.1, 1.5]}))
    with pytest.raises(ConfigError, match="not a valid int"):
        expand(SweepSpec(axes={"micro_batch": [4, "eight"]}))
    with pytest.raises(ConfigError, match="unknown run-config key 'warmups'.*'warmup'"):
        expand(SweepSpec(axes={"warmups": [0.1]}))
    with pytest.raises(ConfigError, match="built-in axis: use lrs"):
        expand(SweepSpec(axes={"learning_rate": [1e-4]}))
    with pytest.raises(ConfigError, match="both a fixed training setting and an axis"):
        expand(SweepSpec(train={"warmup": 0.1}, axes={"warmup": [0.2]}))


def test_axes_zip_with_each_other_and_with_built_in_axes_and_rules_name_them():
    spec = SweepSpec(ranks=[8, 16], alphas=[16, 32], axes={"warmup": [0.0, 0.1], "micro_batch": [4, 8]},
                     zip=[["ranks", "alphas", "warmup"]])
    cells = expand(spec)
    assert sorted((c.run["rank"], c.run["warmup"]) for c in cells) == [(8, 0.0), (8, 0.0), (16, 0.1), (16, 0.1)]
    kept = expand(dataclasses.replace(spec, exclude=[{"rank": 16, "micro_batch": 8}]))
    assert len(kept) == 3 and not any(c.run["rank"] == 16 and c.run["micro_batch"] == 8 for c in kept)
    only = expand(dataclasses.replace(spec, include=[{"micro_batch": 4}]))
    assert values(only, "micro_batch") == [4]
    with pytest.raises(ConfigError, match="micro_batch 16 is not on the micro_batchs axis"):
        expand(dataclasses.replace(spec, include=[{"micro_batch": 16}]))
    with pytest.raises(ConfigError, match="zipped axes need equal lengths"):
        expand(dataclasses.replace(spec, zip=[["ranks", "micro_batch"]], axes={"micro_batch": [4, 8, 16]}))


def test_a_swept_micro_batch_keeps_the_global_batch():
    cells = expand(SweepSpec(global_batch=64, axes={"micro_batch": [4, 8]}))
    assert sorted((c.run["micro_batch"], c.run["grad_accum"]) for c in cells) == [(4, 16), (8, 8)]


def test_the_gpt2_study_is_one_grid(tmp_path, capsys):
    out = tmp_path / "study"
    assert grid.main(["--config", str(STUDY), "--dry-run", "--out", str(out)]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert len(rows) == 90  # 3 sizes x 3 rank/alpha pairs x 3 warmups x 2 micro x 2 clipping, less 18 excluded
    assert len({r["id"] for r in rows}) == 90 and len(list(out.glob("*/cell.yaml"))) == 90
    assert {(r["rank"], r["alpha"]) for r in rows} == {("8", "16.0"), ("16", "32.0"), ("64", "128.0")}
    assert {r["warmup"] for r in rows} == {"0.0", "0.03", "0.1"}
    assert {r["max_grad_norm"] for r in rows} == {"0.0", "1.0"}
    assert not [r for r in rows if r["model"] == "gpt2-xl" and r["micro_batch"] == "8"]
    one = next(r for r in rows if r["model"] == "gpt2-large" and r["rank"] == "16" and r["warmup"] == "0.03"
               and r["micro_batch"] == "8" and r["max_grad_norm"] == "0.0")
    assert one["id"].startswith("gpt2-large_lora_r16_a32_lr2e-04_alpaca_warmup0.03_micro_batch8_max_grad_norm0_s0_")
    cfg = yaml.safe_load((out / one["id"] / "cell.yaml").read_text())
    assert (cfg["micro_batch"], cfg["grad_accum"], cfg["max_grad_norm"], cfg["warmup"]) == (8, 8, 0.0, 0.03)
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["axes"] == {"warmup": [0.0, 0.03, 0.1], "micro_batch": [4, 8], "max_grad_norm": [0.0, 1.0]}
    # The written sweep.yaml re-creates the same grid (same ids) in the same folder.
    assert grid.main(["--config", str(out / "sweep.yaml"), "--dry-run", "--out", str(out)]) == 0
    assert len(list(csv.DictReader((out / "cells.csv").open()))) == 90


def test_sweep_flags_and_swept_columns_in_the_report(tmp_path, capsys):
    out = tmp_path / "s"
    assert grid.main(["--models", "pythia-tiny", "--gpu", "cpu", "--sweep", "warmup=0.1,0.2",
                      "--sweep", "max-grad-norm=0,1", "--dry-run", "--out", str(out)]) == 0
    capsys.readouterr()
    rows = report.collect(out)
    assert len(rows) == 4
    assert sorted((r["warmup"], r["max_grad_norm"]) for r in rows) == [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]
    report.write(out, rows)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "max_grad_norm" in header and "warmup" in header
    assert "max_grad_norm" in report.shown_columns(rows)


def test_a_different_grid_into_the_same_out_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "s"
    base = ["--models", "pythia-tiny", "--gpu", "cpu", "--dry-run", "--out", str(out)]
    assert grid.main(base + ["--sweep", "warmup=0.1"]) == 0
    first = {r["id"] for r in csv.DictReader((out / "cells.csv").open())}
    assert grid.main(base + ["--sweep", "warmup=0.1", "--time", "02:00:00"]) == 0  # same grid: fine
    capsys.readouterr()
    assert grid.main(base + ["--sweep", "warmup=0.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a different grid" in err[0] and "--force" in err[0]
    assert {r["id"] for r in csv.DictReader((out / "cells.csv").open())} == first  # untouched
    assert grid.main(base + ["--sweep", "warmup=0.2", "--force"]) == 0
    merged = {r["id"] for r in csv.DictReader((out / "cells.csv").open())}
    assert len(merged) == 2 and first < merged
