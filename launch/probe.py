"""Measure real peak memory and find the OOM boundary: the largest micro batch (or sequence length) that fits.

    python -m launch.probe --model pythia-12b --method full --seq-len 2048                  # micro batch 1..64
    python -m launch.probe --model pythia-1.4b,pythia-2.8b --method lora --rank 16 --seq-len 2048 \
        --micro-batch-range 1:64 --gpu h100-80gb                                            # one map, two rows
    python -m launch.probe --model pythia-1.4b --micro-batch 8 --seq-len-range 128:4096     # longest sequence
    python -m launch.probe --model pythia-1.4b --micro-batch 8 --seq-len 2048               # one cell's peak
    python -m launch.probe --model pythia-tiny --gpu cpu --mem-cap-gib 0.5 --seq-len 512 \
        --micro-batch-range 1:64                                                            # CPU, capped
    python -m launch.probe ... --executor slurm --partition gpu --time 00:30:00             # each try a SLURM job

Each try is a fresh process running a few real optimizer steps through the one entrypoint
(`finetune/train.py --cell <try>/cell.yaml`): after a CUDA OOM the caching allocator stays dirty, so a
second try in the same process would lie. A try is out of memory when the entrypoint exits 3 (its
status.json says `oom`); any other failure stops the probe with the try's log.

The rows are fixed-length: the probe writes a synthetic instruction file (alpaca layout) whose every
response is longer than the sequence length, so each example is truncated to exactly `seq_len`
tokens and the batch has no padding. Models are built from their registry config (`init: random`):
memory does not depend on the weights' values. All tries of a model share one random base (the
try's `base/` links to <out>/bases/<model>), and what a finished try saves (adapter, model) is
deleted once its metrics are read: a probe of a 12B model writes its weights once, not per try.

Search: with a guess (default: the planner's predicted boundary on GPU presets) it tries the guess
and its neighbour first, then gallops and bisects; without one it tries both ends of the range and
bisects. It ends with a measured pair: the largest value that fits and the next one, out of memory.

On a CPU-only machine `--gpu cpu --mem-cap-gib X` caps the data segment of each try's process
(RLIMIT_DATA: private writable memory, i.e. the heap and every anonymous mapping torch allocates in)
at the import baseline (python + torch + transformers + peft + datasets, measured once per probe)
plus X GiB, so an allocation past it fails like a GPU OOM (`DefaultCPUAllocator: can't allocate
memory`, which the entrypoint reports as OOM). RLIMIT_AS works as well but also counts the
libraries' file mappings and thread stacks; RLIMIT_DATA tracks what the allocator uses.

Outputs, in --out (default runs/probe-<model>-<method>-<axis>): one folder per try (cell.yaml,
status.json, metrics.json, logs/), measured_peaks.csv (the points of this probe), probe.json (the
searches and their boundaries) and oom_map.png (models x micro batch or sequence length, measured
fits/OOM with the planner's predicted boundary drawn over them). On a GPU preset the points are also
appended to launch/measured_peaks.csv (the table the planner is tested against; --csv to change).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from ftgrid import KIT_ROOT, rundir
from ftgrid.cli import CliParser
from ftgrid import validate
from ftgrid.schema import LIMITS
from ftgrid.launch.spec import SAFE_SLURM_VALUE, slurm_time_minutes
from ftgrid.errors import ConfigError, did_you_mean, one_line
from ftgrid.registry import model_spec
from ftgrid.schema import LORA_METHODS, METHODS
from ftgrid.launch import plan as planner

ROOT = KIT_ROOT
TRAIN_PY = ROOT / "finetune" / "train.py"
MEASURED_FILE = planner.MEASURED_FILE
COLUMNS = ("model", "method", "rank", "targets", "zero", "gpus", "micro_batch", "seq_len", "grad_ckpt", "gpu",
           "peak_gib", "oom", "source", "loss")
AXES = ("micro_batch", "seq_len")
EXIT_OOM = 3
GIB = float(2**30)
EVAL_ROWS = 2                      # the entrypoint evaluates before and after: keep that small
# The folder a run directory's random-init base is saved to (finetune.models.BASE_DIR; not imported,
# launch imports no torch-side module). Every try of a model links it to one shared copy, so a
# 12B model's random base is written once per probe, not once per try.
BASE_DIR = "base"
# What a finished try leaves that the probe does not need (a full fine-tune saves the whole model).
TRY_OUTPUTS = ("adapter", "model", "checkpoints")
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
# What the baseline child imports: everything the entrypoint has loaded before it builds a model.
BASELINE_IMPORTS = "import torch, transformers, peft, datasets, accelerate"


class ProbeError(RuntimeError):
    """A try failed for a reason other than memory, or the probe was set up wrong (one line)."""


# ---------------------------------------------------------------------------------------------
# What one search holds fixed, and one try


@dataclass(frozen=True)
class Setting:
    """Everything of a probed cell but the searched value."""

    model: str
    method: str
    rank: int | None = None              # LoRA methods only (None = 16)
    targets: str = "preset"              # preset | all-linear | a;b;c (measured_peaks.csv spelling)
    zero: int = 0
    gpus: int = 1
    micro_batch: int = 1
    seq_len: int = 2048
    grad_ckpt: bool = False
    chunked_loss: bool = True  # the entrypoint's default; --loss stock measures the full fp32 logits path
    gpu: str = "h100-80gb"

    def with_value(self, axis: str, value: int) -> "Setting":
        return replace(self, **{axis: int(value)})

    @property
    def label(self) -> str:
        parts = [self.model, self.method]
        if self.method in LORA_METHODS:
            parts.append(f"r{self.rank or 16} {self.targets}")
        if self.zero or self.gpus > 1:
            parts.append(f"z{self.zero}x{self.gpus}")
        if self.grad_ckpt:
            parts.append("ckpt")
        return " ".join(parts)

    def try_id(self) -> str:
        bits = [self.model, self.method]
        if self.method in LORA_METHODS:
            bits += [f"r{self.rank or 16}", self.targets.replace(";", "+")]
        bits += [f"z{self.zero}x{self.gpus}", f"mb{self.micro_batch}", f"s{self.seq_len}"]
        if self.grad_ckpt:
            bits.append("ckpt")
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(bits))

    def run_config(self, dataset: str, steps: int, name: str) -> dict:
        """The try's cell.yaml: run-config fields of ftgrid.schema.RunConfig."""
        run = {"name": name, "model": self.model, "init": "random", "method": self.method,
               "dataset": dataset, "eval_rows": EVAL_ROWS, "seq_len": self.seq_len,
               "micro_batch": self.micro_batch, "grad_accum": 1, "max_steps": steps, "lr": 1e-5,
               "warmup": 0.0, "schedule": "constant", "grad_ckpt": self.grad_ckpt, "logging_steps": 1,
               "wandb_mode": "disabled", "seed": 0, "chunked_loss": self.chunked_loss}
        if self.method in LORA_METHODS:
            run["rank"] = self.rank or 16
            t = self.targets
            run["target_modules"] = t if t in ("preset", "all-linear") else t.split(";")
        if self.zero:
            run["deepspeed"] = "ds_config.json"
        return run

    def csv_row(self) -> dict:
        return {"model": self.model, "method": self.method,
                "rank": (self.rank or 16) if self.method in LORA_METHODS else "",
                "targets": self.targets if self.method in LORA_METHODS else "",
                "zero": self.zero, "gpus": self.gpus, "micro_batch": self.micro_batch, "seq_len": self.seq_len,
                "grad_ckpt": str(self.grad_ckpt).lower(), "gpu": self.gpu,
                "loss": "chunked" if self.chunked_loss else "stock"}


