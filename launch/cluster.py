"""The SLURM cluster a sweep is about to be submitted to, read with `scontrol`, and the sweep checked against it.

    cluster = query()                          # None without scontrol (or a controller that does not answer)
    notes = fit_resources(res, cluster, given) # raises ConfigError for what the cluster cannot run

Before anything is written or submitted: the partition exists and is up, --time is within its MaxTime, the
nodes, CPUs, memory and GPUs per node asked for exist there; the defaults the user did not set (cpus per
task) are capped at what the nodes have. `parse_records` is the pure core (unit-tested on captured text).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from ftgrid.errors import ConfigError
from ftgrid.launch.spec import slurm_time_minutes

UNLIMITED = None


def parse_records(text: str) -> list[dict[str, str]]:
    """`scontrol -o show partition|node` (one record per line) or plain `scontrol show ...` (records
    separated by blank lines) -> one {key: value} per record. A value may hold spaces (`OS=Linux 6.1 #1
    SMP`): a word without `=` belongs to the value before it."""
    records = []
    for block in re.split(r"\n\s*\n", text.strip()) if "\n\n" in text else text.strip().splitlines():
        record, last = {}, None
        for word in block.split():
            key, sep, value = word.partition("=")
            if sep and key and (key[0].isupper() or last is None):
                record[key], last = value, key
            elif last is not None:
                record[last] += " " + word
        if record:
            records.append(record)
    return records


def _int(value: str | None, default=None):
    return int(value) if value is not None and value.isdigit() else default


def _minutes(value: str | None):
    """A partition's MaxTime in minutes (None = UNLIMITED or unparsable)."""
    if not value or value.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return UNLIMITED
    try:
        return slurm_time_minutes(value)
    except ConfigError:
        return UNLIMITED


def gres_gpus(gres: str | None) -> int:
    """GPUs in a node's Gres (`gpu:4`, `gpu:a100:8(S:0-1)`, `gpu:2,shard:8`); 0 for `(null)`."""
    total = 0
    for item in (gres or "").split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def mem_mb(text: str) -> int:
    """A SLURM memory size (`2000`, `500M`, `3G`, `1T`; no suffix = MB) in MB."""
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not m:
        raise ConfigError(f"mem {text!r} is not a SLURM size like 64G or 2000M")
    return int(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    state: str


@dataclass
class Partition:
    name: str
    default: bool
    up: bool
    max_time_min: int | None
    max_nodes: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Cluster:
    partitions: dict[str, Partition]
    max_array_size: int | None = None

    @classmethod
    def from_text(cls, partitions: str, nodes: str, config: str = "") -> "Cluster":
        members: dict[str, list[Node]] = {}
        for r in parse_records(nodes):
            if "NodeName" not in r:
                continue
            node = Node(r["NodeName"], _int(r.get("CPUTot"), 0), _int(r.get("RealMemory"), 0),
                        gres_gpus(r.get("Gres")), r.get("State", ""))
            for name in r.get("Partitions", "").split(","):  # a node lists its partitions (no hostlist to expand)
                members.setdefault(name.strip(), []).append(node)
        parts = {}
        for r in parse_records(partitions):
            if "PartitionName" in r:
                name = r["PartitionName"]
                parts[name] = Partition(
                    name=name, default=r.get("Default") == "YES", up=r.get("State", "UP") == "UP",
                    max_time_min=_minutes(r.get("MaxTime")), max_nodes=_int(r.get("MaxNodes")),
                    max_cpus_per_node=_int(r.get("MaxCPUsPerNode")), max_mem_per_node_mb=_int(r.get("MaxMemPerNode")),
                    nodes=members.get(name, []))
        array = next((_int(v.strip()) for k, _, v in (line.partition("=") for line in config.splitlines())
                      if k.strip() == "MaxArraySize"), None)
        return cls(parts, array)

    def partition(self, name: str) -> Partition:
        if not name:
            default = [p for p in self.partitions.values() if p.default]
            if not default:
                raise ConfigError("the cluster has no default partition: give --partition "
                                  f"({', '.join(sorted(self.partitions))})")
            return default[0]
        if name not in self.partitions:
            from ftgrid.errors import did_you_mean
            hint = did_you_mean(name, sorted(self.partitions))
            raise ConfigError(f"partition {name!r} does not exist on this cluster{hint}")
        return self.partitions[name]


def query(timeout: float = 30) -> Cluster | None:
    """The cluster as its controller describes it; None without scontrol or an answer."""
    texts = []
    for args in (["-o", "show", "partition"], ["-o", "show", "node"], ["show", "config"]):
        try:
            proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        texts.append(proc.stdout)
    return Cluster.from_text(*texts)


def fit_resources(res, cluster: Cluster, given: set[str]) -> list[str]:
    """Check `res` (launch.spec.Resources) against the partition it will run in; cap the defaults the user
    did not set (`given`: resource keys they did) at what its nodes have. Returns notes to print for the
    values taken from the cluster; raises ConfigError naming the limit for anything else."""
    part = cluster.partition(res.partition)
    where = f"partition {part.name!r}"
    if not part.up:
        raise ConfigError(f"{where} is not up")
    if not part.nodes:
        raise ConfigError(f"{where} has no nodes")
    notes = []
    if part.max_time_min is not None and slurm_time_minutes(res.time) > part.max_time_min:
        if "time" in given:
            raise ConfigError(f"--time {res.time} exceeds the MaxTime of {where} ({part.max_time_min} min)")
        days, minutes = divmod(part.max_time_min, 24 * 60)
        limit = (f"{days}-" if days else "") + f"{minutes // 60:02d}:{minutes % 60:02d}:00"
        notes.append(f"time {limit}: the default {res.time} exceeds the MaxTime of {where}")
        res.time = limit
    max_nodes = len(part.nodes) if part.max_nodes is None else min(part.max_nodes, len(part.nodes))
    if res.nodes > max_nodes:
        raise ConfigError(f"{res.nodes} node(s) asked; {where} has {max_nodes}")
    cpus = max(n.cpus for n in part.nodes)
    if part.max_cpus_per_node is not None:
        cpus = min(cpus, part.max_cpus_per_node)
    if res.cpus_per_task > cpus:
        if "cpus_per_task" in given:
            raise ConfigError(f"--cpus-per-task {res.cpus_per_task} exceeds the {cpus} CPU(s) per node of {where}")
        notes.append(f"cpus-per-task {cpus}: the default {res.cpus_per_task} exceeds the nodes of {where}")
        res.cpus_per_task = cpus
    if res.mem:
        mem = max(n.mem_mb for n in part.nodes)
        if part.max_mem_per_node_mb is not None:
            mem = min(mem, part.max_mem_per_node_mb)
        if mem_mb(res.mem) > mem:
            raise ConfigError(f"--mem {res.mem} exceeds the {mem} MB per node of {where}")
    gpus = max(n.gpus for n in part.nodes)
    if res.gpus_per_node > gpus:
        hint = "; --gpu cpu runs on CPUs" if gpus == 0 else ""
        raise ConfigError(f"{res.gpus_per_node} GPU(s) per node asked; the nodes of {where} have {gpus}{hint}")
    return notes


def sbatch_reason(message: str) -> str:
    """The reason in sbatch's refusal (`sbatch: error: Batch job submission failed: <reason>`)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    reason = errors[-1] if errors else (lines[-1] if lines else "no reason given")
    return reason.removeprefix("Batch job submission failed:").strip()
