"""The report's and the probe's pictures: each function takes plain rows and returns a matplotlib Figure.

No pyplot and no global state: figures are `matplotlib.figure.Figure` objects drawn with the Agg
canvas, so they work headless, in threads and in tests (which check their lines and labels).
`save(fig, path)` writes a PNG. Every axis is labelled with its unit.

    eval_loss_vs(rows, "rank")   eval loss vs LoRA rank, one line per model (also "lr", "train_rows")
    loss_curves(rows)            training loss (lines) and eval loss (markers) per cell, from metrics history
    throughput_memory(rows)      tokens per second and peak memory per cell (bars)
    oom_map(map_rows, axis)      models x micro batch (or sequence length): measured fits / OOM markers,
                                 the measured boundary and the planner's predicted one
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

X_LABELS = {
    "rank": "LoRA rank r",
    "lr": "peak learning rate",
    "train_rows": "training examples (data-size tier)",
    "micro_batch": "micro batch per GPU (examples)",
    "seq_len": "sequence length (tokens)",
}
LOG_X = {"rank", "lr", "train_rows", "micro_batch", "seq_len"}


def save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)  # atomic, like every file of a run directory
    return path


# Beyond this a value is damage, not data (a step of 1e308): matplotlib's axis arithmetic overflows on it.
PLOT_LIMIT = 1e30


def _num(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and abs(out) <= PLOT_LIMIT else None


def _log2_axis(ax, values) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    if ticks and len(ticks) <= 12:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])


def eval_loss_vs(rows: list[dict], x: str, *, line_by: str = "model", y: str = "eval_loss") -> Figure:
    """Eval loss against `x` (rank | lr | train_rows), one line per `line_by` value. Cells that differ
    in other settings at the same x are reduced to the best (lowest) loss, and the title says so."""
    points: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        xv, yv = _num(r.get(x)), _num(r.get(y))
        if xv is None or yv is None or (x in LOG_X and xv <= 0):  # a log axis takes positive values only
            continue
        points[str(r.get(line_by))][xv].append(yv)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    reduced = False
    all_x = []
    for name in sorted(points):
        xs = sorted(points[name])
        ys = [min(points[name][v]) for v in xs]
        reduced |= any(len(points[name][v]) > 1 for v in xs)
        all_x += xs
        ax.plot(xs, ys, marker="o", label=name)
    if x in ("rank", "micro_batch", "seq_len"):
        _log2_axis(ax, all_x)
    elif x in LOG_X:
        ax.set_xscale("log")
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel("eval loss (nats per token)")
    title = f"eval loss vs {X_LABELS.get(x, x)}"
    ax.set_title(title + (" (best cell per point)" if reduced else ""), fontsize=10)
    if points:
        ax.legend(title=line_by, fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def history_points(history) -> tuple[list, list]:
    """([(step, train loss)], [(step, eval loss)]) from a metrics.json `history` (Trainer log history)."""
    train, evals = [], []
    if not isinstance(history, list):
        return train, evals
    for h in history:
        if not isinstance(h, dict):
            continue
        step = _num(h.get("step"))
        if step is None:
            continue
        if _num(h.get("loss")) is not None:
            train.append((step, _num(h["loss"])))
        if _num(h.get("eval_loss")) is not None:
            evals.append((step, _num(h["eval_loss"])))
    return train, evals


def loss_curves(rows: list[dict], *, label_key: str = "label") -> Figure:
    """One training-loss line per cell with a logged history; its eval losses as markers of the same colour."""
    fig = Figure(figsize=(7.2, 4.6))
    ax = fig.add_subplot()
    drawn = 0
    for r in rows:
        train, evals = history_points(r.get("history"))
        if not train:
            continue
        line, = ax.plot([s for s, _ in train], [v for _, v in train], label=str(r.get(label_key) or r.get("cell")))
        if evals:
            ax.scatter([s for s, _ in evals], [v for _, v in evals], color=line.get_color(), marker="s", s=18,
                       zorder=3)
        drawn += 1
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("training loss (lines) and eval loss (squares) per cell", fontsize=10)
    if drawn:
        ax.legend(fontsize=7, ncol=1 if drawn <= 8 else 2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def throughput_memory(rows: list[dict], *, label_key: str = "label") -> Figure:
    """Two bar charts, one bar per cell: training throughput and peak memory."""
    cells = [r for r in rows if _num(r.get("tokens_per_second")) is not None or _num(r.get("peak_gib")) is not None]
    labels = [str(r.get(label_key) or r.get("cell")) for r in cells]
    kinds = {str(r.get("peak_kind")) for r in cells if r.get("peak_kind")}
    fig = Figure(figsize=(max(6.4, 0.5 * len(cells) + 3), 6.0))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    pos = list(range(len(cells)))
    ax1.bar(pos, [_num(r.get("tokens_per_second")) or 0.0 for r in cells], color="tab:blue")
    ax1.set_ylabel("throughput (tokens/s)")
    ax1.set_title("training throughput and peak memory per cell", fontsize=10)
    ax2.bar(pos, [_num(r.get("peak_gib")) or 0.0 for r in cells], color="tab:orange")
    what = {"cuda_max_allocated": "GPU max allocated", "cpu_max_rss": "CPU max RSS"}
    ax2.set_ylabel("peak memory (GiB" + (", " + ", ".join(what.get(k, k) for k in sorted(kinds)) if kinds else "")
                   + ")")
    ax2.set_xticks(pos)
    ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax2.set_xlabel("cell")
    for ax in (ax1, ax2):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def oom_map(rows: list[dict], axis: str = "micro_batch", *, title: str = "OOM boundary") -> Figure:
    """rows: [{label, fits: [values], oom: [values], measured: value|None, predicted: value|None}]
    (launch.probe.map_rows). One row per model setting: green circles fit, red crosses ran out of
    memory, a black bar marks the measured boundary (between the largest value that fits and the
    next one tried) and a dashed blue step line the planner's predicted boundary (0: nothing fits)."""
    fig = Figure(figsize=(8.0, 1.6 + 0.6 * max(len(rows), 1)))
    ax = fig.add_subplot()
    measured_x = [v for r in rows for v in list(r.get("fits", ())) + list(r.get("oom", ()))]
    lo, hi = (min(measured_x), max(measured_x)) if measured_x else (1, 2)
    span_lo, span_hi = lo / 1.6, hi * 1.6
    for key, marker, color, size, text in (("fits", "o", "tab:green", 40, "fits (measured)"),
                                           ("oom", "x", "tab:red", 50, "OOM (measured)")):
        xs = [v for r in rows for v in r.get(key, ())]
        ys = [i for i, r in enumerate(rows) for _ in r.get(key, ())]
        ax.scatter(xs, ys, marker=marker, color=color, s=size, label=text, zorder=3)
    labelled = False
    for i, r in enumerate(rows):
        m = r.get("measured")
        if m is None:
            continue
        above = [v for v in r.get("oom", ()) if v > m]
        edge = math.sqrt(m * min(above)) if above else m * 1.15
        ax.plot([edge, edge], [i - 0.32, i + 0.32], color="black", lw=2.5, zorder=2,
                label=None if labelled else "measured boundary")
        ax.annotate(f"{m:g}{'' if above else '+'}", (edge, i + 0.32), textcoords="offset points", xytext=(0, 2),
                    ha="center", fontsize=7)
        labelled = True
    pred = [(i, r["predicted"]) for i, r in enumerate(rows) if r.get("predicted") is not None]
    if pred:
        px, py = [], []
        for i, p in pred:     # a step: vertical in each row, horizontal between rows
            x = min(max(p + 0.5 if p >= 1 else span_lo, span_lo), span_hi)
            px += [x, x]
            py += [i - 0.5, i + 0.5]
            ax.annotate(f"planner {p:g}" if p >= 1 else "planner: none fits", (x, i - 0.45), fontsize=7,
                        color="tab:blue", textcoords="offset points", xytext=(3, 0), va="bottom")
        ax.plot(px, py, color="tab:blue", ls="--", lw=1.5, label="planner's predicted boundary", zorder=1)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(span_lo / 1.1, span_hi * 1.1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r.get("label")) for r in rows], fontsize=8)
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_xlabel(X_LABELS.get(axis, axis) + ", log scale")
    ax.set_ylabel("model setting")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=4, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
