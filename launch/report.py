"""Collect a sweep's cells into one table, a pivot and plots: `python -m launch.report runs/<sweep>`.

    python -m launch.report runs/<sweep>                                  # results.csv, results.md, plots/
    python -m launch.report runs/<sweep> --sort eval_loss --group model   # sorted, one table per model
    python -m launch.report runs/<sweep> --sort eval_loss --desc          # worst first (or --sort=-eval_loss)
    python -m launch.report runs/<sweep> --pivot model:rank:eval_loss     # eval loss by model x rank
    python -m launch.report runs/<sweep> --watch 60                       # refresh until nothing is in flight

Reads each cell's cell.yaml, plan.json, status.json and metrics.json. Any of them may be missing,
truncated or corrupt (a sweep still running, a cell that died, a file edited by hand): the cell is
still listed with what can be read, and its status says `pending` (no status yet) or `damaged` (a
status.json that cannot be read; a cell whose metrics.json holds a result is `done` regardless,
ftgrid.rundir.read_status). Absurd numbers (a rank of 0, a step of 1e308) become blanks, not crashes.

Columns of results.csv (results.md shows the ones with a value, or --columns):
  cell (the run), model, params (base model size: metrics total_params less the LoRA adapters, or the
  planner's count before the cell has run), method, rank, alpha, targets, dataset, train_rows, seed,
  micro_batch, grad_accum, world_size, batch (micro x accumulation x world size = metrics global_batch),
  epochs, optimizer, lr, min_lr, warmup, weight_decay, train_loss (last logged), untrained_eval_loss,
  eval_loss, perplexity (exp of the eval loss, for LM losses), task_metric_name + task_metric (ROUGE-L,
  F1 or DPO reward accuracy when the task has one) and every task metric as its own column, tokens,
  tokens_per_second, time_s (wall time; elapsed so far for a running cell), gpu_hours (wall time x
  world size, GPU cells only), peak_gib + peak_kind (GPU max allocated, or CPU max RSS), status, error.

Plots (plots/*.png, see launch/plots.py): eval loss vs rank, vs lr and vs data-size tier (one line per
model; drawn when the sweep varies that axis), loss curves per cell, throughput and peak memory per
cell, and the OOM map when probe data exist (measured_peaks.csv in the sweep folder, or --probe-csv).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from ftgrid import rundir
from ftgrid.cli import CliParser
from ftgrid import validate
from ftgrid.yamlio import load_yaml_text
from ftgrid.errors import ConfigError, did_you_mean, one_line
from ftgrid.registry import model_spec
from ftgrid.schema import LORA_METHODS

COLUMNS = ("cell", "model", "params", "method", "rank", "alpha", "targets", "dataset", "train_rows", "seed",
           "micro_batch", "grad_accum", "world_size", "batch", "epochs", "optimizer", "lr", "min_lr", "warmup",
           "weight_decay", "train_loss", "untrained_eval_loss", "eval_loss", "perplexity", "task_metric_name",
           "task_metric", "judge_score", "tokens", "tokens_per_second", "time_s", "gpu_hours", "peak_gib", "peak_kind",
           "status", "error")
# results.md: the researchers' table (columns without any value are left out).
MD_COLUMNS = ("cell", "model", "params", "method", "rank", "alpha", "batch", "epochs", "optimizer", "lr", "min_lr",
              "warmup", "weight_decay", "train_loss", "untrained_eval_loss", "eval_loss", "perplexity",
              "task_metric_name", "task_metric", "judge_score", "tokens", "time_s", "gpu_hours", "peak_gib", "status")
# The headline task metric, by preference (names as finetune/train.py writes them in task_metrics).
TASK_METRIC_ORDER = ("rougeL", "rouge1", "rouge2", "f1", "accuracy", "reward_accuracy", "reward_margin",
                     "precision", "recall")
IN_FLIGHT = ("pending", "submitted", "running")
PLOTS_DIR = "plots"


# ---------------------------------------------------------------------------------------------
# Reading a cell (nothing here may raise on bad files)


def cell_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(sweep_dir).glob("*/cell.yaml"))


def is_sweep(folder: Path) -> bool:
    """A grid's folder (sweep.yaml or cell folders) or a probe's (measured_peaks.csv)."""
    folder = Path(folder)
    return ((folder / "sweep.yaml").is_file() or (folder / "measured_peaks.csv").is_file()
            or next(folder.glob("*/cell.yaml"), None) is not None)


def _read_yaml(path: Path) -> dict:
    try:
        data = load_yaml_text(Path(path).read_text(), str(path))  # refuses alias bombs (a ValueError)
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_dict(path: Path) -> dict | None:
    """The JSON object in `path`; {} when the file is missing, None when it is there but unreadable."""
    if not Path(path).exists():
        return {}
    data = rundir.read_json(path, default=None)
    return data if isinstance(data, dict) else None


def _num(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value):
    out = _num(value)
    return int(out) if out is not None and out == int(out) else out


# Counts and sizes (ranks, rows, tokens, parameters, batch, memory) are positive and below this; anything
# else in a file is damage, shown as a blank (a rank of 0 or -4 must not reach a log-scaled plot).
MAX_COUNT = 1e18


def _count(value, kind=_int):
    out = kind(value)
    return out if out is not None and 0 < out <= MAX_COUNT else None


def _targets(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)


def planned_params(model, method, rank, targets) -> int | None:
    """The planner's base-model parameter count (None for an unknown model)."""
    from ftgrid.launch import plan as planner
    try:
        spec = model_spec(str(model))
        t = targets.split(";") if isinstance(targets, str) and ";" in targets else targets
        total, _ = planner.param_counts(spec, str(method or "full"), rank if method in LORA_METHODS else None,
                                        t or "preset")
        return total
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def task_metrics(metrics: dict) -> dict:
    """{name: value} of the task metrics in a metrics.json (`task_metrics`, as the entrypoint writes them)."""
    found = metrics.get("task_metrics")
    out = {}
    if isinstance(found, dict):
        for key, value in found.items():
            if _num(value) is not None:
                out[str(key)] = _num(value)
    return out


