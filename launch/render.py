"""Render a cell's files from the templates in `slurm_templates/` and `ds_configs/`.

Templates are data; this module only builds their context. Jinja runs with StrictUndefined (a
missing value is an error, never an empty string) and one filter, `shquote`, quotes every value
that reaches a shell line. `cell_files` is pure (text in memory, nothing written), so a sweep can be
rendered, compared or benchmarked without touching the disk.
"""
from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jinja2
import yaml

from ftgrid import KIT_ROOT
from ftgrid.launch.spec import container_flags, sbatch_line

PROJECT_ROOT = KIT_ROOT  # the checkout, or the installed package folder
TRAIN_PY = PROJECT_ROOT / "finetune" / "train.py"
SIGNAL_GRACE_S = 120  # SLURM sends USR1 this long before the time limit: time to checkpoint
HOSTFILE = "hosts.txt"  # the sweep's copy of --hostfile, next to its cells
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter where installed


@functools.lru_cache(maxsize=4096)  # the same interpreter and project paths in every cell
def _shquote(value) -> str:
    return shlex.quote(str(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([PROJECT_ROOT / "slurm_templates", PROJECT_ROOT / "ds_configs"]),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
        trim_blocks=False, lstrip_blocks=False, auto_reload=False)  # no stat of the template per render
    env.filters["shquote"] = _shquote
    return env


ENV = _environment()


@functools.lru_cache(maxsize=None)
def _template(name: str) -> jinja2.Template:
    return ENV.get_template(name)


def _yaml_item(key: str, value) -> str:
    value = list(value) if isinstance(value, tuple) else value
    return yaml.dump({key: value}, Dumper=_YAML_DUMPER, sort_keys=False)


_YAML_ITEMS: dict = {}  # (key, type, value) -> its dump; the type because 1, 1.0 and True dump differently
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # a subset of what YAML writes unquoted and as is
_RESOLVER = yaml.resolver.Resolver()


def _plain(text: str) -> bool:
    """Whether yaml.dump writes this string as is: plain-safe characters, read back as a string (not a
    bool or null like `yes`, `off`, `null`), and no spaces, so it is never folded."""
    return (_PLAIN.fullmatch(text) is not None
            and _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == _RESOLVER.DEFAULT_SCALAR_TAG)


def yaml_mapping(data: dict) -> str:
    """yaml.dump of a flat mapping, built from per-key dumps: a block mapping's entries are emitted
    independently, so the text is identical. Most (key, value) pairs repeat across a sweep's cells
    and are dumped once; plain strings (a cell's own name) are written as YAML writes them, without
    PyYAML's representer (otherwise the slowest part of rendering 10k cells)."""
    out = []
    for key, value in data.items():
        kind = type(value)
        memo = (key, kind, tuple(value) if kind is list else value)
        try:
            text = _YAML_ITEMS.get(memo)
        except TypeError:  # unhashable (a nested mapping): dumped as is
            text = _yaml_item(key, value)
        if text is None:
            if len(_YAML_ITEMS) > 65536:
                _YAML_ITEMS.clear()
            plain = kind is str and _plain(key) and _plain(value)  # e.g. the cell's name: new in every cell
            text = _YAML_ITEMS[memo] = f"{key}: {value}\n" if plain else _yaml_item(key, value)
        out.append(text)
    return "".join(out)


@dataclass(frozen=True)
class Context:
    """What every cell of a sweep renders with (the same for all its cells)."""
    sweep: str
    python: str
    project_root: Path = PROJECT_ROOT
    hosts: tuple = ()             # ((host, slots), ...): also render the hostfile runner scripts
    hostfile: Path | None = None  # where the sweep's copy of the hostfile lives
    time_predicted: bool = False  # res.time came from launch/timing.py (no --time was given)

    @functools.cached_property
    def train_py(self) -> Path:
        return Path(self.project_root) / "finetune" / "train.py"


@functools.lru_cache(maxsize=None)
def _ds_config_text(zero: int, offload: str, pin_memory: bool) -> str:
    text = _template("zero.json.j2").render(zero=zero, offload=offload, pin_memory=pin_memory)
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # parsed: the template must be JSON


def ds_config(zero: int, offload: str, *, pin_memory: bool = True) -> dict:
    return json.loads(_ds_config_text(zero, offload, pin_memory))


def _paths(run_dir: Path, hostfile: Path | None = None) -> SimpleNamespace:
    d = str(run_dir)  # plain strings: Path joins cost more than the rest of a cell's context
    return SimpleNamespace(job=f"{d}/job.sbatch", cell_yaml=f"{d}/cell.yaml", logs=f"{d}/logs",
                           status=f"{d}/status.json", run_deepspeed=f"{d}/run_deepspeed.sh",
                           run_torchrun=f"{d}/run_torchrun.sh", hostfile=str(hostfile) if hostfile else None)


def _common(cell, plan, run_dir: Path, ctx: Context) -> dict:
    # Objects, not dicts: Jinja reads `x.y` with getattr first, and on a dict that is an exception per lookup.
    res = cell.resources
    return dict(cell=cell, sweep=ctx.sweep, res=res, plan=plan, paths=_paths(run_dir, ctx.hostfile),
                python=ctx.python, train_py=ctx.train_py, project_root=ctx.project_root,
                nproc_per_node=res.nproc_per_node, time_predicted=ctx.time_predicted)


def sbatch(*, cell, sweep: str, run_dir: Path, plan, python: str, project_root: Path = PROJECT_ROOT) -> str:
    ctx = Context(sweep=sweep, python=python, project_root=project_root)
    return _sbatch(cell, plan, run_dir, ctx)


def _sbatch(cell, plan, run_dir: Path, ctx: Context) -> str:
    res = cell.resources
    return _template("job.sbatch.j2").render(
        **_common(cell, plan, run_dir, ctx), signal_grace=SIGNAL_GRACE_S,
        sbatch_extra=[sbatch_line(line) for line in res.sbatch], container=container_flags(res.container))


def hostfile_port(cell) -> int:
    """A rendezvous port per cell (from its id's hash), so cells started side by side never collide."""
    return 29500 + int(cell.id.rsplit("_", 1)[-1], 16) % 20000


def hostfile_scripts(cell, plan, run_dir: Path, ctx: Context) -> dict[str, str]:
    """run_deepspeed.sh (DeepSpeed's launcher over the hostfile) and run_torchrun.sh (the same with
    torchrun, one copy per host with its node rank)."""
    context = dict(_common(cell, plan, run_dir, ctx), hosts=ctx.hosts, port=hostfile_port(cell))
    return {name: _template(f"{name}.j2").render(**context)
            for name in ("run_deepspeed.sh", "run_torchrun.sh")}


@functools.lru_cache(maxsize=1024)
def _plan_json(plan) -> str:  # cells that differ only in lr, seed or data share one Plan object
    return json.dumps(plan.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


def cell_files(cell, plan, run_dir: Path, ctx: Context) -> dict[str, str]:
    """Every rendered file of one cell, by name: cell.yaml, plan.json, job.sbatch, ds_config.json
    (only when DeepSpeed runs: ZeRO >= 1) and, with hosts, the hostfile runner scripts."""
    run = dict(cell.run, output_dir="", deepspeed="ds_config.json" if plan.zero > 0 else None)
    files = {"cell.yaml": yaml_mapping(run), "plan.json": _plan_json(plan),
             "job.sbatch": _sbatch(cell, plan, run_dir, ctx)}
    if plan.zero > 0:
        files["ds_config.json"] = _ds_config_text(plan.zero, plan.offload, True)
    if ctx.hosts:
        files.update(hostfile_scripts(cell, plan, run_dir, ctx))
    return files


EXECUTABLE = ("job.sbatch", "run_deepspeed.sh", "run_torchrun.sh")
