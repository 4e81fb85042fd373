"""The sweep spec (CLI flags / YAML) and its pure expansion into cells.

`expand(spec) -> list[Cell]` is a pure function: no Jinja, no SLURM, no files. A `Cell` is frozen
and carries the run config it will train (a dict of `ftgrid.schema.RunConfig` fields) and the
resources it asks for. Its id is a readable slug plus a short hash of everything that defines the
training run (the run-config values that differ from RunConfig's defaults, and the resources that
change the world size or numerics), so the same cell gets the same id on every re-run of the sweep,
and a new run-config field with a default does not rename the cells of existing sweeps.

The grid is the product of the axes, except that zipped axes move together (`zip: [ranks, alphas]`),
then filtered by rules: a cell is kept if it matches no `exclude` rule and (there are no `include`
rules or it matches one). A rule maps axis names (singular: model, rank, ...) to a value or a list.

Besides the built-in axes, any run-config key can be an axis: `axes: {warmup: [0.0, 0.1], micro_batch:
[4, 8]}` (CLI `--sweep warmup=0,0.1`). Such a key is named by itself in `zip:` and in rules, is typed
and validated by the run-config schema, and shows in the cell id (`..._warmup0.1_micro_batch4_s0_...`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftgrid import schema as run_config
from ftgrid.errors import ConfigError, did_you_mean
from ftgrid import validate
from ftgrid.schema import LORA_METHODS, METHODS, RunConfig, coerce, slug

# Axes: swept with a cartesian product (or zipped). Each is a list in the spec.
AXES = ("models", "methods", "ranks", "alphas", "lrs", "datasets", "tasks", "seeds")
AXIS_FIELD = {"models": "model", "methods": "method", "ranks": "rank", "alphas": "alpha", "lrs": "lr",
              "datasets": "dataset", "tasks": "task", "seeds": "seed"}
RULE_KEYS = tuple(AXIS_FIELD.values())
# RunConfig fields a sweep may fix for all its cells (the rest are per-axis or the entrypoint's own).
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig)
                   if f.name not in ("name", "output_dir", "deepspeed", "wandb_group", *RULE_KEYS))
# The hash part of a cell id covers values that differ from these (lr: a LoRA cell's default keeps its id).
_RUN_DEFAULTS = dict(dataclasses.asdict(RunConfig()), lr=run_config.DEFAULT_LR["lora"])
ZERO_CHOICES = ("0", "1", "2", "3", "auto")
OFFLOAD_CHOICES = ("none", "optimizer", "optimizer+params")
LAUNCHERS = ("torchrun", "deepspeed")
EXECUTORS = ("slurm", "local", "debug", "hostfile")
SAFE_SLURM_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%+=/-]*$")  # partition, account, qos, time, mem
# A feature expression (`a100&ib`, `[rack1|rack2]`): #SBATCH lines are read by sbatch, not by a shell.
SAFE_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:@%+=/&|()\[\]*!-]*$")
# The sweep name is a folder name, the SLURM job name and the wandb group, and is written into comments.
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@-]*$")
# The sweep folder lands in `#SBATCH --output=`, which sbatch splits on whitespace, reads quotes in and
# expands % patterns in (no shell): those, backslashes and control characters cannot be carried there.
UNSAFE_SBATCH_PATH = re.compile(r"[\s'\"\\%\x00-\x1f\x7f]")
SBATCH_LINE = re.compile(r"^--([A-Za-z][A-Za-z0-9-]*)(?:=([A-Za-z0-9_.,:@%+=/&|()\[\]*!-]+))?$")
# #SBATCH options the kit renders itself: an extra line must not silently override them.
MANAGED_SBATCH = {"job-name": "the cell id", "nodes": "nodes", "ntasks-per-node": "one task per node",
                  "ntasks": "one task per node", "cpus-per-task": "cpus_per_task",
                  "gpus-per-node": "gpus_per_node", "mem": "mem", "time": "time", "partition": "partition",
                  "account": "account", "qos": "qos", "constraint": "constraint", "exclusive": "exclusive",
                  "output": "the cell's logs/", "error": "the cell's logs/", "signal": "the checkpoint signal",
                  "requeue": "requeue", "open-mode": "append", "array": "the executor"}
# pyxis (enroot) srun flags: `container: {image: ..., mounts: ...}` renders `--container-image=...`.
CONTAINER_VALUE_KEYS = ("image", "mounts", "workdir", "name", "save", "env")
CONTAINER_FLAG_KEYS = ("mount-home", "remap-root", "entrypoint", "entrypoint-log", "writable", "readonly")
CONTAINER_NEGATABLE = ("mount-home", "remap-root", "entrypoint")  # false -> --no-container-<key>
RESOURCE_SCALARS = ("gpu", "nodes", "gpus_per_node", "zero", "offload", "cpus_per_task", "mem", "time",
                    "partition", "account", "qos", "constraint", "exclusive", "launcher")
# Resources that change what a cell trains (world size, numerics); the rest (queue, time, set-up,
# launcher) may change between re-runs without making a done cell a new cell.
IDENTITY_RESOURCES = ("gpu", "nodes", "gpus_per_node", "zero", "offload")


@dataclass
class Resources:
    gpu: str = "h100-80gb"        # GPU preset (see launch/gpus.yaml); `cpu` for CPU-only runs
    nodes: int = 1
    gpus_per_node: int = 1
    zero: str = "auto"            # 0..3 or auto (lowest stage, then offload, that fits the preset)
    offload: str = "none"         # none | optimizer | optimizer+params
    cpus_per_task: int = 8
    mem: str = ""                 # SLURM --mem per node; empty = the partition's default
    time: str = "24:00:00"        # not given: grid.py renders the predicted time instead (launch/timing.py)
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""          # SLURM --constraint: node features, e.g. `a100&ib`
    exclusive: bool = False       # SLURM --exclusive: whole nodes
    launcher: str = "torchrun"    # torchrun (srun on every node) | deepspeed (its launcher, pdsh/ssh)
    sbatch: tuple = ()            # extra #SBATCH options, each `--key=value` or `--flag`
    setup: tuple = ()             # shell lines before the launcher (module load, activate), verbatim
    container: dict = field(default_factory=dict)  # pyxis flags for srun, e.g. {"image": "nvcr.io/..."}

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def nproc_per_node(self) -> int:
        return max(self.gpus_per_node, 1)  # CPU runs: one process per node


@dataclass
class SweepSpec:
    name: str = "sweep"
    models: list = field(default_factory=lambda: ["pythia-tiny"])
    methods: list = field(default_factory=lambda: ["lora"])
    ranks: list = field(default_factory=lambda: [16])
    alphas: list = field(default_factory=lambda: ["2r"])  # a number, or a multiple of the rank: "2r"
    lrs: list = field(default_factory=lambda: [None])      # None: the method's default (RunConfig.lr)
    datasets: list = field(default_factory=lambda: ["wordnet:small"])
    tasks: list = field(default_factory=lambda: ["sft"])
    seeds: list = field(default_factory=lambda: [0])
    train: dict = field(default_factory=dict)             # fixed RunConfig fields for every cell
    global_batch: int | None = None                       # sets grad_accum = global / (micro x world)
    zip: list = field(default_factory=list)               # groups of axes that move together
    include: list = field(default_factory=list)           # rules: keep only cells matching one
    exclude: list = field(default_factory=list)           # rules: drop cells matching any
    resources: Resources = field(default_factory=Resources)
    axes: dict = field(default_factory=dict)              # any other run-config key -> its values
    model_weights: dict = field(default_factory=dict)     # model -> its weights folder ({name, weights} entries)
    fix_oom: bool = False                                 # apply the planner's fix to predicted-OOM cells


@dataclass(frozen=True)
class Cell:
    id: str
    index: int
    run: dict = field(hash=False)          # RunConfig fields (resolved), without output_dir
    resources: Resources = field(hash=False)
    params: tuple = ()                     # (axis, value) pairs that define the cell, for tables


# ---------------------------------------------------------------------------------------------
# values


def typed_axis(axis: str, values: list) -> list:
    """Axis values from YAML or a comma list, typed like their RunConfig field (YAML reads 1e-4 as text)."""
    name = AXIS_FIELD[axis]
    if name == "model":  # {name, weights} entries are split by model_entries
        return [dict(v) if isinstance(v, dict) else str(v) for v in values]
    if name in ("rank", "lr", "seed"):
        return [coerce(name, v) for v in values]
    if name == "alpha":
        return [_alpha_value(v) for v in values]
    return [str(v) for v in values]


def model_entries(values: list) -> tuple[list[str], dict[str, str]]:
    """`models:` entries -> (names, {name: weights folder}); an entry is a name or {name: N, weights: DIR}."""
    names, weights = [], {}
    for entry in values:
        if isinstance(entry, dict):
            if "name" not in entry or set(entry) - {"name", "weights"}:
                raise ConfigError(f"a models entry is a name or {{name: NAME, weights: DIR}}, got {entry!r}"[:300])
            if entry.get("weights") is not None:
                weights[str(entry["name"])] = str(entry["weights"])
            entry = entry["name"]
        names.append(str(entry))
    return names, weights


def typed_axes(axes: dict) -> dict:
    """`axes:` (run-config key -> values) in canonical key names, each value typed by the schema.
    A built-in axis or a key the sweep cannot vary is refused with what to use instead."""
    if not isinstance(axes, dict):
        raise ConfigError("axes takes a mapping of run-config keys to value lists, e.g. {warmup: [0.0, 0.1]}")
    out: dict = {}
    for raw, values in axes.items():
        key = run_config.canonical_key(raw)
        if key in RULE_KEYS:
            raise ConfigError(f"axes: {raw!r} is a built-in axis: use {key}s")
        if key not in TRAIN_KEYS:
            raise ConfigError(f"axes: unknown run-config key {raw!r}{did_you_mean(key, TRAIN_KEYS)}")
        if key in out:
            raise ConfigError(f"axes: {key!r} is given twice")
        values = values if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"axes: {key!r} has no values")
        typed = []
        for v in values:
            t = coerce(key, v)
            t = tuple(t) if isinstance(t, list) else t  # hashable (target_modules lists)
            if t not in typed:
                typed.append(t)
        out[key] = typed
    return out


def _alpha_value(alpha: Any):
    """`2r` stays a multiple of the rank (normalised text), anything else is a number."""
    text = str(alpha).strip()
    try:
        return f"{float(text[:-1]):g}r" if text.endswith("r") else float(text)
    except ValueError:
        raise ConfigError(f"alpha {alpha!r} is not a number or a multiple of the rank like '2r'") from None


def resolve_alpha(alpha: Any, rank: int) -> float:
    value = _alpha_value(alpha)
    value = float(value[:-1]) * rank if isinstance(value, str) else value
    if value <= 0:
        raise ConfigError(f"alpha must be positive, got {alpha!r}")
    return value


def parse_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} is a flag: true or false, got {value!r}")


def parse_int(key: str, value) -> int:
    return validate.integer(key, value)


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation steps for a target global batch: global = micro x accumulation x world."""
    per_step = micro_batch * world_size
    if global_batch <= 0 or global_batch % per_step:
        raise ConfigError(f"global batch {global_batch} is not a positive multiple of micro_batch {micro_batch} "
                          f"x world size {world_size} = {per_step}")
    return global_batch // per_step