def swept_keys(sweep_dir: Path) -> list[str]:
    """The run-config keys a sweep varies beyond the built-in axes (sweep.yaml `axes:`): a column each."""
    axes = _read_yaml(Path(sweep_dir) / "sweep.yaml").get("axes")
    return [str(k) for k in axes] if isinstance(axes, dict) else []


def row(cell_dir: Path, swept=()) -> dict:
    cell_dir = Path(cell_dir)
    cfg = _read_yaml(cell_dir / "cell.yaml")
    plan = _read_dict(cell_dir / "plan.json") or {}
    status = rundir.read_status(cell_dir)
    metrics = _read_dict(cell_dir / rundir.METRICS_FILE) or {}
    state = status["state"]

    def pick(key, *alts):
        for src in (metrics, cfg):
            for k in (key, *alts):
                if src.get(k) is not None:
                    return src[k]
        return None

    model, method = pick("model"), pick("method")
    lora = method in LORA_METHODS
    rank, alpha = _count(pick("rank")) if lora else None, _count(pick("alpha"), _num) if lora else None
    targets = _targets(cfg.get("target_modules")) if lora else None
    total, trainable = _count(metrics.get("total_params")), _count(metrics.get("trainable_params"))
    if total is not None:
        params = total - (trainable or 0) if lora else total
    else:
        params = planned_params(model, method, rank, targets)
    micro, accum = _count(cfg.get("micro_batch")), _count(cfg.get("grad_accum"))
    world = _count(metrics.get("world_size")) or _count(plan.get("gpus")) or 1
    batch = _count(metrics.get("global_batch"))
    if batch is None and micro is not None:
        batch = micro * (accum or 1) * world
    epochs = _num(metrics.get("epochs"))
    if epochs is None and (_num(cfg.get("max_steps")) or -1) <= 0:
        epochs = _num(cfg.get("epochs"))
    eval_loss = _num(metrics.get("eval_loss"))
    perplexity = _num(metrics.get("perplexity"))
    tasks = task_metrics(metrics)
    headline = next((k for k in TASK_METRIC_ORDER if k in tasks), next(iter(sorted(tasks)), None))
    wall = _num(metrics.get("wall_seconds"))
    if wall is None and state == "running" and _num(status.get("started")) is not None:
        wall = max(0.0, time.time() - _num(status["started"]))
    on_gpu = str(plan.get("gpu") or "cpu") != "cpu" or str(metrics.get("peak_memory_kind", "")).startswith("cuda")
    data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
    error = str(status.get("error") or "").strip().splitlines()
    out = {
        "cell": cell_dir.name, "model": model, "params": params, "method": method, "rank": rank, "alpha": alpha,
        "targets": targets, "dataset": pick("dataset"), "train_rows": _count(data.get("train_rows")),
        "seed": _int(pick("seed")), "micro_batch": micro, "grad_accum": accum, "world_size": world,
        "batch": batch, "epochs": epochs, "optimizer": cfg.get("optimizer"), "lr": _count(pick("lr"), _num),
        "min_lr": _num(cfg.get("min_lr")), "warmup": _num(cfg.get("warmup")),
        "weight_decay": _num(cfg.get("weight_decay")),
        "train_loss": _num(metrics.get("train_loss_last")),
        "untrained_eval_loss": _num(metrics.get("initial_eval_loss")),
        "eval_loss": eval_loss, "perplexity": perplexity,
        "task_metric_name": headline, "task_metric": tasks.get(headline) if headline else None,
        "tokens": _count(metrics.get("tokens")), "tokens_per_second": _count(metrics.get("tokens_per_second"), _num),
        "time_s": wall, "gpu_hours": wall * world / 3600 if wall is not None and on_gpu else None,
        "peak_gib": _count(metrics.get("peak_memory_gib"), _num), "peak_kind": metrics.get("peak_memory_kind"),
        "status": state, "error": error[0][:200] if error else None,
        "seq_len": _count(cfg.get("seq_len")), "grad_ckpt": cfg.get("grad_ckpt"), "gpu": plan.get("gpu"),
        "zero": plan.get("zero"),
    }
    for key in swept:  # the sweep's run-config axes, as cell.yaml holds them
        if out.get(key) is None:
            value = cfg.get(key)
            out[key] = ";".join(map(str, value)) if isinstance(value, list) else value
    out["swept"] = list(swept)
    out["task_metrics"] = tasks
    out.update({k: v for k, v in tasks.items() if k not in out})
    history = metrics.get("history")
    out["history"] = history if isinstance(history, list) else []
    return out