@dataclass
class Point:
    """One measured try."""

    setting: Setting
    oom: bool
    peak_gib: float | None
    seconds: float
    run_dir: str
    peak_kind: str = ""
    tokens_per_second: float | None = None
    error: str = ""

    def csv_row(self, source: str) -> dict:
        row = self.setting.csv_row()
        row.update(peak_gib="" if self.peak_gib is None or self.oom else f"{self.peak_gib:.3f}",
                   oom=str(self.oom).lower(), source=source)
        return row


# ---------------------------------------------------------------------------------------------
# Search


def search(values: list[int], fits, guess: int | None = None,
           known: dict[int, bool] | None = None) -> tuple[int | None, dict[int, bool]]:
    """Largest value of the ascending `values` for which fits(value) is true, assuming it is
    monotone (true up to the boundary, false after). Returns (best or None, {value: fits} tried).

    Each value is tried at most once. Without a guess: both ends, then bisection. With one (snapped
    into the list): the guess, then its neighbour, then steps doubling away from it until the
    boundary is bracketed, then bisection. When the boundary lies inside the list, both the best
    value and the next one have been tried. `known` holds outcomes already measured."""
    values = sorted(set(int(v) for v in values))
    if not values:
        raise ValueError("nothing to search")
    tried: dict[int, bool] = dict(known or {})

    def t(i: int) -> bool:
        v = values[i]
        if v not in tried:
            tried[v] = bool(fits(v))
        return tried[v]

    last = len(values) - 1
    if guess is None:
        if not t(0):
            return None, tried
        if t(last):
            return values[last], tried
        a, b = 0, last
    else:
        g = min(range(len(values)), key=lambda i: (abs(values[i] - guess), values[i]))
        step = 1
        if t(g):
            a = g
            while True:
                nxt = min(a + step, last)
                if nxt == a:
                    return values[a], tried
                if t(nxt):
                    a, step = nxt, step * 2
                else:
                    b = nxt
                    break
        else:
            b = g
            while True:
                nxt = max(b - step, 0)
                if nxt == b:
                    return None, tried
                if t(nxt):
                    a = nxt
                    break
                b, step = nxt, step * 2
    while b - a > 1:
        mid = (a + b) // 2
        if t(mid):
            a = mid
        else:
            b = mid
    return values[a], tried


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / sxx, 6)