# ---------------------------------------------------------------------------------------------
# cluster-side values: checked here so nothing unsafe reaches a rendered script


def sbatch_line(line: str) -> tuple[str, str | None]:
    """`--key=value`, `--flag` (or without the dashes) -> (key, value or None)."""
    if not isinstance(line, str):
        raise ConfigError(f"sbatch line {line!r} must be text like --key=value or --flag")
    text = line.strip(" ")  # a newline is not padding: it would end the #SBATCH line
    text = text if text.startswith("--") else "--" + text
    match = SBATCH_LINE.fullmatch(text)
    if not match:
        raise ConfigError(f"sbatch line {line!r} must look like --key=value or --flag (letters, digits and "
                          f"_.,:@%+=/&|()[]*!- only; no spaces or newlines)")
    key, value = match.groups()
    if key in MANAGED_SBATCH:
        raise ConfigError(f"sbatch line {line!r} sets --{key}, which the sweep renders itself "
                          f"({MANAGED_SBATCH[key]}): set it there")
    return key, value


def container_flags(container: dict) -> list[tuple[str, str | None]]:
    """A `container:` mapping -> pyxis srun flags as (flag, value or None), sorted for stable output."""
    flags = []
    for raw_key, value in sorted(container.items(), key=lambda kv: str(kv[0])):
        key = str(raw_key).removeprefix("--").removeprefix("container-")
        if key in CONTAINER_VALUE_KEYS:
            if (not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip()
                    or re.search(r"[\x00-\x1f\x7f]", str(value))):
                raise ConfigError(f"container {key} takes one line of text, got {value!r}")
            flags.append((f"--container-{key}", str(value)))
        elif key in CONTAINER_FLAG_KEYS:
            if parse_bool(f"container {key}", value):
                flags.append((f"--container-{key}", None))
            elif key in CONTAINER_NEGATABLE:
                flags.append((f"--no-container-{key}", None))
        else:
            raise ConfigError(f"unknown container key {raw_key!r}"
                              f"{did_you_mean(key, CONTAINER_VALUE_KEYS + CONTAINER_FLAG_KEYS)}")
    return flags