def collect(sweep_dir: Path) -> list[dict]:
    swept = swept_keys(sweep_dir)
    rows = [row(d, swept) for d in cell_dirs(sweep_dir)]
    _label(rows)
    return rows


def _label(rows: list[dict]) -> None:
    """A short label per row for plots: the settings that differ between the sweep's cells."""
    keys = ("model", "method", "rank", "alpha", "lr", "dataset", "seed", "micro_batch", "seq_len")
    keys += tuple(k for k in dict.fromkeys(k for r in rows for k in r.get("swept", ())) if k not in keys)
    varying = [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]
    short = {"model": "", "method": "", "rank": "r", "alpha": "a", "lr": "lr", "dataset": "", "seed": "s",
             "micro_batch": "mb", "seq_len": "seq"}
    for r in rows:
        parts = [f"{short.get(k, k + '=')}{_fmt(r.get(k))}" for k in varying]
        r["label"] = " ".join(parts) if parts else r["cell"]


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _fmt_cell(column: str, value) -> str:
    if column == "params" and isinstance(value, (int, float)):
        for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= div:
                return f"{value / div:.3g}{unit}"
    if column == "time_s" and isinstance(value, (int, float)):
        return f"{value:.1f}"
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], columns=MD_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt_cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def with_swept(rows: list[dict], columns) -> list[str]:
    """`columns` with the sweep's run-config axes (not already there) before the losses."""
    swept = [k for k in dict.fromkeys(k for r in rows for k in r.get("swept", ())) if k not in columns]
    cols = list(columns)
    at = cols.index("train_loss") if "train_loss" in cols else len(cols)
    return cols[:at] + swept + cols[at:]


def csv_columns(rows: list[dict]) -> list[str]:
    """COLUMNS (with the swept run-config keys), then one column per task metric any cell reported
    (rougeL, f1, reward_accuracy, ...)."""
    columns = with_swept(rows, COLUMNS)
    extra = sorted({k for r in rows for k in (r.get("task_metrics") or {}) if k not in columns})
    return columns + extra


