"""Collect a sweep's cells into one table: `python -m launch.report runs/<sweep>`.

Reads each cell's cell.yaml, status.json and metrics.json (any of them may be missing: a sweep
still running, or a cell that died) and writes results.csv and results.md next to them.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import yaml

from finetune import rundir

COLUMNS = ("cell", "model", "method", "rank", "alpha", "lr", "dataset", "seed", "status",
           "train_loss", "untrained_eval_loss", "eval_loss", "perplexity", "tokens", "time_s")


def cell_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(sweep_dir).glob("*/cell.yaml"))


def row(cell_dir: Path) -> dict:
    try:
        cfg = yaml.safe_load((cell_dir / "cell.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    metrics = rundir.read_json(cell_dir / rundir.METRICS_FILE, default={}) or {}
    status = rundir.read_status(cell_dir)
    return {
        "cell": cell_dir.name, "model": cfg.get("model"), "method": cfg.get("method"),
        "rank": cfg.get("rank"), "alpha": cfg.get("alpha"), "lr": cfg.get("lr"),
        "dataset": cfg.get("dataset"), "seed": cfg.get("seed"), "status": status.get("state", "pending"),
        "train_loss": metrics.get("train_loss_last"), "untrained_eval_loss": metrics.get("initial_eval_loss"),
        "eval_loss": metrics.get("eval_loss"),
        "perplexity": metrics.get("perplexity"), "tokens": metrics.get("tokens"),
        "time_s": metrics.get("wall_seconds"),
    }


def collect(sweep_dir: Path) -> list[dict]:
    return [row(d) for d in cell_dirs(sweep_dir)]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def markdown(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], columns=COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write(sweep_dir: Path, rows: list[dict]) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    paths = [sweep_dir / "results.csv", sweep_dir / "results.md"]
    rundir.atomic_write_text(paths[0], to_csv(rows))
    rundir.atomic_write_text(paths[1], markdown(rows))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Collect a sweep's results into results.csv/results.md")
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        print(f"error: no sweep directory at {sweep_dir}", file=sys.stderr)
        return 2
    rows = collect(sweep_dir)
    paths = write(sweep_dir, rows)
    print(markdown(rows), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