def setup_line(line: str) -> str:
    """A set-up line is shell the user wrote on purpose; it is rendered verbatim, one line each."""
    if not isinstance(line, str):
        raise ConfigError(f"setup line {line!r} must be text (one shell line)")
    text = line
    if any(c in text for c in "\n\r\0"):
        raise ConfigError(f"setup line {text!r} holds a line break: give each shell line separately")
    return text


SLURM_MEM = re.compile(r"^[0-9]+[KMGT]?$")
SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_time_minutes(text: str) -> int:
    """A SLURM time limit in whole minutes, rounded up (submitit takes minutes). SLURM's forms: M, M:S,
    H:M:S, D-H, D-H:M, D-H:M:S; minutes and seconds below 60 where they follow an hour or minute field."""
    m = SLURM_TIME.fullmatch(text)
    if m:
        days, first, second, third = m.groups()
        if days is None and third is None:  # M or M:S
            hours, minutes, seconds = 0, int(first), int(second or 0)
            valid = seconds < 60
        else:
            hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
            valid = minutes < 60 and seconds < 60 and (days is None or hours < 24)
        if valid:
            return int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    raise ConfigError(f"time {text!r} is not a SLURM time like 04:00:00, 90 or 2-12:00:00")


SWEEP_NAME_MAX = 100  # a folder, a SLURM job name and a wandb group: long enough, and never near 255 bytes