def to_csv(rows: list[dict], columns=None) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns or csv_columns(rows)), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def shown_columns(rows: list[dict], columns=MD_COLUMNS) -> list[str]:
    """The columns with a value in at least one row (cell and status always); the default table also
    shows the sweep's run-config axes."""
    columns = with_swept(rows, columns) if columns is MD_COLUMNS else columns
    return [c for c in columns if c in ("cell", "status") or any(r.get(c) is not None for r in rows)]


def counts(rows: list[dict]) -> Counter:
    return Counter(r["status"] for r in rows)


def summary_line(rows: list[dict]) -> str:
    c = counts(rows)
    order = ("done", "running", "submitted", "pending", "oom", "failed", "preempted", "predicted-oom", "damaged")
    parts = [f"{c[s]} {s}" for s in order if c.get(s)] + [f"{n} {s}" for s, n in sorted(c.items()) if s not in order]
    return f"{len(rows)} cell(s): " + (", ".join(parts) if parts else "none")


def _sort_key(value):
    num = _num(value)
    if num is not None:
        return (0, num, "")
    return (1 if value is not None else 2, 0.0, str(value))


class ColumnError(ValueError):
    """--columns names a column no table has (found before anything is written)."""


def check_columns(text: str, rows: list[dict]) -> list[str]:
    """`--columns a,b` -> [a, b]; an unknown name is an error with the closest known one."""
    columns = [c.strip() for c in str(text).split(",") if c.strip()]
    known = csv_columns(rows)
    for name in columns:
        if name not in known:
            raise ColumnError(f"--columns: unknown column {name!r}{did_you_mean(name, known)}")
    return columns


def sort_rows(rows: list[dict], keys) -> list[dict]:
    """Sort by one or more columns (a leading '-' sorts that one descending); empty values last."""
    out = list(rows)
    for key in reversed([k for k in keys if k]):
        desc = key.startswith("-")
        name = key.lstrip("-")
        present = [r for r in out if r.get(name) is not None]
        missing = [r for r in out if r.get(name) is None]
        out = sorted(present, key=lambda r: _sort_key(r.get(name)), reverse=desc) + missing
    return out


def groups(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(_fmt(r.get(key)), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: _sort_key(kv[1][0].get(key))))


def parse_pivot(text: str) -> tuple[str, str, str]:
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--pivot takes ROW:COLUMN:VALUE (e.g. model:rank:eval_loss), got {text!r}")
    return parts[0], parts[1], parts[2]


def pivot(rows: list[dict], row_key: str, col_key: str, value_key: str, agg: str = "mean"):
    """(row values, column values, {(row, column): aggregate}) over the cells that have the value;
    several cells in one place (seeds, other axes) are reduced by mean, min or max."""
    cells: dict = defaultdict(list)
    for r in rows:
        v = _num(r.get(value_key))
        if v is None:
            continue
        cells[(_fmt(r.get(row_key)), _fmt(r.get(col_key)))].append((v, r))
    fn = {"mean": lambda xs: sum(xs) / len(xs), "min": min, "max": max}[agg]
    table = {k: (fn([v for v, _ in vs]), len(vs)) for k, vs in cells.items()}

    def order(key):
        seen = {}
        for (rv, cv), vs in cells.items():
            seen[rv if key == row_key else cv] = vs[0][1].get(key)
        return [k for k, _ in sorted(seen.items(), key=lambda kv: _sort_key(kv[1]))]
    return order(row_key), order(col_key), table


