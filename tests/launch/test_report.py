"""The sweep report: results.csv/md equal to each cell's metrics.json, sorting, grouping, pivots, plots
with checked content, partial and corrupt sweeps, --watch."""
from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from cells import ROOT, explain, run
from ftgrid import rundir
from ftgrid.launch import plan as planner
from ftgrid.launch import plots, report
from ftgrid.registry import model_spec

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two tiny LoRA cells (ranks 2 and 4) run for real on the local executor."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--models", "pythia-tiny", "--ranks", "2,4",
                "--lrs", "3e-3", "--executor", "local", "--gpu", "cpu", "--max-steps", "10", "--seq-len", "64",
                "--set", "eval_rows=32", "--out", out])
    assert proc.returncode == 0, explain(proc)
    assert "untrained_eval_loss" in proc.stdout  # grid.py prints its table through report.markdown
    return out


@pytest.fixture
def copy(sweep, tmp_path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(sweep, dst, ignore=shutil.ignore_patterns("adapter", "checkpoints", "base", "plots"))
    return dst


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _metrics(cell_dir: Path) -> dict:
    return json.loads((cell_dir / "metrics.json").read_text())


def test_results_equal_each_cells_metrics(copy, capsys):
    assert report.main([str(copy)]) == 0
    printed = capsys.readouterr().out
    rows = _csv(copy / "results.csv")
    assert len(rows) == 2 and {r["rank"] for r in rows} == {"2", "4"}
    for r in rows:
        cell = copy / r["cell"]
        m, cfg = _metrics(cell), yaml.safe_load((cell / "cell.yaml").read_text())
        assert float(r["eval_loss"]) == m["eval_loss"]
        assert float(r["untrained_eval_loss"]) == m["initial_eval_loss"]
        assert float(r["train_loss"]) == m["train_loss_last"]
        assert float(r["perplexity"]) == m["perplexity"]
        assert math.isclose(float(r["perplexity"]), math.exp(float(r["eval_loss"])), rel_tol=1e-12)
        assert int(r["tokens"]) == m["tokens"] and float(r["tokens_per_second"]) == m["tokens_per_second"]
        assert float(r["time_s"]) == m["wall_seconds"] and float(r["peak_gib"]) == m["peak_memory_gib"]
        assert int(r["batch"]) == m["global_batch"] == cfg["micro_batch"] * cfg["grad_accum"] * m["world_size"]
        assert float(r["epochs"]) == m["epochs"]
        # model size: the base model (metrics' total less the adapters) = the planner's count
        assert int(r["params"]) == m["total_params"] - m["trainable_params"]
        assert int(r["params"]) == planner.param_counts(model_spec("pythia-tiny"), "lora", int(r["rank"]), "preset")[0]
        for key in ("lr", "min_lr", "warmup", "weight_decay", "alpha"):
            assert float(r[key]) == float(cfg[key]), key
        assert r["optimizer"] == cfg["optimizer"] and r["status"] == "done" and r["gpu_hours"] == ""
    md = (copy / "results.md").read_text()
    assert "2 cell(s): 2 done" in md
    for r in rows:
        assert r["cell"] in md and f"{float(r['eval_loss']):.4g}" in md
    header = next(line for line in md.splitlines() if line.startswith("| cell"))
    for col in ("params", "batch", "epochs", "optimizer", "lr", "min_lr", "warmup", "weight_decay", "rank", "alpha",
                "train_loss", "eval_loss", "perplexity", "tokens", "time_s", "peak_gib", "status"):
        assert f" {col} " in header, col
    assert "task_metric" not in header and "gpu_hours" not in header  # no values: left out of the md table
    assert "wrote:" in printed and str(copy / "results.csv") in printed and "loss_curves.png" in printed


def test_plots_are_pngs_with_the_sweeps_numbers(copy):
    rows = report.collect(copy)
    written, skipped = report.make_plots(copy, rows)
    names = sorted(p.name for p in written)
    assert names == ["eval_loss_vs_rank.png", "loss_curves.png", "throughput_memory.png"]
    for p in written:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert any(s.startswith("eval_loss_vs_lr.png") for s in skipped)  # one lr in this sweep
    by_rank = sorted(rows, key=lambda r: r["rank"])

    fig = plots.eval_loss_vs(rows, "rank")
    ax = fig.axes[0]
    (line,) = ax.lines                                   # one line: one model
    assert list(line.get_xdata()) == [2, 4]
    assert list(line.get_ydata()) == [r["eval_loss"] for r in by_rank]
    assert line.get_label() == "pythia-tiny"
    assert ax.get_xlabel() == "LoRA rank r" and ax.get_ylabel() == "eval loss (nats per token)"

    fig = plots.loss_curves(rows)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    for line, r in zip(ax.lines, rows):
        hist = _metrics(copy / r["cell"])["history"]
        assert list(line.get_ydata()) == [h["loss"] for h in hist if "loss" in h]
        assert list(line.get_xdata()) == [h["step"] for h in hist if "loss" in h]
    assert ax.get_xlabel() == "optimizer step" and "nats" in ax.get_ylabel()

    fig = plots.throughput_memory(rows)
    tput, mem = fig.axes
    assert [b.get_height() for b in tput.patches] == [r["tokens_per_second"] for r in rows]
    assert [b.get_height() for b in mem.patches] == [r["peak_gib"] for r in rows]
    assert tput.get_ylabel() == "throughput (tokens/s)" and mem.get_ylabel().startswith("peak memory (GiB")


def _fake_rows():
    rows = []
    for model, base in (("pythia-70m", 3.0), ("pythia-160m", 2.5)):
        for rank in (4, 16):
            for lr in (1e-4, 3e-4):
                for tier, n in (("small", 400), ("medium", 1200)):
                    loss = base - 0.01 * rank ** 0.5 - 100 * lr - 0.0001 * n
                    rows.append({"cell": f"{model}-r{rank}-lr{lr}-{tier}", "model": model, "rank": rank, "lr": lr,
                                 "train_rows": n, "eval_loss": loss, "status": "done"})
    return rows


def test_eval_loss_plots_vs_lr_and_data_tier_one_line_per_model():
    rows = _fake_rows()
    for x, label in (("lr", "peak learning rate"), ("train_rows", "training examples (data-size tier)")):
        ax = plots.eval_loss_vs(rows, x).axes[0]
        assert sorted(line.get_label() for line in ax.lines) == ["pythia-160m", "pythia-70m"]
        assert ax.get_xlabel() == label and "best cell per point" in ax.get_title()
        line = next(line for line in ax.lines if line.get_label() == "pythia-70m")
        # the best (lowest) loss among the cells at each x
        for xv, yv in zip(line.get_xdata(), line.get_ydata()):
            assert yv == min(r["eval_loss"] for r in rows if r["model"] == "pythia-70m" and r[x] == xv)


def test_sorting_grouping_and_pivot():
    rows = _fake_rows() + [{"cell": "pending-one", "model": "pythia-70m", "rank": 4, "lr": 1e-4, "eval_loss": None,
                            "status": "pending"}]
    ordered = report.sort_rows(rows, ["eval_loss"])
    losses = [r["eval_loss"] for r in ordered]
    assert losses[:-1] == sorted(losses[:-1]) and losses[-1] is None    # empty values last
    desc = report.sort_rows(rows, ["-eval_loss"])
    assert desc[0]["eval_loss"] == max(losses[:-1]) and desc[-1]["eval_loss"] is None
    two = report.sort_rows(rows, ["model", "rank"])
    assert [(r["model"], r["rank"]) for r in two] == sorted((r["model"], r["rank"]) for r in rows)
    assert list(report.groups(rows, "model")) == ["pythia-160m", "pythia-70m"]

    rvals, cvals, table = report.pivot(rows, "model", "rank", "eval_loss")
    assert cvals == ["4", "16"] and set(rvals) == {"pythia-70m", "pythia-160m"}
    cell = [r["eval_loss"] for r in rows if r["model"] == "pythia-70m" and r["rank"] == 16]
    assert table[("pythia-70m", "16")] == (pytest.approx(sum(cell) / len(cell)), 4)
    md = report.pivot_markdown(rows, "model:rank:eval_loss", agg="min")
    assert "| model \\ rank | 4 | 16 |" in md and report._fmt(min(cell)) in md
    with pytest.raises(ValueError):
        report.parse_pivot("model:rank")


def test_cli_sort_group_pivot(copy, capsys):
    assert report.main([str(copy), "--sort", "eval_loss", "--desc", "--group", "model", "--pivot", "model:rank:eval_loss",
                        "--no-plots"]) == 0
    out = capsys.readouterr().out
    rows = _csv(copy / "results.csv")
    assert [float(r["eval_loss"]) for r in rows] == sorted((float(r["eval_loss"]) for r in rows), reverse=True)
    md = (copy / "results.md").read_text()
    assert "## model = pythia-tiny" in md and "### eval_loss by model x rank" in md
    pivot = _csv(copy / "pivot_eval_loss_by_model_x_rank.csv")
    assert len(pivot) == 1 and pivot[0]["model\\rank"] == "pythia-tiny"
    for r in rows:
        assert float(pivot[0][r["rank"]]) == float(r["eval_loss"])
    assert "pivot_eval_loss_by_model_x_rank.csv" in out and not (copy / "plots").exists()
    assert report.main([str(copy), "--pivot", "model:rank"]) == 2


def _corrupt(copy: Path) -> dict:
    """Add cells in every state a live or damaged sweep can show. Returns {cell name: expected status}."""
    done = sorted(p for p in copy.iterdir() if (p / "metrics.json").exists())
    template = yaml.safe_load((done[0] / "cell.yaml").read_text())
    expected = {}

    def cell(name, **cfg):
        d = copy / name
        d.mkdir()
        (d / "cell.yaml").write_text(yaml.safe_dump(dict(template, name=name, **cfg)))
        return d

    cell("c-pending", rank=8)
    expected["c-pending"] = "pending"
    d = cell("c-running", rank=16)
    rundir.write_status(d, "running", started=1.0)
    expected["c-running"] = "running"
    d = cell("c-oom", rank=32)
    rundir.write_status(d, "oom", error="RuntimeError: DefaultCPUAllocator: can't allocate memory\nmore")
    expected["c-oom"] = "oom"
    d = cell("c-truncated-status")
    (d / "status.json").write_text('{"state": "do')
    expected["c-truncated-status"] = "damaged"
    d = cell("c-truncated-metrics")
    rundir.write_status(d, "done")
    text = (done[0] / "metrics.json").read_text()
    (d / "metrics.json").write_text(text[: len(text) // 2])
    expected["c-truncated-metrics"] = "done"
    d = cell("c-odd-json")
    (d / "status.json").write_text("[1, 2]")
    (d / "metrics.json").write_text(json.dumps({"eval_loss": "n/a", "history": [None, {"loss": "x"}, 3],
                                                "task_metrics": [], "total_params": "many"}))
    expected["c-odd-json"] = "damaged"
    d = copy / "c-bad-yaml"
    d.mkdir()
    (d / "cell.yaml").write_text("model: [unclosed\n")
    expected["c-bad-yaml"] = "pending"
    d = cell("c-summarization", task="summarization")
    rundir.write_status(d, "done")
    m = json.loads(text)
    m["task_metrics"] = {"rouge1": 0.5, "rouge2": 0.25, "rougeL": 0.4}
    (d / "metrics.json").write_text(json.dumps(m))
    expected["c-summarization"] = "done"
    for p in done:
        expected[p.name] = "done"
    return expected


def test_partial_and_corrupt_sweep_never_crashes(copy, capsys):
    expected = _corrupt(copy)
    assert report.main([str(copy), "--sort", "eval_loss", "--pivot", "model:rank:eval_loss"]) == 0
    out = capsys.readouterr().out
    rows = {r["cell"]: r for r in _csv(copy / "results.csv")}
    assert {c: r["status"] for c, r in rows.items()} == expected
    n = len(expected)
    assert out.splitlines()[0] == f"{n} cell(s): 4 done, 1 running, 2 pending, 1 oom, 2 damaged"
    assert rows["c-running"]["time_s"] != ""                  # elapsed so far
    assert rows["c-oom"]["error"] == "RuntimeError: DefaultCPUAllocator: can't allocate memory"
    assert rows["c-truncated-metrics"]["eval_loss"] == "" and rows["c-pending"]["params"] != ""
    assert rows["c-odd-json"]["eval_loss"] == "" and rows["c-odd-json"]["params"] != "many"
    summ = rows["c-summarization"]
    assert (summ["task_metric_name"], float(summ["task_metric"])) == ("rougeL", 0.4)
    assert float(summ["rouge1"]) == 0.5 and float(summ["rouge2"]) == 0.25     # every task metric has a column
    md = (copy / "results.md").read_text()
    assert "task_metric" in md and "| rougeL | 0.4 |" in md


def test_watch_refreshes_until_nothing_is_in_flight(copy):
    cell = sorted(p for p in copy.iterdir() if (p / "metrics.json").exists())[0]
    metrics = (cell / "metrics.json").read_text()
    (cell / "metrics.json").unlink()
    rundir.write_status(cell, "running", started=1.0)
    seen, sleeps = [], []

    def fake_sleep(seconds):      # the cell finishes while the report sleeps
        sleeps.append(seconds)
        (cell / "metrics.json").write_text(metrics)
        rundir.write_status(cell, "done")

    args = report.parse_args([str(copy)])
    rows, paths, _ = report.watch(copy, args, 30, sleep=fake_sleep, echo=seen.append)
    assert sleeps == [30] and len(seen) == 2
    assert seen[0].endswith("2 cell(s): 1 done, 1 running") and seen[1].endswith("2 cell(s): 2 done")
    assert all(r["status"] == "done" for r in rows) and (copy / "plots" / "loss_curves.png").exists()
    assert report.main([str(copy), "--watch", "0.05", "--no-plots"]) == 0    # nothing in flight: returns at once
    assert report.main([str(copy), "--watch", "0"]) == 2


def test_oom_map_when_probe_data_exist(copy):
    lines = ["model,method,rank,targets,zero,gpus,micro_batch,seq_len,grad_ckpt,gpu,peak_gib,oom,source"]
    for mb, oom in ((1, False), (8, False), (12, False), (13, True), (16, True)):
        lines.append(f"pythia-tiny,lora,16,preset,0,1,{mb},512,false,cpu,{'' if oom else 0.9},{str(oom).lower()},"
                     "probe: mem cap 0.3 GiB over an import baseline of 1.45 GiB")
    (copy / "measured_peaks.csv").write_text("\n".join(lines) + "\n")
    written, _ = report.make_plots(copy, report.collect(copy))
    (oom_map,) = [p for p in written if p.name == "oom_map.png"]
    assert oom_map.read_bytes()[:8] == PNG
    assert report.main([str(copy), "--probe-csv", str(copy / "nope.csv")]) == 2
    assert report.markdown([], ("cell", "status")).startswith("| cell | status |")


def test_unknown_column_is_an_error_with_did_you_mean(tmp_path, capsys):
    from ftgrid.launch import grid
    out = tmp_path / "sweep"
    assert grid.main(["--models", "pythia-tiny", "--ranks", "2,4", "--gpu", "cpu", "--executor", "local",
                      "--dry-run", "--out", str(out)]) == 0
    capsys.readouterr()
    assert report.main([str(out), "--columns", "cell,eval_los", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: --columns: unknown column 'eval_los' (did you mean 'eval_loss'?)")
    assert not (out / "results.csv").exists() and not (out / "results.md").exists()
    assert report.main([str(out), "--columns", "cell,rank,lr", "--no-plots"]) == 0
    assert "| cell | rank | lr |" in (out / "results.md").read_text().splitlines()