def candidates(lo: int, hi: int, step: int = 1) -> list[int]:
    """lo, lo+step, ... and hi itself."""
    out = list(range(lo, hi + 1, step))
    if out[-1] != hi:
        out.append(hi)
    return out


# ---------------------------------------------------------------------------------------------
# Fixed-length data


WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law car "
         "city community name river light stone music paper garden window").split()


def synthetic_dataset(path: Path, rows: int, words: int) -> Path:
    """An alpaca-layout jsonl whose responses have `words` words each (every word is at least one
    token for any tokenizer that splits on spaces first, so a response of seq_len words fills a
    sequence). Rows are distinct (the entrypoint drops duplicates). Deterministic."""
    path = Path(path)
    if path.exists():
        return path
    n = len(WORDS)
    lines = []
    for i in range(rows):
        text = " ".join(WORDS[(i * 7 + j * 13 + j // n) % n] for j in range(words))
        lines.append(json.dumps({"instruction": f"Write passage number {i}.", "input": "", "output": text}))
    rundir.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Running one try


def clean_env(capped: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if capped:  # fewer threads, fewer stacks: the cap then measures tensors, not thread count
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def entry_command(python: str, cell_yaml: Path, gpus: int) -> list[str]:
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                str(TRAIN_PY), "--cell", str(cell_yaml)]
    return [python, str(TRAIN_PY), "--cell", str(cell_yaml)]


def _data_limit(limit: int | None):
    if limit is None:
        return None

    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return apply


def baseline_data_bytes(python: str = sys.executable) -> int:
    """VmData of a fresh process that has imported what the entrypoint imports before training."""
    code = (f"{BASELINE_IMPORTS}\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmData:')][0])")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=clean_env(capped=True), timeout=600)
    if proc.returncode != 0:
        raise ProbeError(f"cannot measure the import baseline: {proc.stderr.strip().splitlines()[-1:]}")
    return int(proc.stdout.split()[-1]) * 1024


@dataclass
class LocalRunner:
    """Each try in a fresh process on this machine; `data_limit` (bytes) caps its data segment."""

    python: str = sys.executable
    data_limit: int | None = None
    timeout: float = 3600
    name: str = "local"

    def run(self, cell_dir: Path, gpus: int) -> int:
        log = cell_dir / "logs" / "train.log"
        with open(log, "ab") as out:
            # its own session, so a timeout ends torchrun's workers too
            proc = subprocess.Popen(entry_command(self.python, cell_dir / "cell.yaml", gpus), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT, env=clean_env(self.data_limit is not None),
                                    preexec_fn=_data_limit(self.data_limit), start_new_session=True)
            try:
                return proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                return -9


@dataclass
class SlurmRunner:
    """Each try as one SLURM job (`sbatch --wait`): a fresh process on a fresh allocation."""

    python: str = sys.executable
    data_limit: int | None = None
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "00:30:00"
    mem: str = ""
    cpus_per_task: int = 0
    gres_gpus: int = 0
    timeout: float = 6 * 3600
    name: str = "slurm"

    def sbatch_command(self, cell_dir: Path, gpus: int, job_name: str) -> list[str]:
        inner = shlex.join(entry_command(self.python, cell_dir / "cell.yaml", gpus))
        if self.data_limit is not None:
            inner = f"ulimit -d {self.data_limit // 1024} && exec {inner}"
        cmd = ["sbatch", "--wait", "--parsable", f"--job-name={job_name}", "--nodes=1", "--ntasks=1",
               f"--output={cell_dir / 'logs' / 'slurm-%j.out'}", f"--time={self.time}", f"--chdir={ROOT}"]
        for key in ("partition", "account", "qos", "mem"):
            if getattr(self, key):
                cmd.append(f"--{key}={getattr(self, key)}")
        if self.cpus_per_task:
            cmd.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.gres_gpus:
            cmd.append(f"--gpus-per-node={self.gres_gpus}")
        return cmd + ["--wrap", inner]

    def run(self, cell_dir: Path, gpus: int) -> int:
        cmd = self.sbatch_command(cell_dir, gpus, f"probe-{cell_dir.name}"[:100])
        env = clean_env(self.data_limit is not None)
        env.pop("SLURM_JOB_ID", None)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return -9
        job = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 and not job:
            raise ProbeError(f"sbatch refused the try {cell_dir.name}: {proc.stderr.strip()}")
        return proc.returncode


def run_try(setting: Setting, runner, out: Path, dataset: Path, steps: int) -> Point:
    """Write the try's cell.yaml, run it in a fresh process, read its outcome."""
    cell_dir = Path(out) / setting.try_id()
    if cell_dir.exists():                 # a new measurement: nothing of an earlier one may leak in
        shutil.rmtree(cell_dir)
    (cell_dir / "logs").mkdir(parents=True)
    run = setting.run_config(str(Path(dataset).resolve()), steps, cell_dir.name)
    if setting.zero:
        from ftgrid.launch import render
        rundir.atomic_write_json(cell_dir / "ds_config.json", render.ds_config(setting.zero, "none"))
    rundir.atomic_write_text(cell_dir / "cell.yaml", yaml.safe_dump(run, sort_keys=False))
    shared = Path(out) / "bases" / f"{setting.model}"
    shared.mkdir(parents=True, exist_ok=True)
    (cell_dir / BASE_DIR).symlink_to(shared.resolve(), target_is_directory=True)
    rundir.write_status(cell_dir, "submitted", executor=runner.name)
    t0 = time.time()
    code = runner.run(cell_dir, setting.gpus)
    seconds = time.time() - t0
    for name in TRY_OUTPUTS + (BASE_DIR,):
        path = cell_dir / name
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    status = rundir.read_status(cell_dir)
    state = status.get("state")
    if code == EXIT_OOM or state == "oom":
        return Point(setting, oom=True, peak_gib=None, seconds=seconds, run_dir=str(cell_dir),
                     error=str(status.get("error", ""))[:300])
    metrics = rundir.read_json(cell_dir / rundir.METRICS_FILE, default=None)
    if code != 0 or state != "done" or not metrics:
        tail = "\n".join(_tail(cell_dir / "logs" / "train.log"))
        raise ProbeError(f"try {cell_dir.name} failed (exit {code}, state {state}): "
                         f"{status.get('error') or 'no error recorded'}\n{tail}")
    return Point(setting, oom=False, peak_gib=float(metrics["peak_memory_gib"]), seconds=seconds,
                 run_dir=str(cell_dir), peak_kind=str(metrics.get("peak_memory_kind", "")),
                 tokens_per_second=metrics.get("tokens_per_second"))


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# The planner's view: predicted boundaries


def _planner_row(setting: Setting) -> dict:
    return {k: str(v) for k, v in setting.csv_row().items()}


def predicted_peak(setting: Setting) -> float | None:
    try:
        return planner.plan_measured(_planner_row(setting)).peak_gib
    except ConfigError:
        return None


def predicted_fits(setting: Setting, cap_gib: float | None = None) -> bool:
    try:
        plan = planner.plan_measured(_planner_row(setting))
    except ConfigError:
        return False
    return plan.fits if cap_gib is None else plan.peak_gib <= cap_gib


def predicted_boundary(setting: Setting, axis: str, cap_gib: float | None = None) -> int:
    """The planner's largest micro batch (1..planner.MAX_MICRO_BATCH) or sequence length
    (1..the model's limit) that fits, the other value held; 0 when nothing fits. With cap_gib the
    predicted peak is compared with it instead of the preset's capacity."""
    if axis == "micro_batch":
        hi = planner.MAX_MICRO_BATCH
        if cap_gib is None:
            try:
                return planner.plan_measured(_planner_row(setting.with_value(axis, 1))).max_micro_batch
            except ConfigError:
                return 0
    else:
        hi = model_spec(setting.model).max_seq_len
    best, _ = search(list(range(1, hi + 1)), lambda v: predicted_fits(setting.with_value(axis, v), cap_gib))
    return best or 0


# ---------------------------------------------------------------------------------------------
# Points <-> CSV, and the map's data


def append_csv(path: Path, points: list[Point], source: str) -> Path:
    """Append the points to a measured_peaks.csv (created with the header when missing). Rows take
    the file's own header, so a table with more columns keeps them."""
    path = Path(path)
    rows = [p.csv_row(source) for p in points]
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None) or list(COLUMNS)
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
    else:
        header, text = list(COLUMNS), ",".join(COLUMNS) + "\n"
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n").writerows(rows)
    rundir.atomic_write_text(path, text + buf.getvalue())
    return path


# measured_peaks.csv columns that hold numbers (empty allowed): checked on read, so a hand-edited file is
# one error line naming the line and column, not a traceback in the report's OOM map.
POINT_INTS = ("rank", "zero", "gpus", "micro_batch", "seq_len")
POINT_FLOATS = ("peak_gib",)


def read_points(path: Path) -> list[dict]:
    """Rows of a measured_peaks.csv ({} for a missing file; comment rows skipped). Text where a number
    belongs, or bytes that are not UTF-8, raise ConfigError."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("model") and not r["model"].startswith("#")]
    except OSError:
        return []
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise ConfigError(f"{path} is not a valid CSV: {e}") from None
    for number, row in enumerate(rows, 2):
        for keys, check, lo in ((POINT_INTS, validate.integer, 0), (POINT_FLOATS, validate.finite, 0.0)):
            for key in keys:
                if (row.get(key) or "").strip():
                    try:
                        check(key, row[key].strip(), lo)
                    except ConfigError as e:
                        raise ConfigError(f"{path} row {number}: {e}") from None
    return rows


def _truthy(text) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes")


def setting_of(row: dict) -> Setting:
    method = row["method"]
    return Setting(model=row["model"], method=method,
                   rank=int(row["rank"]) if row.get("rank") else None,
                   targets=(row.get("targets") or "preset") if method in LORA_METHODS else "preset",
                   zero=int(row.get("zero") or 0), gpus=int(row.get("gpus") or 1),
                   micro_batch=int(row["micro_batch"]), seq_len=int(row["seq_len"]),
                   grad_ckpt=_truthy(row.get("grad_ckpt", "")), gpu=row.get("gpu") or "h100-80gb")


_CAP_RE = re.compile(r"mem cap ([0-9.]+) GiB")


def guess_axis(rows: list[dict]) -> str:
    """The axis the rows were searched along: the one that varies within more groups."""
    def varying(axis):
        groups: dict = {}
        for r in rows:
            key = replace(setting_of(r), **{axis: 0})
            groups.setdefault(key, set()).add(r[axis])
        return sum(1 for v in groups.values() if len(v) > 1)
    return "seq_len" if varying("seq_len") > varying("micro_batch") else "micro_batch"


def map_rows(rows: list[dict], axis: str | None = None, cap_gib: float | None = None) -> tuple[str, list[dict]]:
    """Group measured rows into the OOM map's rows: (axis, [{label, fits, oom, predicted,
    measured}]). `measured` is the largest fitting value below the smallest OOM one (None when no
    try fitted). The cap comes from the argument, else from a `mem cap X GiB` in the rows' source."""
    if not rows:
        return axis or "micro_batch", []
    axis = axis or guess_axis(rows)
    other = "seq_len" if axis == "micro_batch" else "micro_batch"
    groups: dict[Setting, dict] = {}
    for r in rows:
        s = setting_of(r)
        key = replace(s, **{axis: 0})
        g = groups.setdefault(key, {"fits": set(), "oom": set(), "cap": None})
        g["oom" if _truthy(r.get("oom")) else "fits"].add(int(r[axis]))
        m = _CAP_RE.search(r.get("source") or "")
        if m:
            g["cap"] = float(m.group(1))
    out = []
    for key, g in groups.items():
        cap = cap_gib if cap_gib is not None else g["cap"]
        label = f"{key.label}, {'seq' if other == 'seq_len' else 'mb'} {getattr(key, other)}"
        if key.gpu != "h100-80gb":
            label += f" ({key.gpu}{f', cap {cap:g} GiB' if cap else ''})"
        first_oom = min(g["oom"]) if g["oom"] else None
        below = [v for v in g["fits"] if first_oom is None or v < first_oom]
        try:
            predicted = predicted_boundary(replace(key, **{axis: 1}), axis, cap)
        except ConfigError:
            predicted = None
        out.append({"label": label, "fits": sorted(g["fits"]), "oom": sorted(g["oom"]),
                    "measured": max(below) if below else None, "predicted": predicted})
    out.sort(key=lambda r: r["label"])
    return axis, out