def validate_sweep_name(name: str) -> str:
    if len(name) > SWEEP_NAME_MAX:
        raise ConfigError(f"sweep name {name[:40]!r}... is {len(name)} characters; at most {SWEEP_NAME_MAX}")
    if not SWEEP_NAME.fullmatch(name):
        raise ConfigError(f"sweep name {name!r} must start with a letter or digit and hold only letters, digits "
                          f"and _.+=@- (it names a folder, the SLURM job and the wandb group)")
    return name


def validate_output_dir(path) -> None:
    """The sweep folder, as it will be written into job.sbatch (resolved, absolute)."""
    text = str(Path(path).resolve())
    bad = UNSAFE_SBATCH_PATH.search(text)
    if bad:
        raise ConfigError(f"output directory {text!r} has {bad.group()!r}, which an #SBATCH line cannot carry "
                          f"(no whitespace, quotes, backslashes, % or control characters)")


def validate_python(path: str) -> str:
    """The jobs' interpreter: quoted on every shell line, but a control character would break a comment line."""
    if re.search(r"[\x00-\x1f\x7f]", path):
        raise ConfigError(f"--python {path!r} has a control character (a newline?)")
    return path


# Beyond any cluster there is: a larger value is a typo or an overflow (`#SBATCH --nodes=2**64`).
RESOURCE_LIMITS = {"nodes": (1, 10_000), "gpus_per_node": (0, 64), "cpus_per_task": (1, 4096)}