def pivot_markdown(rows: list[dict], spec: str, agg: str = "mean") -> str:
    rk, ck, vk = parse_pivot(spec)
    rvals, cvals, table = pivot(rows, rk, ck, vk, agg)
    several = any(n > 1 for _, n in table.values())
    head = f"{vk} by {rk} x {ck}" + (f" ({agg} over cells sharing a place)" if several else "")
    lines = [f"### {head}", "", f"| {rk} \\ {ck} | " + " | ".join(cvals) + " |", "|" + "---|" * (len(cvals) + 1)]
    for rv in rvals:
        vals = []
        for cv in cvals:
            got = table.get((rv, cv))
            vals.append("-" if got is None else _fmt(got[0]) + (f" (n={got[1]})" if got[1] > 1 else ""))
        lines.append(f"| {rv} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def pivot_csv(rows: list[dict], spec: str, agg: str = "mean") -> str:
    rk, ck, vk = parse_pivot(spec)
    rvals, cvals, table = pivot(rows, rk, ck, vk, agg)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([f"{rk}\\{ck}"] + cvals)
    for rv in rvals:
        w.writerow([rv] + ["" if table.get((rv, cv)) is None else table[(rv, cv)][0] for cv in cvals])
    return buf.getvalue()


def results_markdown(rows: list[dict], columns=None, group: str | None = None, pivots=(), agg: str = "mean",
                     title: str = "") -> str:
    cols = list(columns) if columns else shown_columns(rows)
    out = [f"# Results{': ' + title if title else ''}", "", summary_line(rows), ""]
    if group:
        for value, members in groups(rows, group).items():
            out += [f"## {group} = {value}", "", summary_line(members), "", markdown(members, cols)]
    else:
        out.append(markdown(rows, cols))
    for spec in pivots:
        out += ["", pivot_markdown(rows, spec, agg)]
    return "\n".join(out)


def write(sweep_dir: Path, rows: list[dict], *, columns=None, group: str | None = None, pivots=(),
          agg: str = "mean") -> list[Path]:
    """results.csv (every column) and results.md (the table, per group, and the pivots); pivot CSVs."""
    sweep_dir = Path(sweep_dir)
    if group:
        rows = sort_rows(rows, [group])   # stable: keeps the order within each group
    paths = [sweep_dir / "results.csv", sweep_dir / "results.md"]
    rundir.atomic_write_text(paths[0], to_csv(rows))
    rundir.atomic_write_text(paths[1], results_markdown(rows, columns, group, pivots, agg, sweep_dir.name))
    for spec in pivots:
        rk, ck, vk = parse_pivot(spec)
        path = sweep_dir / f"pivot_{vk}_by_{rk}_x_{ck}.csv"
        rundir.atomic_write_text(path, pivot_csv(rows, spec, agg))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Plots


def probe_rows(sweep_dir: Path, probe_csv: str | None, rows: list[dict]) -> list[dict]:
    """Measured points for the OOM map: --probe-csv (kept to the sweep's models when any match), else
    the sweep folder's own measured_peaks.csv (a probe directory)."""
    from ftgrid.launch import probe
    if probe_csv:
        points = probe.read_points(Path(probe_csv))
        models = {r.get("model") for r in rows}
        mine = [p for p in points if p.get("model") in models]
        return mine or points
    try:
        return probe.read_points(Path(sweep_dir) / "measured_peaks.csv")
    except ConfigError as e:  # a damaged file of the sweep's own: no OOM map, the report still stands
        print(f"warning: no OOM map: {e}", file=sys.stderr)
        return []


def make_plots(sweep_dir: Path, rows: list[dict], probe_csv: str | None = None) -> tuple[list[Path], list[str]]:
    """Draw every plot the data allow into <sweep>/plots/. Returns (written paths, skipped: reasons)."""
    from ftgrid.launch import plots
    out_dir = Path(sweep_dir) / PLOTS_DIR
    written, skipped = [], []
    done = [r for r in rows if _num(r.get("eval_loss")) is not None]
    for x, name in (("rank", "eval_loss_vs_rank"), ("lr", "eval_loss_vs_lr"), ("train_rows", "eval_loss_vs_data")):
        distinct = {r.get(x) for r in done if r.get(x) is not None}
        if len(distinct) < 2:
            skipped.append(f"{name}.png: {len(distinct)} {x} value(s) with an eval loss")
            continue
        written.append(plots.save(plots.eval_loss_vs(done, x), out_dir / f"{name}.png"))
    with_history = [r for r in rows if plots.history_points(r.get("history"))[0]]
    if with_history:
        written.append(plots.save(plots.loss_curves(with_history), out_dir / "loss_curves.png"))
    else:
        skipped.append("loss_curves.png: no cell has a logged training loss yet")
    measured = [r for r in rows if _num(r.get("tokens_per_second")) is not None or _num(r.get("peak_gib")) is not None]
    if measured:
        written.append(plots.save(plots.throughput_memory(measured), out_dir / "throughput_memory.png"))
    else:
        skipped.append("throughput_memory.png: no cell has finished")
    points = probe_rows(sweep_dir, probe_csv, rows)
    if points:
        from ftgrid.launch import probe
        axis, map_rows = probe.map_rows(points)
        written.append(plots.save(plots.oom_map(map_rows, axis), out_dir / "oom_map.png"))
    return written, skipped


# ---------------------------------------------------------------------------------------------
# CLI


# ---------------------------------------------------------------------------------------------
# LLM-as-judge: the user's own command scores each cell's generations.jsonl


class JudgeError(ValueError):
    """The judge command failed or printed something that is not one number per pair: one line."""


JUDGE_COLUMN = "judge_score"
_JUDGED: dict = {}  # (command, file, mtime, size) -> mean score: --watch does not re-judge unchanged files


def judge_command(text: str) -> list[str]:
    """--judge "COMMAND ARGS" -> argv (shlex; run without a shell, so nothing typed reaches one)."""
    import shlex
    import shutil
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise JudgeError(f"--judge {text!r}: {e}") from None
    if not argv:
        raise JudgeError("--judge takes a command, e.g. --judge \"python my_judge.py\"")
    if shutil.which(argv[0]) is None:
        raise JudgeError(f"--judge: command {argv[0]!r} not found (not executable, not on PATH)")
    return argv


def judge_cell(argv: list[str], cell_dir: Path) -> float | None:
    """Mean score of a cell's generations: each {cell, id, prompt, response} is one JSON line on the
    command's stdin; it prints one number per line, in order. None when the cell has no generations."""
    import json
    import subprocess
    path = Path(cell_dir) / "generations.jsonl"
    try:
        stat = path.stat()
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None
    key = (tuple(argv), str(path), stat.st_mtime_ns, stat.st_size)
    if key in _JUDGED:
        return _JUDGED[key]
    try:
        pairs = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        raise JudgeError(f"{path} is damaged (not one JSON object a line); regenerate it") from None
    if not pairs:
        return None
    stdin = "".join(json.dumps({"cell": Path(cell_dir).name, "id": p.get("id"), "prompt": p.get("prompt"),
                                "response": p.get("response")}, ensure_ascii=False) + "\n" for p in pairs)
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, shell=False)
    except OSError as e:
        raise JudgeError(f"judge {argv[0]!r} could not start: {e.strerror or e}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:200]
        raise JudgeError(f"judge {argv[0]!r} failed on cell {Path(cell_dir).name} (exit {proc.returncode}): {last}")
    printed = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if len(printed) != len(pairs):
        raise JudgeError(f"judge {argv[0]!r} printed {len(printed)} line(s) for the {len(pairs)} pair(s) of cell "
                         f"{Path(cell_dir).name}; it must print one number per input line")
    scores = []
    for text in printed:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise JudgeError(f"judge {argv[0]!r} printed {text[:80]!r} for cell {Path(cell_dir).name}, not a number")
        scores.append(value)
    _JUDGED[key] = sum(scores) / len(scores)
    return _JUDGED[key]


def judge(rows: list[dict], sweep_dir: Path, argv: list[str]) -> None:
    """Add `judge_score` (the mean over a cell's generations) to every row; no generations anywhere is an error."""
    for r in rows:
        r[JUDGE_COLUMN] = judge_cell(argv, Path(sweep_dir) / r["cell"])
    if not any(r[JUDGE_COLUMN] is not None for r in rows):
        raise JudgeError(f"no cell in {sweep_dir} has generations.jsonl to judge (python finetune/generate.py "
                         f"--cell DIR --prompts FILE, or launch/grid.py --generate FILE)")


def report_once(sweep_dir: Path, args, draw: bool = True) -> tuple[list[dict], list[Path], list[str]]:
    rows = collect(sweep_dir)
    if getattr(args, "judge", None):
        judge(rows, sweep_dir, judge_command(args.judge))
    if args.sort:
        keys = [k.strip() for k in args.sort.split(",") if k.strip()]
        if args.desc:
            keys = [k[1:] if k.startswith("-") else f"-{k}" for k in keys]
        rows = sort_rows(rows, keys)
    columns = check_columns(args.columns, rows) if args.columns else None
    paths = write(sweep_dir, rows, columns=columns, group=args.group, pivots=args.pivot, agg=args.agg)
    skipped = []
    if draw and not args.no_plots:
        drawn, skipped = make_plots(sweep_dir, rows, args.probe_csv)
        paths += drawn
    return rows, paths, skipped


def watch(sweep_dir: Path, args, every: float, sleep=time.sleep, echo=print):
    """Refresh the report every `every` seconds until no cell is pending, submitted or running.
    Plots are redrawn when the set of finished cells changed, and at the end. Returns the last
    report_once result."""
    drawn_for = None
    while True:
        rows = collect(sweep_dir)
        finished = tuple(sorted(r["cell"] for r in rows if r["status"] not in IN_FLIGHT))
        active = [r for r in rows if r["status"] in IN_FLIGHT]
        result = report_once(sweep_dir, args, draw=finished != drawn_for or not active)
        drawn_for = finished
        echo(f"[{time.strftime('%H:%M:%S')}] {summary_line(result[0])}")
        if not active:
            return result
        sleep(every)


def parse_args(argv):
    p = CliParser(prog="python -m launch.report", description=__doc__.split("\n")[0], epilog=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir")
    p.add_argument("--sort", default="", help="column(s), comma separated (e.g. eval_loss or model,rank); "
                   "--sort=-col sorts that one descending")
    p.add_argument("--desc", action="store_true", help="sort descending")
    p.add_argument("--group", default=None, help="one table per value of this column (e.g. model)")
    p.add_argument("--pivot", action="append", default=[], metavar="ROW:COL:VALUE",
                   help="a pivot table, e.g. model:rank:eval_loss (repeatable)")
    p.add_argument("--agg", choices=("mean", "min", "max"), default="mean",
                   help="how a pivot reduces several cells in one place (default mean)")
    p.add_argument("--columns", default="", help="results.md columns, comma separated (default: those with values)")
    p.add_argument("--watch", type=validate.arg_float(0.0, 86_400.0), default=None, metavar="SECONDS",
                   help="refresh every SECONDS until no cell is pending, submitted or running")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--judge", default=None, metavar="COMMAND",
                   help="score generations.jsonl: each {cell, id, prompt, response} JSON line goes to COMMAND's "
                        "stdin, which prints one number per line; the mean per cell is the judge_score column")
    p.add_argument("--probe-csv", default=None, help="measured points for the OOM map (e.g. launch/measured_peaks.csv)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sweep_dir = Path(args.sweep_dir)
    if not os.path.isdir(sweep_dir):  # os.path: False (not OSError) for a name too long for the filesystem
        print(f"error: no sweep directory at {sweep_dir}", file=sys.stderr)
        return 2
    if not is_sweep(sweep_dir):  # never write results.csv into a folder that is no sweep
        print(f"error: {sweep_dir} is no sweep or probe directory (no sweep.yaml, */cell.yaml or "
              f"measured_peaks.csv)", file=sys.stderr)
        return 2
    try:
        for spec in args.pivot:
            parse_pivot(spec)
        if args.watch is not None and args.watch <= 0:
            raise ValueError("--watch takes a positive number of seconds")
        if args.probe_csv and not os.path.isfile(args.probe_csv):
            raise ValueError(f"--probe-csv: no file at {args.probe_csv!r}")
        if args.probe_csv:
            from ftgrid.launch import probe
            probe.read_points(Path(args.probe_csv))  # text in a number column, non-UTF-8: one line
        if args.judge is not None:
            judge_command(args.judge)
    except ValueError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        if args.watch is not None:
            rows, paths, skipped = watch(sweep_dir, args, args.watch)
        else:
            rows, paths, skipped = report_once(sweep_dir, args)
    except KeyboardInterrupt:
        print("stopped watching", file=sys.stderr)
        return 130
    except (JudgeError, ColumnError) as e:  # before anything is written: both come before the tables
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    columns = check_columns(args.columns, rows) if args.columns else shown_columns(rows)
    print(summary_line(rows))
    if args.group:
        for value, members in groups(rows, args.group).items():
            print(f"\n{args.group} = {value}")
            print(markdown(members, columns), end="")
    else:
        print(markdown(rows, columns), end="")
    for spec in args.pivot:
        print()
        print(pivot_markdown(rows, spec, args.agg), end="")
    print("wrote:")
    for path in paths:
        print(f"  {path}")
    for reason in skipped:
        print(f"  (skipped {reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
