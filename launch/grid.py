"""Expand a fine-tuning grid, plan each cell's GPU memory, render its files, and run or submit it.

    python launch/grid.py --models pythia-1.4b,mistral-7b --ranks 16,64 --dry-run
    python launch/grid.py --models pythia-tiny --ranks 4,8 --executor local --gpu cpu
    python launch/grid.py --config sweeps/alpaca_lora.yaml --lrs 1e-4,3e-4
    python launch/grid.py --config sweep.yaml --executor hostfile --hostfile hosts.txt --dry-run
    python launch/grid.py --status runs/<sweep>                # counts per state, failing cells' log tails
    python launch/grid.py --config runs/<sweep>/sweep.yaml --rerun failed,oom

Data flow (one way): spec (flags / YAML) -> cells (launch/spec.py) -> plan (launch/plan.py)
-> render (launch/render.py: cell.yaml, ds_config.json, job.sbatch) -> submit (launch/submit.py).
Everything is validated before anything is written: bad input is one `error:` line and exit code 2.
Cells predicted not to fit are listed as PREDICTED OOM and not run unless --submit-oom.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import shutil
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from ftgrid.cli import CliParser  # noqa: E402
from ftgrid import validate  # noqa: E402
from ftgrid import rundir  # noqa: E402
from ftgrid.errors import ConfigError, did_you_mean, one_line  # noqa: E402
from ftgrid.schema import coerce  # noqa: E402
from ftgrid.yamlio import load_yaml_text, read_yaml_mapping  # noqa: E402
from ftgrid.launch import plan as planner  # noqa: E402
from ftgrid.launch import render, report, timing  # noqa: E402
from ftgrid.launch.submit import SubmitRefused  # noqa: E402
from ftgrid.launch.spec import MAX_CELLS  # noqa: E402
from ftgrid.launch.spec import (AXES, EXECUTORS, RESOURCE_SCALARS, RULE_KEYS, TRAIN_KEYS, Resources, SweepSpec, expand,  # noqa: E402
                         IDENTITY_RESOURCES, parse_bool, refit_cell, parse_hostfile, parse_int, to_yaml_dict, typed_axes,
                         typed_axis, validate_output_dir, validate_python, validate_sweep_name)

EXIT_BAD_INPUT = 2
LOCK_FILE = ".grid.lock"  # held while a grid.py writes the sweep and takes its cells
# CLI flags for the sweep's fixed training settings (any other RunConfig field: --set KEY=VALUE).
TRAIN_FLAGS = ("micro_batch", "grad_accum", "seq_len", "max_steps", "epochs", "target_modules", "grad_ckpt",
               "precision", "optimizer", "warmup", "weight_decay", "min_lr", "schedule", "wandb_mode", "eval_rows")
SWEEP_KEYS = ("name",) + AXES + ("axes", "train", "resources", "setup", "sbatch", "container", "zip", "include",
                                 "exclude", "fix_oom")
LIST_KEYS = ("setup", "sbatch", "zip", "include", "exclude")
RESOURCE_INTS = ("nodes", "gpus_per_node", "cpus_per_task")
# Run-config fields the memory plan does not read: cells differing only in these share one plan.
PLAN_IRRELEVANT = ("name", "lr", "min_lr", "seed", "dataset", "wandb_group", "wandb_project", "wandb_mode",
                   "epochs", "max_steps", "warmup", "schedule", "weight_decay", "eval_rows", "eval_every",
                   "logging_steps", "max_grad_norm", "template", "prompt", "columns", "generate_prompts")


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


def parse_args(argv):
    p = CliParser(prog="launch/grid.py", description=__doc__.split("\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="sweep YAML (command-line flags override it)")
    p.add_argument("--name", help="sweep name (default: from the config file, else 'sweep')")
    p.add_argument("--out", help="sweep directory (default runs/<name>)")
    p.add_argument("--status", metavar="SWEEP_DIR", help="show a sweep's state (status.json + sacct) and exit")
    p.add_argument("--dry-run", action="store_true", help="write and print everything, submit nothing")
    p.add_argument("--executor", choices=EXECUTORS, help="default: slurm when sbatch exists, else local")
    p.add_argument("--hostfile", help="`HOST slots=N` lines: servers without SLURM (implies --executor hostfile)")
    for axis in AXES:
        p.add_argument(f"--{axis}", help=f"comma list for the {axis} axis")
    p.add_argument("--sweep", action="append", default=None, metavar="KEY=V1,V2",
                   help="any run-config key as an axis, e.g. --sweep warmup=0,0.1 (repeatable; YAML axes:)")
    p.add_argument("--generate", metavar="PROMPTS.jsonl",
                   help="after training, every cell writes generations.jsonl from these prompts (greedy)")
    p.add_argument("--columns", metavar="LAYOUT=SOURCE,...",
                   help="rename dataset columns to a known layout, e.g. instruction=Input,output=Output")
    p.add_argument("--force", action="store_true",
                   help="write into an --out that holds a different grid (cells.csv rows merge by cell id)")
    p.add_argument("--zip", action="append", default=None, metavar="AXIS,AXIS",
                   help="axes that move together instead of a product, e.g. ranks,alphas (repeatable)")
    p.add_argument("--include", action="append", default=None, metavar="KEY=V[,KEY=V]",
                   help="keep only cells matching one such rule, e.g. model=pythia-1.4b,method=lora")
    p.add_argument("--exclude", action="append", default=None, metavar="KEY=V[,KEY=V]",
                   help="drop cells matching a rule, e.g. model=mixtral-8x7b,method=full")
    for key in RESOURCE_SCALARS:
        flag = f"--{key.replace('_', '-')}"
        if key == "exclusive":
            p.add_argument(flag, dest="res_exclusive", action="store_const", const=True, help="SLURM --exclusive")
        else:
            p.add_argument(flag, dest=f"res_{key}", metavar=key.upper(), help=f"resources: {key}")
    p.add_argument("--setup", action="append", default=None, metavar="LINE",
                   help="a shell line run before the launcher, verbatim (module load ..., source ...)")
    p.add_argument("--sbatch", action="append", default=None, metavar="--KEY=VALUE",
                   help="an extra #SBATCH option, e.g. --sbatch=--mail-type=END (repeatable)")
    p.add_argument("--container", action="append", default=None, metavar="KEY=VALUE",
                   help="a pyxis srun flag, e.g. image=nvcr.io/nvidia/pytorch:24.05-py3 (repeatable)")
    for key in TRAIN_FLAGS:
        p.add_argument(f"--{key.replace('_', '-')}", dest=f"train_{key}", metavar=key.upper(),
                       help=f"every cell's {key}")
    p.add_argument("--global-batch", dest="train_global_batch", metavar="N",
                   help="target global batch: grad_accum = N / (micro_batch x nodes x GPUs per node)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config field for every cell")
    p.add_argument("--python", default=sys.executable, help="interpreter the rendered jobs use")
    p.add_argument("--max-parallel", type=validate.arg_int(0, 10**6), default=0,
                   help="SLURM: at most this many array tasks at once (0 = no limit)")
    p.add_argument("--max-cells", type=validate.arg_int(1, 10**9), default=MAX_CELLS,
                   help=f"refuse a grid of more cells than this (default {MAX_CELLS})")
    p.add_argument("--wait", action="store_true", help="SLURM: wait for the submitted cells, then report")
    p.add_argument("--rerun", default="", help="also re-run cells in these states, e.g. failed,oom,preempted")
    p.add_argument("--submit-oom", action="store_true", help="also run cells predicted not to fit")
    p.add_argument("--fix-oom", action="store_true", default=None,
                   help="apply the planner's cheapest fix to predicted-OOM cells (YAML fix_oom: true)")
    return p.parse_args(argv)


def _split(text: str) -> list:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def _pairs(items: list, what: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _rule(text: str) -> dict:
    """`model=a,method=full` -> {model: a, method: full}; a key given twice takes a list."""
    rule = {}
    for item in _split(text):
        ((key, value),) = _pairs([item], "an --include/--exclude rule").items()
        rule.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in rule.items()}


def _load_config(path: str) -> dict:
    data = read_yaml_mapping(path, "sweep config")
    check_shapes(data, path)
    return data


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float)) and value is not None


def _names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# The type of every sweep-file key (axes are scalars or lists of scalars): checked before any value is
# read, so `train: [1, 2]` or `sbatch: [null]` is one line instead of a crash or `#SBATCH --None`.
SHAPES = {
    "name": (_scalar, "a name"),
    "train": (lambda v: isinstance(v, dict), "a mapping of run-config keys, e.g. {seq_len: 512}"),
    "resources": (lambda v: isinstance(v, dict) and all(_scalar(x) for x in v.values()),
                  "a mapping of single values, e.g. {gpu: a100-80gb, nodes: 2}"),
    "axes": (lambda v: isinstance(v, dict), "a mapping of run-config keys to value lists, e.g. {warmup: [0, 0.1]}"),
    "setup": (_names, "a list of shell lines (text)"),
    "sbatch": (_names, "a list of #SBATCH options (text), e.g. [--mail-type=END]"),
    "container": (lambda v: isinstance(v, dict) and all(_scalar(x) for x in v.values()),
                  "a mapping of pyxis flags to single values, e.g. {image: nvcr.io/nvidia/pytorch:24.05-py3}"),
    "zip": (lambda v: _names(v) or (isinstance(v, list) and all(_names(g) for g in v)),
            "a list of axis names (or a list of such lists), e.g. [ranks, alphas]"),
    "include": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of rules like [{model: mixtral-8x7b, method: full}]"),
    "exclude": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of rules like [{model: mixtral-8x7b, method: full}]"),
    **{axis: (lambda v: _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v)),
              "a value or a list of values") for axis in AXES},
    "models": (lambda v: _scalar(v) or (isinstance(v, list) and all(
        _scalar(x) or (isinstance(x, dict) and all(_scalar(y) for y in x.values())) for x in v)),
        "a model or a list of models (a registry name, a folder, a hub id, or {name: NAME, weights: DIR})"),
}


def check_shapes(data: dict, source: str) -> None:
    """Every known key of a sweep file holds the type it takes (None = not given)."""
    for key, value in data.items():
        if key in SHAPES and value is not None and not SHAPES[key][0](value):
            shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
            raise ConfigError(f"{key} in {source} takes {SHAPES[key][1]}, got {shown}")


def _unknown(keys, valid, what: str, where: str = "") -> list[str]:
    return [f"unknown {what} key {k!r}{where}{did_you_mean(k, valid)}" for k in keys if k not in valid]


def _resource_value(key: str, value):
    if key == "exclusive":
        return parse_bool(key, value)
    return parse_int(key, value) if key in RESOURCE_INTS else str(value)


def build_spec(args) -> SweepSpec:
    data = _load_config(args.config) if args.config else {}
    problems = _unknown(data, SWEEP_KEYS, "sweep", f" in {args.config}")
    for key in LIST_KEYS:
        if key in data and not isinstance(data[key], list):
            raise ConfigError(f"{key} in {args.config} takes a list")
    spec = SweepSpec(name=validate_sweep_name(str(args.name or data.get("name") or "sweep")))
    for axis in AXES:
        values = getattr(args, axis)
        values = _split(values) if values is not None else data.get(axis)
        if values is not None:
            setattr(spec, axis, typed_axis(axis, values if isinstance(values, list) else [values]))
    train = dict(data.get("train") or {})
    train.update({k: getattr(args, f"train_{k}") for k in TRAIN_FLAGS + ("global_batch",)
                  if getattr(args, f"train_{k}") is not None})
    train.update(_pairs(args.set, "--set"))
    if args.generate:  # a post-step of every cell: train.py writes generations.jsonl (absolute: jobs run elsewhere)
        train["generate_prompts"] = str(Path(args.generate).resolve())
    if args.columns is not None:
        train["columns"] = args.columns
    global_batch = train.pop("global_batch", None)
    for key in train:
        if key in RULE_KEYS:
            problems.append(f"training key {key!r} is an axis: use {key}s")
        else:
            problems += _unknown([key], TRAIN_KEYS, "training")
    res = dict(data.get("resources") or {})
    res.update({k: getattr(args, f"res_{k}") for k in RESOURCE_SCALARS if getattr(args, f"res_{k}") is not None})
    problems += _unknown(res, RESOURCE_SCALARS, "resources")
    if problems:
        raise ConfigError(" | ".join(problems))
    spec.train = {k: coerce(k, v) for k, v in train.items()}
    if global_batch is not None:
        spec.global_batch = parse_int("global_batch", global_batch)
    if args.sweep is not None:  # the command line's axes replace the file's
        spec.axes = {key: _split(value) for key, value in _pairs(args.sweep, "--sweep").items()}
    else:
        spec.axes = data.get("axes") or {}
    spec.axes = typed_axes(spec.axes)
    spec.fix_oom = parse_bool("fix_oom", args.fix_oom if args.fix_oom is not None else data.get("fix_oom") or False)
    for key in ("zip", "include", "exclude"):
        cli = getattr(args, key)
        parse = _split if key == "zip" else _rule
        setattr(spec, key, [parse(v) for v in cli] if cli is not None else list(data.get(key) or []))
    typed = {k: _resource_value(k, v) for k, v in res.items()}
    typed["setup"] = tuple(args.setup if args.setup is not None else data.get("setup") or ())
    typed["sbatch"] = tuple(args.sbatch if args.sbatch is not None else data.get("sbatch") or ())
    container = _pairs(args.container, "--container") if args.container is not None else data.get("container") or {}
    if not isinstance(container, dict):
        raise ConfigError("container takes a mapping of pyxis flags, e.g. {image: nvcr.io/nvidia/pytorch:24.05-py3}")
    typed["container"] = dict(container)
    spec.resources = Resources(**typed)
    if spec.resources.gpu not in planner.GPU_PRESETS:
        raise ConfigError(f"unknown gpu preset {spec.resources.gpu!r}"
                          f"{did_you_mean(spec.resources.gpu, sorted(planner.GPU_PRESETS))}")
    if spec.resources.gpu == "cpu":
        spec.resources.gpus_per_node = 0
    return spec


def resolve_executor(args, spec: SweepSpec) -> tuple[str, tuple]:
    """The executor's name and, for `hostfile`, the validated hosts (which set nodes x GPUs per node)."""
    name = args.executor or ("hostfile" if args.hostfile else default_executor())
    if name == "debug":
        raise ConfigError("executor 'debug' is not available; use local, slurm or hostfile")
    if args.hostfile and name != "hostfile":
        raise ConfigError(f"--hostfile is for --executor hostfile, not {name!r}")
    if name != "hostfile":
        return name, ()
    if not args.hostfile:
        raise ConfigError("--executor hostfile needs --hostfile FILE (`HOST slots=N` lines)")
    try:
        text = Path(args.hostfile).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read hostfile {args.hostfile}: {e.strerror}") from None
    hosts = parse_hostfile(text, args.hostfile)
    res = spec.resources
    for key, value in (("nodes", len(hosts)), ("gpus_per_node", hosts[0][1])):
        asked = getattr(args, f"res_{key}")
        if asked is not None and int(asked) != value:
            raise ConfigError(f"--{key.replace('_', '-')} {asked} disagrees with {args.hostfile} ({value})")
        setattr(res, key, value)
    return name, hosts