def validate_resources(res: Resources) -> None:
    if res.zero not in ZERO_CHOICES:
        raise ConfigError(f"unknown zero stage {res.zero!r}{did_you_mean(res.zero, ZERO_CHOICES)}")
    if res.offload not in OFFLOAD_CHOICES:
        raise ConfigError(f"unknown offload {res.offload!r}{did_you_mean(res.offload, OFFLOAD_CHOICES)}")
    if res.launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {res.launcher!r}{did_you_mean(res.launcher, LAUNCHERS)}")
    for key in ("nodes", "cpus_per_task"):
        if getattr(res, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(res, key)}")
    if res.gpus_per_node < 0 or (res.gpus_per_node == 0 and res.gpu != "cpu"):
        raise ConfigError(f"gpus_per_node must be >= 1 on gpu preset {res.gpu!r}, got {res.gpus_per_node} "
                          f"(use --gpu cpu for CPU-only cells)")
    for key, (lo, hi) in RESOURCE_LIMITS.items():
        validate.integer(key, getattr(res, key), lo, hi)
    if res.mem and not SLURM_MEM.fullmatch(res.mem):
        raise ConfigError(f"mem {res.mem!r} is not a SLURM memory size like 64G, 500M or 8000")
    slurm_time_minutes(res.time)
    for key in ("mem", "time", "partition", "account", "qos"):
        value = getattr(res, key)
        if not SAFE_SLURM_VALUE.fullmatch(value):
            raise ConfigError(f"{key} {value!r} has characters SLURM does not take (allowed: letters, "
                              f"digits and _.,:@%+=/-)")
    if not SAFE_CONSTRAINT.fullmatch(res.constraint):
        raise ConfigError(f"constraint {res.constraint!r} has characters SLURM does not take (allowed: letters, "
                          f"digits and _.,:@%+=/&|()[]*!-)")
    for line in res.sbatch:
        sbatch_line(line)
    for line in res.setup:
        setup_line(line)
    container_flags(res.container)
    if res.container and res.launcher == "deepspeed":
        raise ConfigError("container flags need the torchrun launcher: pyxis wraps srun steps, and the DeepSpeed "
                          "launcher starts remote ranks over pdsh/ssh, outside the container")


# ---------------------------------------------------------------------------------------------
# hostfile (servers without SLURM)

HOSTFILE_LINE = re.compile(r"^([A-Za-z0-9_.-]+)\s+slots=(\d+)$")


def parse_hostfile(text: str, name: str = "hostfile") -> tuple[tuple[str, int], ...]:
    """`host slots=N` lines (DeepSpeed's format; # comments and blank lines allowed) -> ((host, N), ...).
    Every host must have the same slots: torchrun runs one --nproc_per_node on every node."""
    hosts = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = HOSTFILE_LINE.fullmatch(line)
        if not match or int(match.group(2)) < 1:
            raise ConfigError(f"{name} line {number}: {raw.strip()!r} is not `HOST slots=N` (N >= 1)")
        host, slots = match.group(1), int(match.group(2))
        if any(h == host for h, _ in hosts):
            raise ConfigError(f"{name} line {number}: host {host!r} is listed twice")
        if hosts and slots != hosts[0][1]:
            raise ConfigError(f"{name} line {number}: slots={slots} differs from slots={hosts[0][1]} of "
                              f"{hosts[0][0]}; every host needs the same slots (one --nproc_per_node)")
        hosts.append((host, slots))
    if not hosts:
        raise ConfigError(f"{name} lists no hosts (one `HOST slots=N` line per node)")
    return tuple(hosts)


# ---------------------------------------------------------------------------------------------
# whole-spec checks: every unknown name at once, before anything is expanded or written


def _zip_groups(spec: SweepSpec) -> list[tuple[str, ...]]:
    groups = spec.zip
    if groups and all(isinstance(g, str) for g in groups):
        groups = [groups]  # `zip: [ranks, alphas]` is one group
    return [tuple(g) for g in groups]


