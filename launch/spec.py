"""The sweep spec (CLI flags / YAML) and its pure expansion into cells.

`expand(spec) -> list[Cell]` is a pure function: no Jinja, no SLURM, no files. A `Cell` is frozen
and carries the run config it will train (a dict of `finetune.config.RunConfig` fields) and the
resources it asks for. Its id is a readable slug plus a short hash of everything that defines it,
so the same cell gets the same id on every re-run of the sweep.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from finetune.config import LORA_METHODS, METHODS, ConfigError, RunConfig, did_you_mean, from_dict, slug

# Axes: swept with a cartesian product. Each is a list in the spec.
AXES = ("models", "methods", "ranks", "alphas", "lrs", "datasets", "seeds")
# RunConfig fields a sweep may fix for all its cells (the rest are per-axis or the entrypoint's own).
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig)
                   if f.name not in ("name", "output_dir", "model", "method", "rank", "alpha", "lr",
                                     "dataset", "seed", "deepspeed", "wandb_group"))
ZERO_CHOICES = ("0", "1", "2", "3", "auto")
OFFLOAD_CHOICES = ("none", "optimizer", "optimizer+params")
EXECUTORS = ("slurm", "local", "debug", "hostfile")
SAFE_SLURM_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%+=/-]*$")  # partition, account, qos, time, mem


@dataclass
class Resources:
    gpu: str = "h100-80gb"        # GPU preset (see launch/plan.py); `cpu` for CPU-only runs
    nodes: int = 1
    gpus_per_node: int = 1
    zero: str = "auto"            # 0..3 or auto (lowest stage, then offload, that fits the preset)
    offload: str = "none"         # none | optimizer | optimizer+params
    cpus_per_task: int = 8
    mem: str = ""                 # SLURM --mem per node; empty = the partition's default
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


@dataclass
class SweepSpec:
    name: str = "sweep"
    models: list = field(default_factory=lambda: ["pythia-tiny"])
    methods: list = field(default_factory=lambda: ["lora"])
    ranks: list = field(default_factory=lambda: [16])
    alphas: list = field(default_factory=lambda: ["2r"])  # a number, or a multiple of the rank: "2r"
    lrs: list = field(default_factory=lambda: [2e-4])
    datasets: list = field(default_factory=lambda: ["wordnet:small"])
    seeds: list = field(default_factory=lambda: [0])
    train: dict = field(default_factory=dict)             # fixed RunConfig fields for every cell
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class Cell:
    id: str
    index: int
    run: dict = field(hash=False)          # RunConfig fields (resolved), without output_dir
    resources: Resources = field(hash=False)
    params: tuple = ()                     # (axis, value) pairs that define the cell, for tables


def resolve_alpha(alpha: Any, rank: int) -> float:
    text = str(alpha).strip()
    try:
        value = float(text[:-1]) * rank if text.endswith("r") else float(text)
    except ValueError:
        raise ConfigError(f"alpha {alpha!r} is not a number or a multiple of the rank like '2r'") from None
    if value <= 0:
        raise ConfigError(f"alpha must be positive, got {alpha!r}")
    return value


def cell_id(run: dict, resources: Resources) -> str:
    name = [run["model"], run["method"]]
    if run["method"] in LORA_METHODS:
        name += [f"r{run['rank']}", f"a{run['alpha']:g}"]
    name += [f"lr{run['lr']:.0e}", run["dataset"].split("/")[-1], f"s{run['seed']}"]
    blob = json.dumps({"run": run, "resources": dataclasses.asdict(resources)}, sort_keys=True, default=str)
    return slug("_".join(str(x) for x in name)) + "_" + hashlib.sha1(blob.encode()).hexdigest()[:6]


def expand(spec: SweepSpec) -> list[Cell]:
    """The cartesian product of the axes, deduplicated (full fine-tuning ignores rank and alpha)."""
    for axis in AXES:
        if not getattr(spec, axis):
            raise ConfigError(f"axis {axis!r} is empty")
    cells, seen = [], set()
    for model, method, rank, alpha, lr, dataset, seed in itertools.product(
            *(getattr(spec, axis) for axis in AXES)):
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}{did_you_mean(method, METHODS)}")
        run = dict(spec.train, name="", model=model, method=method, lr=lr, dataset=dataset, seed=seed,
                   wandb_group=spec.name)
        params = [("model", model), ("method", method)]
        if method in LORA_METHODS:
            if int(rank) <= 0:
                raise ConfigError(f"rank must be a positive integer, got {rank}")
            run.update(rank=rank, alpha=resolve_alpha(alpha, int(rank)))
            params += [("rank", rank), ("alpha", run["alpha"])]
        params += [("lr", lr), ("dataset", dataset), ("seed", seed)]
        resolved = from_dict(run).to_dict()  # validates every value, fills defaults
        resolved.pop("output_dir")
        resolved.pop("name")
        key = json.dumps(resolved, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        cid = cell_id(resolved, spec.resources)
        resolved["name"] = cid
        cells.append(Cell(id=cid, index=len(cells), run=resolved, resources=spec.resources,
                          params=tuple(params)))
    return cells


def validate_resources(res: Resources) -> None:
    if res.zero not in ZERO_CHOICES:
        raise ConfigError(f"unknown zero stage {res.zero!r}{did_you_mean(res.zero, ZERO_CHOICES)}")
    if res.offload not in OFFLOAD_CHOICES:
        raise ConfigError(f"unknown offload {res.offload!r}{did_you_mean(res.offload, OFFLOAD_CHOICES)}")
    for key in ("nodes", "cpus_per_task"):
        if getattr(res, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(res, key)}")
    if res.gpus_per_node < 0:
        raise ConfigError(f"gpus_per_node must be >= 0, got {res.gpus_per_node}")
    for key in ("mem", "time", "partition", "account", "qos"):
        value = getattr(res, key)
        if not SAFE_SLURM_VALUE.match(value):
            raise ConfigError(f"{key} {value!r} has characters SLURM does not take (allowed: letters, "
                              f"digits and _.,:@%+=/-)")