# ---------------------------------------------------------------------------------------------
# One probe


@dataclass
class Probe:
    settings: list[Setting]
    axis: str | None                     # None: measure each setting once
    values: list[int] = field(default_factory=list)
    out: Path = Path("runs/probe")
    runner: object = None
    steps: int = 3
    guess: str = "auto"                  # auto | none | an integer
    cap_gib: float | None = None
    baseline_gib: float | None = None
    echo: object = print

    def dataset(self) -> Path:
        max_mb = max([s.micro_batch for s in self.settings] + (self.values if self.axis == "micro_batch" else []))
        max_seq = max([s.seq_len for s in self.settings] + (self.values if self.axis == "seq_len" else []))
        rows = max_mb * self.steps + EVAL_ROWS + 2
        return synthetic_dataset(self.out / "data" / f"fixed_r{rows}_w{max_seq + 8}.jsonl", rows, max_seq + 8)

    def _guess(self, setting: Setting) -> int | None:
        if self.guess == "none" or self.axis is None:
            return None
        if self.guess != "auto":
            return int(self.guess)
        if planner.gpu_preset(setting.gpu).device == "cpu":
            return None     # the planner counts what a GPU allocator holds, not a capped process's data
        return predicted_boundary(setting, self.axis, None)

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.dataset()
        searches, points = [], []
        for setting in self.settings:
            tried: list[Point] = []

            def fits(value, setting=setting, tried=tried):
                s = setting.with_value(self.axis, value) if self.axis else setting
                p = run_try(s, self.runner, self.out, data, self.steps)
                tried.append(p)
                points.append(p)
                what = "OOM" if p.oom else f"fits, peak {p.peak_gib:.3f} GiB"
                self.echo(f"  {s.label}  mb {s.micro_batch}  seq {s.seq_len}: {what}  ({p.seconds:.0f}s)")
                self._check_device(p)
                return not p.oom

            self.echo(f"{setting.label}: " + (f"{self.axis} in {self.values[0]}..{self.values[-1]}"
                                                if self.axis else "one measurement"))
            if not self.axis:
                fits(None)
                searches.append({"setting": asdict(setting), "axis": None, "best": None,
                                 "predicted_peak_gib": predicted_peak(setting), "tries": self._tries(tried)})
                continue
            guess = self._guess(setting)
            known = {}
            if guess is not None and self.cap_gib is not None and guess != self.values[0]:
                # Under a host-memory cap the first try of a probe also tokenizes the data (cached
                # for the later ones): make that the smallest value, never a point near the boundary.
                known[self.values[0]] = fits(self.values[0])
            best, _ = search(self.values, fits, guess, known=known)
            predicted = predicted_boundary(setting, self.axis, self.cap_gib)
            self.echo(f"  -> largest {self.axis} that fits: "
                      f"{best if best is not None else f'none (below {self.values[0]})'}"
                      f"{' (the top of the range)' if best == self.values[-1] else ''}"
                      f"; planner predicts {predicted or 'none'}")
            searches.append({"setting": asdict(setting), "axis": self.axis,
                             "range": [self.values[0], self.values[-1]], "guess": guess, "best": best,
                             "predicted": predicted, **self._slopes(setting, tried), "tries": self._tries(tried)})
        return {"searches": searches, "points": points}

    def _tries(self, tried: list[Point]) -> list[dict]:
        return [{"micro_batch": p.setting.micro_batch, "seq_len": p.setting.seq_len, "oom": p.oom,
                 "peak_gib": p.peak_gib, "seconds": round(p.seconds, 1), "tokens_per_second": p.tokens_per_second,
                 "run_dir": p.run_dir} for p in tried]

    def _slopes(self, setting: Setting, tried: list[Point]) -> dict:
        """GiB per unit of the searched value, measured (least squares over the tries that fit) and
        planned (the planner's peaks at the same values): checks the planner's per-example terms
        even where its absolute level is not comparable (a capped CPU process)."""
        pts = [(getattr(p.setting, self.axis), p.peak_gib) for p in tried if not p.oom and p.peak_gib is not None]
        if len({x for x, _ in pts}) < 2:
            return {}
        planned = [(x, predicted_peak(setting.with_value(self.axis, x))) for x, _ in pts]
        if any(y is None for _, y in planned):
            return {"measured_gib_per_unit": _slope(pts)}
        return {"measured_gib_per_unit": _slope(pts), "planned_gib_per_unit": _slope(planned)}

    def _check_device(self, p: Point) -> None:
        if p.oom or not p.peak_kind:
            return
        on_gpu = p.peak_kind.startswith("cuda")
        if on_gpu != (planner.gpu_preset(p.setting.gpu).device == "cuda"):
            raise ProbeError(f"--gpu {p.setting.gpu} but the try ran on {'a GPU' if on_gpu else 'the CPU'} "
                             f"({p.peak_kind}): pick the preset of the device the tries run on")

    def source(self) -> str:
        day = time.strftime("%Y-%m-%d")
        kind = "torch.cuda.max_memory_allocated" if all(
            planner.gpu_preset(s.gpu).device == "cuda" for s in self.settings) else "cpu max RSS"
        text = (f"probe {day}: {self.runner.name}, fresh process per try, {self.steps} steps, random init, "
                f"fixed-length rows, {kind}")
        if self.cap_gib is not None:
            text += f", mem cap {self.cap_gib:g} GiB over an import baseline of {self.baseline_gib:.2f} GiB " \
                    "(RLIMIT_DATA)"
        return text