def name_problems(spec: SweepSpec) -> list[str]:
    """One message per unknown model, method, task, zipped axis or rule key/value."""
    problems = []
    for model in dict.fromkeys(spec.models):  # a registry name, a folder holding config.json or a hub id
        try:
            run_config.model_spec(model)
        except ConfigError as e:
            problems.append(str(e))
    choices = {"methods": METHODS, "tasks": run_config.TASKS}  # read at call time: finetune adds tasks
    for axis, valid in choices.items():
        for value in getattr(spec, axis):
            if value not in valid:
                problems.append(f"unknown {AXIS_FIELD[axis]} {value!r}{did_you_mean(value, valid)}")
    seen = set()
    all_axes = AXES + tuple(spec.axes)
    for group in _zip_groups(spec):
        for axis in group:
            if axis not in all_axes:
                problems.append(f"zip: unknown axis {axis!r}{did_you_mean(axis, all_axes)}")
            elif axis in seen:
                problems.append(f"zip: axis {axis!r} is in more than one group")
            seen.add(axis)
        lengths = {a: len(_axis_values(spec, a)) for a in group if a in all_axes}
        if len(set(lengths.values())) > 1:
            problems.append("zip: zipped axes need equal lengths, got "
                            + ", ".join(f"{a} {n}" for a, n in lengths.items()))
    universe = _universe(spec)
    for kind in ("include", "exclude"):
        rules = getattr(spec, kind)
        if not isinstance(rules, list):
            problems.append(f"{kind} takes a list of rules like [{{model: mixtral-8x7b, method: full}}]")
            continue
        for number, rule in enumerate(rules, 1):
            if not isinstance(rule, dict) or not rule:
                problems.append(f"{kind} rule {number} must be a mapping like {{model: mixtral-8x7b}}")
                continue
            for key, value in rule.items():
                if key not in RULE_KEYS + tuple(spec.axes):
                    problems.append(f"{kind} rule {number}: unknown key {key!r}"
                                    f"{did_you_mean(key, RULE_KEYS + tuple(spec.axes))}")
                    continue
                for v in _typed_rule(key, value):
                    if v not in universe[key]:
                        on_axis = sorted(universe[key], key=str)
                        problems.append(f"{kind} rule {number}: {key} {v!r} is not on the {key}s axis"
                                        f"{did_you_mean(v, on_axis)}")
    return problems


def _typed_rule(key: str, value) -> list:
    values = value if isinstance(value, (list, tuple)) else [value]
    if key not in RULE_KEYS:  # a run-config axis: typed by the schema
        return list(typed_axes({key: values})[key])
    return typed_axis(key + "s", values)  # rule keys are the axes' singular names


def _axis_values(spec: SweepSpec, axis: str) -> list:
    """A built-in axis (plural name) or a run-config axis (its key)."""
    return list(getattr(spec, axis)) if axis in AXES else list(spec.axes[axis])


def _universe(spec: SweepSpec) -> dict[str, set]:
    """Every value a rule may name: the axes' values (alphas also as resolved numbers)."""
    out = {AXIS_FIELD[a]: set(getattr(spec, a)) for a in AXES}
    out.update({key: set(values) for key, values in spec.axes.items()})
    for alpha in spec.alphas:
        for rank in spec.ranks:
            try:
                out["alpha"].add(resolve_alpha(alpha, int(rank)))
            except (ConfigError, ValueError):
                pass  # a bad alpha or rank is reported by expand with its own message
    return out


def _typed_rules(rules: list) -> list[dict[str, set]]:
    return [{key: set(_typed_rule(key, value)) for key, value in rule.items()} for rule in rules]


def _matches(rule: dict[str, set], point: dict[str, set]) -> bool:
    return all(point[key] & values for key, values in rule.items())


def check(spec: SweepSpec) -> None:
    """Validate the whole spec: all unknown names in one line, then resources and batch settings."""
    problems = name_problems(spec)
    if problems:
        raise ConfigError(" | ".join(problems))
    for axis in AXES:
        if not getattr(spec, axis):
            raise ConfigError(f"axis {axis!r} is empty")
    validate_resources(spec.resources)
    if spec.global_batch is not None and "grad_accum" in {**spec.train, **spec.axes}:
        raise ConfigError("give grad_accum or global_batch, not both (global = micro x accumulation x world)")
    both = sorted(set(spec.train) & set(spec.axes))
    if both:
        raise ConfigError(f"{both[0]!r} is both a fixed training setting and an axis: give it once")


# ---------------------------------------------------------------------------------------------
# expansion


def identity(resources: Resources) -> dict:
    return {key: getattr(resources, key) for key in IDENTITY_RESOURCES}


