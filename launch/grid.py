"""Expand a fine-tuning grid, plan each cell's GPU memory, render its files, and run or submit it.

    python launch/grid.py --models pythia-1.4b,mistral-7b --ranks 16,64 --dry-run
    python launch/grid.py --models pythia-tiny --ranks 4,8 --executor local
    python launch/grid.py --config sweeps/alpaca_lora.yaml --lrs 1e-4,3e-4

Data flow (one way): spec (flags / YAML) -> cells (launch/spec.py) -> plan (launch/plan.py)
-> render (launch/render.py: cell.yaml, ds_config.json, job.sbatch) -> submit (launch/submit.py).
Everything is validated before anything is written: bad input is one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from finetune import rundir  # noqa: E402
from finetune.config import ConfigError, RunConfig, coerce, did_you_mean  # noqa: E402
from launch import plan as planner  # noqa: E402
from launch import render, report  # noqa: E402
from launch.spec import AXES, EXECUTORS, TRAIN_KEYS, Resources, SweepSpec, expand, validate_resources  # noqa: E402

EXIT_BAD_INPUT = 2
RESOURCE_KEYS = tuple(f.name for f in dataclasses.fields(Resources))
# CLI flags for the sweep's fixed training settings (any other RunConfig field: --set KEY=VALUE).
TRAIN_FLAGS = ("micro_batch", "grad_accum", "seq_len", "max_steps", "epochs", "target_modules", "task",
               "grad_ckpt", "precision", "optimizer", "warmup", "weight_decay", "min_lr", "schedule",
               "wandb_mode", "eval_rows")


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="launch/grid.py", description=__doc__.split("\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="sweep YAML (command-line flags override it)")
    p.add_argument("--name", help="sweep name (default: from the config file, else 'sweep')")
    p.add_argument("--out", help="sweep directory (default runs/<name>)")
    p.add_argument("--dry-run", action="store_true", help="write and print everything, submit nothing")
    p.add_argument("--executor", choices=EXECUTORS, help="default: slurm when sbatch exists, else local")
    for axis in AXES:
        p.add_argument(f"--{axis}", help=f"comma list for the {axis} axis")
    for key in RESOURCE_KEYS:
        p.add_argument(f"--{key.replace('_', '-')}", dest=f"res_{key}", help=f"resources: {key}")
    for key in TRAIN_FLAGS:
        p.add_argument(f"--{key.replace('_', '-')}", dest=f"train_{key}", help=f"every cell's {key}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config field for every cell")
    p.add_argument("--python", default=sys.executable, help="interpreter the rendered jobs use")
    p.add_argument("--max-parallel", type=int, default=0, help="SLURM: at most this many array tasks at once")
    p.add_argument("--wait", action="store_true", help="SLURM: wait for the submitted cells, then report")
    p.add_argument("--rerun", default="", help="also re-run cells in these states, e.g. failed,oom,preempted")
    return p.parse_args(argv)


def _split(text: str) -> list:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def _typed_axis(axis: str, values: list) -> list:
    field = {"ranks": "rank", "lrs": "lr", "seeds": "seed"}.get(axis)
    return [coerce(field, v) for v in values] if field else [str(v) for v in values]


def build_spec(args) -> SweepSpec:
    data = {}
    if args.config:
        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read sweep config {args.config}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{args.config} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config} must hold a mapping of sweep keys")
        valid = ("name",) + AXES + ("train", "resources")
        for key in data:
            if key not in valid:
                raise ConfigError(f"unknown sweep key {key!r} in {args.config}{did_you_mean(key, valid)}")
    spec = SweepSpec(name=args.name or data.get("name") or "sweep")
    for axis in AXES:
        values = getattr(args, axis)
        values = _split(values) if values is not None else data.get(axis)
        if values is not None:
            values = values if isinstance(values, list) else [values]
            setattr(spec, axis, _typed_axis(axis, values))
    train = dict(data.get("train") or {})
    for key in TRAIN_FLAGS:
        if getattr(args, f"train_{key}") is not None:
            train[key] = getattr(args, f"train_{key}")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        train[key] = value
    for key in train:
        if key not in TRAIN_KEYS:
            raise ConfigError(f"unknown training key {key!r}{did_you_mean(key, TRAIN_KEYS)}")
    spec.train = {k: coerce(k, v) for k, v in train.items()}
    res = dict(data.get("resources") or {})
    for key in RESOURCE_KEYS:
        if getattr(args, f"res_{key}") is not None:
            res[key] = getattr(args, f"res_{key}")
    for key in res:
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"unknown resources key {key!r}{did_you_mean(key, RESOURCE_KEYS)}")
    defaults = Resources()
    typed = {}
    for key, value in res.items():
        kind = type(getattr(defaults, key))
        try:
            typed[key] = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not a valid {kind.__name__}") from None
    spec.resources = Resources(**typed)
    if spec.resources.gpu not in planner.GPU_PRESETS:
        raise ConfigError(f"unknown gpu preset {spec.resources.gpu!r}"
                          f"{did_you_mean(spec.resources.gpu, sorted(planner.GPU_PRESETS))}")
    if spec.resources.gpu == "cpu":
        spec.resources.gpus_per_node = 0
    validate_resources(spec.resources)
    return spec


def plan_cells(cells, resources: Resources) -> list:
    plans = []
    for cell in cells:
        kwargs = dict(gpu=resources.gpu, gpus=resources.world_size)
        if resources.zero == "auto":
            plans.append(planner.choose_zero(cell.run, offload=resources.offload, **kwargs))
        else:
            plans.append(planner.plan_cell(cell.run, zero=int(resources.zero), offload=resources.offload,
                                           **kwargs))
    return plans


def write_cell(cell, plan, cell_dir: Path, spec: SweepSpec, python: str) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "logs").mkdir(exist_ok=True)
    run = dict(cell.run, output_dir="", deepspeed="ds_config.json" if plan.zero > 0 else None)
    rundir.atomic_write_text(cell_dir / "cell.yaml", yaml.safe_dump(run, sort_keys=False))
    rundir.atomic_write_json(cell_dir / "ds_config.json", render.ds_config(plan.zero, plan.offload))
    rundir.atomic_write_json(cell_dir / "plan.json", plan.to_dict())
    text = render.sbatch(cell=cell, sweep=spec.name, run_dir=cell_dir.resolve(), plan=plan, python=python,
                         nproc_per_node=max(cell.resources.gpus_per_node, 1))
    rundir.atomic_write_text(cell_dir / "job.sbatch", text)
    (cell_dir / "job.sbatch").chmod(0o755)
    if not (cell_dir / rundir.STATUS_FILE).exists():
        rundir.write_status(cell_dir, "pending" if plan.fits else "predicted-oom")


def cells_csv(cells, plans) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "model", "method", "rank", "alpha", "lr", "dataset", "seed", "zero", "offload",
                     "peak_gib", "capacity_gib", "fits"])
    for c, p in zip(cells, plans):
        r = c.run
        writer.writerow([c.id, r["model"], r["method"], r["rank"], r["alpha"], r["lr"], r["dataset"], r["seed"],
                         p.zero, p.offload, f"{p.peak_gib:.2f}", f"{p.capacity_gib:.1f}", p.fits])
    return buf.getvalue()


def print_plan(cells, plans, resources: Resources) -> None:
    per_node = f"{resources.gpus_per_node} x {resources.gpu}" if resources.gpus_per_node else "cpu"
    print(f"{len(cells)} cells on {resources.nodes} node(s) x {per_node}")
    print(f"{'cell':58} {'zero':>4} {'GiB/GPU':>8}  fits")
    for c, p in zip(cells, plans):
        print(f"{c.id:58} {p.zero:>4} {p.peak_gib:8.1f}  {'yes' if p.fits else 'PREDICTED OOM'}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = build_spec(args)
        cells = expand(spec)
        plans = plan_cells(cells, spec.resources)
        out = Path(args.out or Path("runs") / spec.name)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output directory {out} is a file")
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"name": spec.name, **{a: getattr(spec, a) for a in AXES}, "train": spec.train,
                "resources": dataclasses.asdict(spec.resources)}
    rundir.atomic_write_text(out / "sweep.yaml", yaml.safe_dump(resolved, sort_keys=False))
    for cell, plan in zip(cells, plans):
        write_cell(cell, plan, out / cell.id, spec, args.python)
    rundir.atomic_write_text(out / "cells.csv", cells_csv(cells, plans))
    print_plan(cells, plans, spec.resources)
    rerun = set(_split(args.rerun))
    bad_states = rerun - set(rundir.STATES)
    todo = []
    for c, p in zip(cells, plans):
        state = rundir.read_status(out / c.id).get("state", "pending")
        if p.fits and (state in ("pending", "predicted-oom") or state in rerun):
            todo.append(out / c.id)
    if bad_states:
        print(f"error: --rerun takes states from {', '.join(rundir.STATES)}; got {', '.join(sorted(bad_states))}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print(f"dry run: wrote {len(cells)} cells to {out}; nothing submitted")
        return 0
    print(f"{len(todo)} cell(s) to run, {len(cells) - len(todo)} skipped (done, in flight or predicted OOM)")
    executor_name = args.executor or default_executor()
    if executor_name == "slurm":
        return submit_slurm(args, spec, out, todo)
    if executor_name != "local":
        print(f"error: executor {executor_name!r} is not available yet; use local or slurm", file=sys.stderr)
        return EXIT_BAD_INPUT
    from launch.submit import LocalExecutor
    LocalExecutor(python=args.python).submit(todo)
    return print_results(out)


def print_results(out: Path) -> int:
    rows = report.collect(out)
    report.write(out, rows)
    print(report.markdown(rows, ("cell", "model", "rank", "alpha", "lr", "status", "train_loss",
                                 "untrained_eval_loss", "eval_loss", "perplexity", "time_s")), end="")
    return 0 if all(r["status"] in ("done", "predicted-oom") for r in rows) else 1


def submit_slurm(args, spec: SweepSpec, out: Path, todo: list) -> int:
    from tqdm import tqdm

    from launch.submit import SlurmExecutor
    if not todo:
        return print_results(out)
    jobs = SlurmExecutor(out, spec.resources, python=args.python, max_parallel=args.max_parallel).submit(
        todo, job_name=spec.name)
    if not args.wait:
        print(f"submitted {len(jobs)} cell(s); follow with: python -m launch.report {out}")
        return 0
    for job in tqdm(jobs, desc="waiting", unit="cell"):
        try:
            job.result()
        except Exception:  # noqa: BLE001 - the cell's status.json and log say why; keep waiting for the rest
            pass
    return print_results(out)


if __name__ == "__main__":
    sys.exit(main())