def plan_cells(cells, resources: Resources) -> list:
    """One plan per cell; cells that differ only in what memory does not depend on share one."""
    plans, cache = [], {}
    for cell in cells:
        key = repr(sorted((k, v) for k, v in cell.run.items() if k not in PLAN_IRRELEVANT))
        if key not in cache:
            cache[key] = plan_run(cell.run, resources)
        plans.append(cache[key])
    return plans


def plan_run(run: dict, resources: Resources):
    """One run's memory plan on these resources (--zero auto: the lowest stage, then offload, that fits)."""
    kwargs = dict(gpu=resources.gpu, gpus=resources.world_size, offload=resources.offload)
    if resources.zero == "auto":
        return planner.choose_zero(run, **kwargs)
    return planner.plan_cell(run, zero=int(resources.zero), **kwargs)


# ---------------------------------------------------------------------------------------------
# writing


def write_if_changed(path: Path, text: str, executable: bool = False) -> None:
    """Atomic (temp file + rename) but without fsync: rendered files are re-made from the spec on every
    run (a re-run rewrites any file whose text differs, so a crash cannot leave a wrong one for long),
    and flushing 50k files to disk takes minutes on a slow disk."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # unique per writer
    _write_file(str(tmp), text, executable)
    os.replace(tmp, path)


def _write_file(path: str, text: str, executable: bool = False) -> None:
    # os.open with the mode: no chmod, and none of open()'s tty and seek probes (a 10k-cell sweep
    # makes 30k files, so each system call per file counts)
    data = memoryview(text.encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755 if executable else 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


STAGING = ".staging"  # a new cell's folder is filled here, then renamed into the sweep whole


def write_new_cell(staging: Path, cell_dir: Path, files: dict, plan) -> None:
    """A cell folder that did not exist, made atomically at once: its files are written in a staging
    folder (two levels down, so `*/cell.yaml` never sees it) and the folder is renamed into place, one
    rename instead of one per file. A reader sees no folder or the complete one."""
    tmp = staging / cell_dir.name
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)  # left by an interrupted run
    os.makedirs(tmp / "logs")
    for name, text in files.items():
        _write_file(f"{tmp}/{name}", text, executable=name in render.EXECUTABLE)
    if not plan.fits:
        _mark_predicted_oom(tmp, plan, fsync=False)  # re-made by update_cell on a re-run if lost
    os.rename(tmp, cell_dir)


def update_cell(cell_dir: Path, files: dict, plan) -> None:
    """A cell folder of an earlier run: only files whose text changed are replaced; status.json is kept."""
    (cell_dir / "logs").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_if_changed(cell_dir / name, text, executable=name in render.EXECUTABLE)
    if not plan.fits and not (cell_dir / rundir.STATUS_FILE).exists():
        _mark_predicted_oom(cell_dir, plan)


def _mark_predicted_oom(cell_dir: Path, plan, fsync: bool = True) -> None:
    rundir.write_status(cell_dir, "predicted-oom", fsync=fsync, peak_gib=plan.peak_gib,
                        capacity_gib=plan.capacity_gib)


def write_sweep(out: Path, spec: SweepSpec, cells, plans, ctx: render.Context, hosts_text: str = "",
                previous_csv: str = "") -> set[str]:
    """Every cell's files (new cell folders whole, earlier ones file by file), then sweep.yaml and
    cells.csv (those two fsync'd). Returns the ids of the cell folders it created."""
    out.mkdir(parents=True, exist_ok=True)
    if hosts_text:
        rundir.atomic_write_text(out / render.HOSTFILE, hosts_text)
    root = out.resolve()
    existing, staging = set(os.listdir(root)), root / STAGING
    created = set()
    for cell, plan in zip(cells, plans):
        cell_dir = root / cell.id
        files = render.cell_files(cell, plan, cell_dir, ctx)
        if cell.id in existing:
            update_cell(cell_dir, files, plan)
        else:
            write_new_cell(staging, cell_dir, files, plan)
            created.add(cell.id)
        # A cell without status.json is pending (ftgrid.rundir.read_status): 10k fsync'd files for
        # a fresh sweep would cost a minute and say nothing new.
    shutil.rmtree(staging, ignore_errors=True)
    # sweep.yaml last (with cells.csv): a folder that has one holds every cell it describes
    sweep = to_yaml_dict(spec)
    if ctx.time_predicted:  # a predicted limit is predicted again when the sweep file is fed back
        sweep["resources"].pop("time", None)
    rundir.atomic_write_text(out / "sweep.yaml", yaml.safe_dump(sweep, sort_keys=False))
    rundir.atomic_write_text(out / "cells.csv", cells_csv(cells, plans, previous_csv))
    return created


def cells_csv(cells, plans, previous: str = "") -> str:
    """One row per cell; swept run-config keys (axes:) get a column each. `previous` (an older cells.csv
    of the same folder, --force) keeps its rows of cells this grid does not hold: merged by cell id."""
    swept = list(dict.fromkeys(k for c in cells for k, _ in c.params if k not in RULE_KEYS))
    header = ["id", "model", "method", "rank", "alpha", "lr", "dataset", "task", "seed", *swept, "zero", "offload",
              "peak_gib", "capacity_gib", "fits"]
    rows = []
    for c, p in zip(cells, plans):
        r = c.run
        rows.append(dict(id=c.id, **{k: r[k] for k in header[1:9]}, **{k: _csv_value(r[k]) for k in swept},
                         zero=p.zero, offload=p.offload, peak_gib=f"{p.peak_gib:.2f}",
                         capacity_gib=f"{p.capacity_gib:.1f}", fits=p.fits))
    if previous:
        old = csv.DictReader(io.StringIO(previous))
        header += [k for k in old.fieldnames or () if k not in header]
        mine = {row["id"] for row in rows}
        rows += [row for row in old if row.get("id") not in mine]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _csv_value(value):
    return ";".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


# sweep.yaml keys that decide which cells a grid holds; queue, time limit and set-up lines may change
# between runs of the same grid (a re-run with more time is the same grid).
GRID_KEYS = ("name",) + AXES + ("axes", "train", "zip", "include", "exclude")


def grid_identity(data: dict) -> dict:
    res = data.get("resources") or {}
    return {**{k: data.get(k) or None for k in GRID_KEYS}, "resources": {k: res.get(k) for k in IDENTITY_RESOURCES}}


def check_out_dir(out: Path, spec: SweepSpec, force: bool) -> str:
    """The existing cells.csv to merge ("" for none). One folder describes one grid: with axes a whole
    study is one grid, so a second, different grid aimed at the same --out is most often a wrong --out,
    and replacing sweep.yaml and cells.csv would silently lose the first grid's description. It is
    refused unless --force; then the cells.csv rows merge by cell id (cell folders are never removed)
    and sweep.yaml describes the latest grid."""
    old_path = out / "sweep.yaml"
    if not old_path.is_file():
        return ""
    try:
        old = read_yaml_mapping(old_path, "sweep")
    except ConfigError:  # a damaged sweep.yaml describes no grid: treat it as a different one
        old = {}
    new = load_yaml_text(yaml.safe_dump(to_yaml_dict(spec), sort_keys=False))
    if isinstance(old, dict) and grid_identity(old) == grid_identity(new):
        return ""
    if not force:
        raise ConfigError(f"{out} holds a different grid (its sweep.yaml); use another --out, or --force to add "
                          f"this grid's cells there (cells.csv rows merge by cell id)")
    try:
        return (out / "cells.csv").read_text()
    except OSError:
        return ""


def oom_fix(cell, plan, resources: Resources, max_gpus: int = 64):
    """The planner's cheapest fix for a predicted-OOM cell (planner.suggest_fix), or None."""
    return planner.suggest_fix(cell.run, gpu=resources.gpu, gpus=resources.world_size, zero=plan.zero,
                               offload=plan.offload, gpus_per_node=resources.gpus_per_node or None,
                               max_gpus=max_gpus)


def fixed_resources(resources: Resources, fix) -> Resources:
    """A fixed cell's own resources: its ZeRO stage and offload, and more GPUs where the fix asks for them
    (a one-node sweep fills its node first, up to 8 GPUs; a multi-node sweep adds nodes)."""
    if not fix.resources:
        return resources
    gpus, per_node = fix.resources["gpus"], resources.gpus_per_node
    if resources.nodes == 1 and per_node:   # (CPU runs: one process per node, more nodes)
        per_node = max(d for d in range(1, max(8, per_node) + 1) if gpus % d == 0)
    return dataclasses.replace(resources, zero=str(fix.resources["zero"]), offload=fix.resources["offload"],
                               nodes=gpus // max(per_node, 1), gpus_per_node=per_node)


def fix_oom_cells(cells, plans, resources: Resources, max_gpus: int = 64):
    """--fix-oom: every predicted-OOM cell with its fix applied (run-config changes in its run, resource
    changes in its own resources; launch.spec.refit_cell gives it the id of what it now trains) and
    planned again. Cells no fix helps stay as they are. A fixed cell equal to another cell of the grid is
    that cell. Returns (cells, plans, {fixed cell id: (what changed, [the ids it replaces]})."""
    out, fixed, done = {}, {}, {}  # done: plan -> (fix, resources, plan) (cells sharing a plan share a fix)
    for c, p in zip(cells, plans):
        if not p.fits:
            if id(p) not in done:
                fix = oom_fix(c, p, resources, max_gpus)
                res = fixed_resources(resources, fix) if fix else resources
                done[id(p)] = (fix, res, None)
            fix, res, new_plan = done[id(p)]
            if fix:
                old = c.id
                c = refit_cell(c, fix.run, res)
                if new_plan is None:
                    new_plan = plan_run(c.run, res)
                    done[id(p)] = (fix, res, new_plan)
                p = new_plan
                fixed.setdefault(c.id, (fix.text, []))[1].append(old)
        out.setdefault(c.id, (c, p))
    kept = [dataclasses.replace(c, index=i) for i, (c, _) in enumerate(out.values())]
    return kept, [p for _, p in out.values()], fixed


def print_plan(cells, plans, resources: Resources, fixed: dict | None = None, estimates=None) -> None:
    per_node = f"{resources.gpus_per_node} x {resources.gpu}" if resources.gpus_per_node else "cpu"
    print(f"{len(cells)} cells on {resources.nodes} node(s) x {per_node}")
    print(f"{'cell':58} {'lr':>7} {'zero':>4} {'GiB/GPU':>8} {'time':>7}  fits")
    fixes = {}  # cells that share a plan share its fix
    estimates = estimates or [None] * len(cells)
    for c, p, e in zip(cells, plans, estimates):
        hours = f"{timing.duration_text(e.hours) if e else '?':>7}"
        print(f"{c.id:58} {c.run['lr']:>7.1e} {p.zero:>4} {p.peak_gib:8.1f} {hours}  "
              f"{'yes' if p.fits else 'PREDICTED OOM'}")
        if c.id in (fixed or {}):
            text, was = fixed[c.id]
            print(f"{'':58}   fixed (--fix-oom): {text}; was {', '.join(was)}")
        if not p.fits:
            fix = fixes.setdefault(id(p), oom_fix(c, p, resources))
            print(f"{'':58}   fits with: {fix.text if fix else 'nothing up to 64 GPUs'}")
    known = [e for e in estimates if e]
    if known:
        print(f"predicted: {sum(e.gpu_hours for e in known):.3g} GPU-hours for the sweep"
              + (f" ({len(cells) - len(known)} cell(s) unknown: dataset size)" if len(known) < len(cells) else "")
              + f", {timing.duration_text(sum(e.hours for e in known))} of cells; throughput: {known[0].source}")
    # each cell against its own array's limit (cells fixed by --fix-oom run in arrays of their own)
    short = [(c.resources.time, e) for c, e in zip(cells, estimates)
             if e and timing.time_warning(c.resources.time, [e])]
    time_warning = timing.time_warning(short[0][0], [e for _, e in short]) if short else None
    for warning in (planner.mem_warning(resources.mem, plans), time_warning):
        if warning:
            print(warning)
    # A compute node may see folders this machine does not: train.py checks them where the cell runs.
    for folder in sorted({c.run["weights"] for c in cells if c.run.get("weights")}):
        if not os.path.exists(folder):
            print(f"warning: weights folder {folder} is not visible here; the cells using it check it when they start")


def print_hostfile_commands(cell_dirs, hosts) -> None:
    for d in cell_dirs:
        print(f"{d.name}:\n  bash {d.resolve() / 'run_deepspeed.sh'}")
        for rank, (host, _) in enumerate(hosts):
            print(f"  on {host}: bash {d.resolve() / 'run_torchrun.sh'} {rank}")


# ---------------------------------------------------------------------------------------------
# status


def show_status(out: Path) -> int:
    from ftgrid.launch import submit
    cell_dirs = report.cell_dirs(out)
    if not cell_dirs:
        print(f"error: {one_line(out)} holds no cells (no */cell.yaml)", file=sys.stderr)
        return EXIT_BAD_INPUT
    statuses = submit.refresh(cell_dirs)
    counts = {}
    for s in statuses.values():
        counts[s.get("state", "pending")] = counts.get(s.get("state", "pending"), 0) + 1
    order = [s for s in rundir.STATES if s in counts]
    print(f"{out}: {len(cell_dirs)} cell(s): " + ", ".join(f"{s} {counts[s]}" for s in order))
    held = {d: s for d, s in statuses.items() if s.get("state") in submit.IN_FLIGHT}
    if held:
        slurm = {}
        for s in held.values():
            slurm[s.get("slurm_state") or "?"] = slurm.get(s.get("slurm_state") or "?", 0) + 1
        print("in flight, by SLURM state: " + ", ".join(f"{k} {v}" for k, v in sorted(slurm.items())))
    bad = [(d, s) for d, s in statuses.items() if s.get("state") in ("failed", "oom", "preempted", "damaged")]
    for d, s in bad:
        job = submit._job_id(s)
        print(f"\n{s['state'].upper()} {d.name}" + (f"  (job {job})" if job else ""))
        if s.get("error"):
            print(f"  error: {str(s['error']).splitlines()[0][:300]}")
        tail = s.get("log_tail") or submit.log_tail(submit.last_log(d))
        for line in tail.splitlines():
            print(f"  | {line}")
    if bad:
        states = ",".join(sorted({s["state"] for _, s in bad}))
        print(f"\nre-run them: python launch/grid.py --config {out / 'sweep.yaml'} --out {out} --rerun {states}")
    return 0


def print_results(out: Path) -> int:
    rows = report.collect(out)
    report.write(out, rows)
    print(report.markdown(rows, ("cell", "model", "rank", "alpha", "lr", "status", "train_loss",
                                 "untrained_eval_loss", "eval_loss", "perplexity", "time_s")), end="")
    # exit 1 for cells that failed or were left undone; cells another grid.py or SLURM still runs are no failure
    return 0 if all(r["status"] in ("done", "predicted-oom", "submitted", "running") for r in rows) else 1


# ---------------------------------------------------------------------------------------------


def check_datasets(spec: SweepSpec, cells=()) -> None:
    """Dataset names, tiers, local files and their layout (after each cell's column mapping), and the
    prompts files of --generate, checked here so a typo fails before anything is written or queued, not
    in every cell's job. Hub datasets are checked by name only."""
    from ftgrid.data_prep import catalog, formats, sources
    from ftgrid.data_prep.prompts import read_prompts
    from ftgrid.schema import parse_columns

    shapes = {(c.run["dataset"], c.run["task"], c.run.get("columns") or "") for c in cells} or \
        {(name, task, "") for name in spec.datasets for task in spec.tasks}
    for path, task in sorted({(c.run["generate_prompts"], c.run["task"]) for c in cells
                              if c.run.get("generate_prompts")}):
        read_prompts(path, task)
    for name in spec.datasets:
        request = catalog.parse(name)  # DataError (a ValueError): unknown name, bad tier, missing file
        entry = request.entry
        most_rows = entry.full_rows  # an upper bound of the training rows (before hold-out and dedupe)
        if entry.format == "auto" and Path(entry.source).exists():
            try:
                sources.check_utf8(sources.local_files(entry), name)
                rows = sources.load(entry)
            except OSError as e:  # a folder with unreadable entries (`--datasets ../..` from the checkout)
                raise catalog.DataError(f"dataset {name}: cannot read {e.filename or entry.source}: "
                                        f"{e.strerror}") from None
            most_rows = len(rows)
            if not entry.eval_split:  # an upper bound of the usable rows: a set too small fails in every cell
                for eval_rows in sorted({c.run.get("eval_rows") or 0 for c in cells if c.run["dataset"] == name}
                                        or {0}):
                    catalog.held_out_rows(name, most_rows, eval_rows, entry.eval_rows)
            for _, task, columns in sorted(s for s in shapes if s[0] == name):
                try:
                    shaped = formats.rename_columns(rows, parse_columns(columns), name)
                    formats.detect(shaped.column_names, shaped[0] if len(shaped) else None, task)
                except catalog.DataError as e:
                    raise catalog.DataError(f"dataset {name}: {e}") from None
        if most_rows and not isinstance(request.tier, str):
            request.tier_rows(most_rows)  # a row count past the data set, a fraction selecting 0 rows


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.status:
        if not os.path.isdir(args.status):  # os.path: False, not OSError, for a name too long to exist
            print(f"error: --status {args.status!r} is not a sweep folder", file=sys.stderr)
            return EXIT_BAD_INPUT
        return show_status(Path(args.status))
    try:
        spec = build_spec(args)
        executor, hosts = resolve_executor(args, spec)
        cells = expand(spec, max_cells=args.max_cells)
        check_datasets(spec, cells)
        plans = plan_cells(cells, spec.resources)
        fixed = {}
        if spec.fix_oom:  # a hostfile's hosts are all the GPUs there are
            cells, plans, fixed = fix_oom_cells(cells, plans, spec.resources,
                                                max_gpus=spec.resources.world_size if hosts else 64)
        estimates = [timing.estimate(c.run, gpu=p.gpu, gpus=p.gpus) for c, p in zip(cells, plans)]
        given = given_resources(args)
        time_predicted = "time" not in given
        if time_predicted:
            predict_time(cells, estimates, spec.resources)
        if executor == "slurm" and not args.dry_run:  # before rendering: defaults may take the cluster's values
            fit_cluster(spec, given)
        rerun = set(_split(args.rerun))
        if rerun - set(rundir.STATES):
            raise ConfigError(f"--rerun takes states from {', '.join(rundir.STATES)}; got "
                              f"{', '.join(sorted(rerun - set(rundir.STATES)))}")
        out = Path(args.out or Path("runs") / spec.name)
        # under a file, read-only, in /proc, or names too long: refused before anything is written
        validate.writable_dir(out, extra_name_bytes=max(len(c.id.encode()) for c in cells))
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output directory {out} is a file")
        validate_output_dir(out)
        validate_python(args.python)
        if executor == "local":  # jobs run here: the interpreter must be here (a cluster's may not be)
            validate.executable(args.python)
        previous_csv = check_out_dir(out, spec, args.force)
    except (ConfigError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    hosts_text = "".join(f"{h} slots={n}\n" for h, n in hosts)
    ctx = render.Context(sweep=spec.name, python=args.python, hosts=hosts,
                         hostfile=out.resolve() / render.HOSTFILE if hosts else None, time_predicted=time_predicted)
    out.mkdir(parents=True, exist_ok=True)
    # One grid.py at a time writes, selects and takes this sweep's cells; a second one started meanwhile
    # waits its turn, then skips the cells the first took (in flight) and runs only the rest.
    with rundir.locked(out / LOCK_FILE, on_wait=lambda holder: print(
            f"waiting for another grid.py on {out} ({holder}) to take its cells", flush=True)):
        created = write_sweep(out, spec, cells, plans, ctx, hosts_text, previous_csv)
        print_plan(cells, plans, spec.resources, fixed, estimates)
        todo = select(out, cells, plans, rerun, args.submit_oom, created)
        if args.dry_run:
            if hosts:
                print_hostfile_commands([out / c.id for c in cells], hosts)
            print(f"dry run: wrote {len(cells)} cells to {out}; nothing submitted")
            return 0
        try:
            todo = by_resources(todo, cells)  # fixed cells ask for their own resources: one array each
            taken = take(args, executor, hosts, spec, out, todo, {out / c.id: c.resources for c in cells})
        except SubmitRefused as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return run(args, executor, hosts, out, todo, taken)


def select(out: Path, cells, plans, rerun: set, submit_oom: bool, created=frozenset()) -> list[Path]:
    """The cells to run: pending ones (and those in a --rerun state), never predicted-OOM ones unless
    --submit-oom; cells done or in flight are skipped (a re-run of the same command is a resume).
    Cells in `created` (just written: pending or predicted-OOM) have no status worth reading."""
    from ftgrid.launch import submit
    statuses = submit.refresh([out / c.id for c in cells if c.id not in created])
    todo, oom, damaged = [], 0, 0
    for c, p in zip(cells, plans):
        state = statuses[out / c.id].get("state", "pending") if c.id not in created else "pending"
        if not p.fits and not submit_oom:
            oom += 1
        elif state in ("pending", "predicted-oom") or state in rerun:
            todo.append(out / c.id)
        elif state == "damaged":  # results are evidence: never retrained unless asked
            damaged += 1
    note = f", {oom} predicted OOM not run (--submit-oom runs them)" if oom else ""
    if damaged:
        note += f", {damaged} damaged not run (--status lists them; --rerun damaged runs them)"
    skipped = len(cells) - len(todo) - oom - damaged
    print(f"{len(todo)} cell(s) to run, {skipped} skipped (done or in flight){note}")
    return todo


def fit_cluster(spec: SweepSpec, given: set) -> None:
    """The sweep against the SLURM cluster it goes to (launch/cluster.py): what the cluster cannot run is a
    ConfigError naming the limit; defaults the user did not set take the cluster's values (said once)."""
    from ftgrid.launch import cluster
    found = cluster.query()
    if found is None:  # no scontrol answer: sbatch will say what is wrong
        return
    for note in cluster.fit_resources(spec.resources, found, given):
        print(f"cluster: {note}")


def given_resources(args) -> set:
    """The resource keys the user set (sweep file or flags); the others are defaults."""
    data = _load_config(args.config) if args.config else {}
    res = data.get("resources") if isinstance(data.get("resources"), dict) else {}
    return set(res) | {k for k in RESOURCE_SCALARS if getattr(args, f"res_{k}") is not None}


def predict_time(cells, estimates, resources: Resources) -> None:
    """No --time given: each array's cells (those sharing a Resources) get the predicted limit of the
    longest of them (launch/timing.py), rendered in job.sbatch and passed to submitit alike."""
    groups = {id(resources): (resources, [])}
    for c, e in zip(cells, estimates):
        groups.setdefault(id(c.resources), (c.resources, []))[1].append(e)
    for res, group in groups.values():
        res.time = timing.predicted_time(group or estimates)[0]


def by_resources(todo: list, cells) -> list:
    """The cell folders to run, those asking for the same resources next to each other (in order)."""
    key = {c.id: repr(c.resources) for c in cells}
    groups = {}
    for cell_dir in todo:
        groups.setdefault(key.get(cell_dir.name), []).append(cell_dir)
    return [d for group in groups.values() for d in group]


def take(args, executor: str, hosts, spec: SweepSpec, out: Path, todo: list, resources_of: dict | None = None):
    """Under the sweep's lock: submit the cells (SLURM; returns the jobs, in the order of `todo`: one array
    per run of cells with the same resources), or mark them taken by this process (run here one after
    another), so that a concurrent grid.py skips them."""
    from ftgrid.launch import submit
    if executor == "slurm":
        jobs, groups = [], []
        for cell_dir in todo:
            res = (resources_of or {}).get(cell_dir, spec.resources)
            if not groups or groups[-1][0] != res:
                groups.append((res, []))
            groups[-1][1].append(cell_dir)
        for res, dirs in groups:
            jobs += submit.SlurmExecutor(out, res, max_parallel=args.max_parallel).submit(dirs, job_name=spec.name)
        return jobs
    if executor == "hostfile" and submit.HostfileExecutor(hosts).missing():
        return None
    for cell_dir in todo:
        submit.mark_submitted(cell_dir, executor, None)
    return None


def run(args, executor: str, hosts, out: Path, todo: list, jobs) -> int:
    from ftgrid.launch import submit
    if not todo:
        in_flight = sum(rundir.read_status(d)["state"] in submit.IN_FLIGHT for d in report.cell_dirs(out))
        if in_flight:
            print(f"nothing to run here: {in_flight} cell(s) in flight (another grid.py or SLURM runs them); "
                  f"follow with: python launch/grid.py --status {out}")
            return 0
    if executor == "slurm":
        if not todo:
            return print_results(out)
        if not args.wait:
            print(f"submitted {len(jobs)} cell(s); follow with: python launch/grid.py --status {out}")
            return 0
        submit.SlurmExecutor.wait(jobs, todo)
        return print_results(out)
    if executor == "hostfile":
        runner = submit.HostfileExecutor(hosts)
        if runner.missing() and todo:
            print(f"not run: {runner.missing()}. Run on every host by hand (no ssh needed):", file=sys.stderr)
            print_hostfile_commands(todo, hosts)
            return 1
        runner.submit(todo)
        return print_results(out)
    submit.LocalExecutor(python=args.python).submit(todo)
    return print_results(out)


if __name__ == "__main__":
    sys.exit(main())