# A cell id names a folder: its readable part is capped (the hash carries uniqueness), so a long dataset
# file name cannot make a name the filesystem refuses (255 bytes) or a path nobody can type.
CELL_SLUG_MAX = 120


def cell_id(run: dict, resources: Resources, swept: tuple = ()) -> str:
    return _cell_id(run, json.dumps(identity(resources), sort_keys=True), swept)


def axis_label(key: str, value) -> str:
    """`warmup0.1`, `micro_batch4`, `optimizerSGD`: a swept run-config value in a cell id."""
    if isinstance(value, (list, tuple)):
        value = "+".join(str(v) for v in value)
    elif isinstance(value, float):
        value = f"{value:g}"
    elif value == "":  # e.g. columns "" (the data as it is) next to a mapping
        value = "-default"
    return f"{key}{value}"


def _cell_id(run: dict, resources_json: str, swept: tuple = ()) -> str:
    name = [run["model"], run["method"]]
    if run["method"] in LORA_METHODS:
        name += [f"r{run['rank']}", f"a{run['alpha']:g}"]
    name += [f"lr{run['lr']:.0e}", run["dataset"].split("/")[-1]]
    if run.get("task", "sft") != "sft":
        name.append(run["task"])
    name += [axis_label(key, run[key]) for key in swept]  # run-config axes: readable in the id
    name.append(f"s{run['seed']}")
    changed = {k: v for k, v in run.items() if k not in _RUN_DEFAULTS or v != _RUN_DEFAULTS[k]}
    blob = json.dumps(changed, sort_keys=True, default=str) + resources_json
    readable = slug("_".join(str(x) for x in name))[:CELL_SLUG_MAX].rstrip("-_.")
    return readable + "_" + hashlib.sha1(blob.encode()).hexdigest()[:6]


def _dimensions(spec: SweepSpec) -> list[list[dict]]:
    """One list per dimension of the product: a free axis, or a zipped group moving together."""
    groups = {axis: group for group in _zip_groups(spec) for axis in group}
    dims, done = [], set()
    for axis in AXES + tuple(spec.axes):
        if axis in done:
            continue
        group = groups.get(axis, (axis,))
        done.update(group)
        dims.append([dict(zip(group, values)) for values in zip(*(_axis_values(spec, a) for a in group))])
    return dims


# Cells a grid may expand to unless --max-cells raises it: counted before expanding, so a typo (a
# million-cell product) fails at once instead of loading for minutes.
MAX_CELLS = 100_000


def grid_size(spec: SweepSpec) -> int:
    """Cells of the (zipped) product before include/exclude rules and deduplication."""
    return math.prod(len(dim) for dim in _dimensions(spec))