# ---------------------------------------------------------------------------------------------
# CLI


def _range(text: str, name: str, top: int) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(1)) > int(m.group(2)) or int(m.group(2)) > top:
        raise ConfigError(f"{name} takes LO:HI with 1 <= LO <= HI <= {top}, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_args(argv):
    p = CliParser(prog="python -m launch.probe", description=__doc__.split("\n")[0], epilog=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registry names, model folders or hub ids, comma separated: one map row each")
    p.add_argument("--method", default="lora", help="full | lora | qlora | lora-8bit (comma list allowed)")
    p.add_argument("--rank", type=validate.arg_int(1, LIMITS["rank"][1]), default=None, help="LoRA rank (default 16)")
    p.add_argument("--target-modules", default="preset", help="preset | all-linear | a,b,c")
    p.add_argument("--micro-batch", type=validate.arg_int(1, LIMITS["micro_batch"][1]), default=None, help="fixed micro batch (default 1 when the "
                   "sequence length is searched); alone with --seq-len: measure that one cell")
    p.add_argument("--seq-len", type=validate.arg_int(1, LIMITS["seq_len"][1]), default=None, help="fixed sequence length (default 2048, or the "
                   "model's limit when smaller)")
    p.add_argument("--micro-batch-range", default=None, help="LO:HI, search the micro batch (default 1:64)")
    p.add_argument("--seq-len-range", default=None, help="LO:HI, search the sequence length")
    p.add_argument("--seq-step", type=validate.arg_int(1, 2**20), default=64, help="granularity of a sequence-length search")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--loss", choices=("chunked", "stock"), default="chunked",
                   help="the causal-LM loss the tries run: chunked (the entrypoint's default) or stock (fp32 logits)")
    p.add_argument("--gpu", default="h100-80gb", help="the preset of the device the tries run on")
    p.add_argument("--gpus", type=validate.arg_int(1, 64), default=1, help="GPUs per try (torchrun on one node)")
    p.add_argument("--zero", type=int, default=0, choices=planner.ZERO_STAGES)
    p.add_argument("--steps", type=validate.arg_int(1, 10**6), default=3, help="optimizer steps per try")
    p.add_argument("--guess", default="auto", help="auto (the planner's boundary on GPU presets) | none | N")
    p.add_argument("--mem-cap-gib", type=validate.arg_float(0.0, 2.0**20), default=None,
                   help="--gpu cpu only: cap each try's data segment at the import baseline + this")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--out", default=None, help="probe directory (default runs/probe-<model>-<method>-<axis>)")
    p.add_argument("--csv", default=None, help="also append the points here (default on GPU presets: "
                   "launch/measured_peaks.csv; on cpu: none)")
    p.add_argument("--no-map", action="store_true", help="skip oom_map.png")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--timeout", type=validate.arg_float(1.0, 1e7), default=3600, help="seconds per try")
    for key in ("partition", "account", "qos", "mem"):
        p.add_argument(f"--{key}", default="", help=f"slurm: --{key}")
    p.add_argument("--time", default="00:30:00", help="slurm: time limit per try")
    p.add_argument("--cpus-per-task", type=validate.arg_int(0, 4096), default=0, help="slurm: CPUs per try")
    return p.parse_args(argv)


def build(args) -> Probe:
    """Validate the arguments (ConfigError on bad input) and build the probe."""
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not models or not methods:
        raise ConfigError("--model and --method need at least one name")
    for m in models:
        model_spec(m)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}{did_you_mean(m, METHODS)}")
    preset = planner.gpu_preset(args.gpu)
    if args.mem_cap_gib is not None and (preset.device != "cpu" or args.mem_cap_gib <= 0):
        raise ConfigError("--mem-cap-gib is for --gpu cpu (it caps host memory) and must be positive")
    if args.micro_batch_range and args.seq_len_range:
        raise ConfigError("search one axis at a time: --micro-batch-range or --seq-len-range")
    for key in ("micro_batch", "seq_len", "rank"):
        if getattr(args, key) is not None and getattr(args, key) <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be a positive integer")
    if args.steps <= 0 or args.gpus <= 0 or args.seq_step <= 0:
        raise ConfigError("--steps, --gpus and --seq-step must be positive")
    if args.zero and preset.device == "cpu" and args.gpus == 1:
        pass  # DeepSpeed runs on CPU too (gloo); allowed
    if args.guess not in ("auto", "none") and not args.guess.isdigit():
        raise ConfigError(f"--guess takes auto, none or a positive integer, got {args.guess!r}")
    if args.seq_len_range:
        axis, (lo, hi) = "seq_len", _range(args.seq_len_range, "--seq-len-range", LIMITS["seq_len"][1])
        values = candidates(lo, hi, args.seq_step)
    elif args.micro_batch_range or args.micro_batch is None:
        axis, (lo, hi) = "micro_batch", _range(args.micro_batch_range or "1:64", "--micro-batch-range",
                                           LIMITS["micro_batch"][1])
        values = candidates(lo, hi)
    else:
        axis, values = None, []
    targets = args.target_modules
    if targets not in ("preset", "all-linear"):
        targets = ";".join(t.strip() for t in targets.split(",") if t.strip())
    settings = []
    for model in models:
        spec = model_spec(model)
        seq = args.seq_len or min(2048, spec.max_seq_len)
        if axis == "seq_len" and values[-1] > spec.max_seq_len:
            raise ConfigError(f"--seq-len-range reaches {values[-1]}, past {model}'s limit of {spec.max_seq_len}")
        if seq > spec.max_seq_len:
            raise ConfigError(f"seq_len {seq} exceeds {model}'s limit of {spec.max_seq_len}")
        for method in methods:
            lora = method in LORA_METHODS
            if lora:
                planner.resolve_targets(spec, targets.split(";") if ";" in targets else targets)
            s = Setting(model=model, method=method, rank=(args.rank or 16) if lora else None,
                        targets=targets if lora else "preset", zero=args.zero, gpus=args.gpus,
                        micro_batch=args.micro_batch or 1, seq_len=seq, grad_ckpt=args.grad_ckpt, gpu=args.gpu,
                        chunked_loss=args.loss == "chunked")
            if lora:
                planner.param_counts(spec, method, s.rank, targets.split(";") if targets not in
                                     ("preset", "all-linear") else targets)
            settings.append(s)
    out = Path(args.out or Path("runs") / f"probe-{models[0]}-{methods[0]}-{axis or 'once'}")
    validate.writable_dir(out, "--out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file")
    validate.executable(args.python)  # every try runs it: checked before bases/ and data/ are written
    if args.executor == "slurm":
        for key in ("partition", "account", "qos", "mem", "time"):
            if not SAFE_SLURM_VALUE.fullmatch(getattr(args, key)):
                raise ConfigError(f"--{key} {getattr(args, key)!r} has characters SLURM does not take")
        slurm_time_minutes(args.time)
    if args.executor == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("--executor slurm needs sbatch on PATH")
    runner_kw = dict(python=args.python)
    if args.executor == "slurm":
        runner = SlurmRunner(partition=args.partition, account=args.account, qos=args.qos, time=args.time,
                             mem=args.mem, cpus_per_task=args.cpus_per_task,
                             gres_gpus=args.gpus if preset.device == "cuda" else 0, **runner_kw)
    else:
        runner = LocalRunner(timeout=args.timeout, **runner_kw)
    return Probe(settings=settings, axis=axis, values=values, out=out, runner=runner, steps=args.steps,
                 guess=args.guess, cap_gib=args.mem_cap_gib)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        probe = build(args)
    except ConfigError as e:
        sys.stderr.write(f"error: {one_line(e)}\n")
        return 2
    try:
        if probe.cap_gib is not None:
            base = baseline_data_bytes(args.python)
            probe.baseline_gib = base / GIB
            probe.runner.data_limit = base + int(probe.cap_gib * GIB)
            print(f"import baseline {probe.baseline_gib:.2f} GiB of data; each try capped at "
                  f"{probe.runner.data_limit / GIB:.2f} GiB (RLIMIT_DATA)")
        result = probe.run()
    except ProbeError as e:
        sys.stderr.write(f"error: {one_line(e)}\n")
        return 1
    written = finish(probe, result, args.csv, draw=not args.no_map)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def finish(probe: Probe, result: dict, csv_path: str | None = None, draw: bool = True) -> list[Path]:
    """Write the probe's points (its own CSV, and the shared table on GPU presets), probe.json and the map."""
    source = probe.source()
    points = result["points"]
    own = probe.out / "measured_peaks.csv"
    if own.exists():
        own.unlink()
    written = [append_csv(own, points, source)]
    on_gpu = all(planner.gpu_preset(s.gpu).device == "cuda" for s in probe.settings)
    target = Path(csv_path) if csv_path else (MEASURED_FILE if on_gpu else None)
    if target is not None and points:
        written.append(append_csv(target, points, source))
    summary = {"axis": probe.axis, "cap_gib": probe.cap_gib, "baseline_gib": probe.baseline_gib,
               "steps": probe.steps, "executor": probe.runner.name, "source": source,
               "searches": result["searches"]}
    rundir.atomic_write_json(probe.out / "probe.json", summary)
    written.append(probe.out / "probe.json")
    if draw and probe.axis:
        from ftgrid.launch import plots
        axis, rows = map_rows(read_points(own), probe.axis, probe.cap_gib)
        fig = plots.oom_map(rows, axis, title=f"OOM boundary: {probe.settings[0].gpu}")
        written.append(plots.save(fig, probe.out / "oom_map.png"))
    return written


if __name__ == "__main__":
    sys.exit(main())