def expand(spec: SweepSpec, max_cells: int = MAX_CELLS) -> list[Cell]:
    """The (zipped) product of the axes, filtered by the rules, deduplicated (full fine-tuning ignores
    rank and alpha). More than `max_cells` in the product is refused before any cell is made."""
    # Typed like the CLI types them, so `SweepSpec(lrs=["1e-4"])` and `lrs: [1e-4]` in YAML agree.
    spec = dataclasses.replace(spec, axes=typed_axes(spec.axes),
                               **{a: typed_axis(a, list(getattr(spec, a))) for a in AXES})
    models, weights = model_entries(spec.models)
    spec = dataclasses.replace(spec, models=models, model_weights={**spec.model_weights, **weights})
    check(spec)
    size = grid_size(spec)
    if size > max_cells:
        raise ConfigError(f"the grid has {size} cells (the product of its axes), more than the cap of "
                          f"{max_cells}; split the sweep, or raise the cap with --max-cells")
    res_json = json.dumps(identity(spec.resources), sort_keys=True)
    swept = tuple(spec.axes)
    include, exclude = _typed_rules(spec.include), _typed_rules(spec.exclude)
    cells, seen = [], set()
    for combo in itertools.product(*_dimensions(spec)):
        point = {AXIS_FIELD.get(axis, axis): value for part in combo for axis, value in part.items()}
        train = dict(spec.train, **{k: list(point[k]) if isinstance(point[k], tuple) else point[k] for k in swept})
        if spec.global_batch is not None:  # per cell: micro_batch may be an axis
            micro = int(train.get("micro_batch", RunConfig.micro_batch))
            train["grad_accum"] = accumulation(spec.global_batch, micro, spec.resources.world_size)
        run = dict(train, name="", model=point["model"], method=point["method"], lr=point["lr"],
                   dataset=point["dataset"], task=point["task"], seed=point["seed"], wandb_group=spec.name)
        if point["model"] in spec.model_weights:  # this model's own weights folder
            run["weights"] = spec.model_weights[point["model"]]
        lora = point["method"] in LORA_METHODS
        if lora:
            if int(point["rank"]) <= 0:
                raise ConfigError(f"rank must be a positive integer, got {point['rank']}")
            run.update(rank=point["rank"], alpha=resolve_alpha(point["alpha"], int(point["rank"])))
        if include or exclude:
            keys = {k: {v} for k, v in point.items()}
            keys["rank"] = {point["rank"]} if lora else set()        # rank rules never match full cells
            keys["alpha"] = {point["alpha"], run["alpha"]} if lora else set()
            if any(_matches(r, keys) for r in exclude) or (include and not any(_matches(r, keys) for r in include)):
                continue
        # The fixed training settings are the same for every cell: these values tell runs apart.
        key = (point["model"], point["method"], run.get("rank"), run.get("alpha"), point["lr"], point["dataset"],
               point["task"], point["seed"], *(point[k] for k in swept))
        if key in seen:  # e.g. the same full fine-tune from every rank, or 2r == 16 at rank 8
            continue
        seen.add(key)
        cfg = run_config.from_dict(run)  # validates every value, fills defaults
        # A shallow copy of the fields: dataclasses.asdict deep-copies and dominates 10k-cell sweeps.
        resolved = dict(vars(cfg))
        del resolved["output_dir"], resolved["name"]
        cid = _cell_id(resolved, res_json, swept)
        resolved["name"] = cid
        params = [("model", point["model"]), ("method", point["method"])]
        if lora:
            params += [("rank", point["rank"]), ("alpha", resolved["alpha"])]
        params += [("lr", resolved["lr"]), ("dataset", point["dataset"]), ("task", point["task"]),
                   ("seed", point["seed"])] + [(k, resolved[k]) for k in swept]
        cells.append(Cell(id=cid, index=len(cells), run=resolved, resources=spec.resources,
                          params=tuple(params)))
    if not cells:
        raise ConfigError("the include/exclude rules leave no cells")
    return cells


def refit_cell(cell: Cell, run_changes: dict, resources: Resources) -> Cell:
    """The cell with a fix applied (run-config changes, its own resources): it gets the id of what it
    now trains, so a re-run with the same fix finds the same folder."""
    run = dict(cell.run, **run_changes)
    del run["name"]
    swept = tuple(k for k, _ in cell.params if k not in RULE_KEYS)
    cid = cell_id(run, resources, swept)
    run["name"] = cid
    params = tuple((k, run[k] if k in swept else v) for k, v in cell.params)
    return Cell(id=cid, index=cell.index, run=run, resources=resources, params=params)


def to_yaml_dict(spec: SweepSpec) -> dict:
    """The resolved spec in the sweep-file layout (`--config runs/<sweep>/sweep.yaml` re-creates it)."""
    res = dataclasses.asdict(spec.resources)
    # lrs [None] (each method's default lr) is left out: a sweep file without lrs means the same
    out = {"name": spec.name, **{a: list(getattr(spec, a)) for a in AXES if list(getattr(spec, a)) != [None]},
           "train": dict(spec.train)}
    models, weights = model_entries(spec.models)
    weights = {**spec.model_weights, **weights}
    out["models"] = [{"name": m, "weights": weights[m]} if m in weights else m for m in models]
    if spec.axes:
        out["axes"] = {k: [list(v) if isinstance(v, tuple) else v for v in vs] for k, vs in spec.axes.items()}
    if spec.global_batch is not None:
        out["train"]["global_batch"] = spec.global_batch
    if spec.fix_oom:
        out["fix_oom"] = True
    out.update(zip=[list(g) for g in _zip_groups(spec)], include=list(spec.include),
               exclude=list(spec.exclude), setup=list(res.pop("setup")), sbatch=list(res.pop("sbatch")),
               container=dict(res.pop("container")), resources=res)
    return out
