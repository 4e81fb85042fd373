"""Time and cost before the queue: each cell's predicted step time, hours and GPU-hours, and the
SLURM time limit rendered from them when the user gives no --time.

Pure and fast like the memory planner (no torch import): counted from the model registry, the dataset
catalogue and a per-preset throughput prior (launch/gpus.yaml), replaced by measured rows where
benchmarks/results/ holds them.

Counted FLOPs (model FLOPs; the convention benchmarks/throughput.py measures MFU in):
  per token of an example of n tokens:  c·N + 6·N_trainable + 12·L·d·n
  N = weights of every matmul (all 2-D weights incl. the lm_head, not the input or position embeddings;
  MoE: the experts a token is routed to); c = 4 for a frozen base (forward 2N + the backward's input
  gradients 2N; LoRA methods), c = 6 for full fine-tuning (then N_trainable is not added again);
  attention: PaLM's 12·L·d·context per token, context = the token's own example, not halved for
  causality (the time counts what runs: where a mask is built, packed rows or eager attention, the
  kernel covers the whole row, so context = seq_len there). Gradient checkpointing recomputes the
  forward (+2N); DPO runs two sequences per row and a reference forward (+2N). Evaluation passes
  count the forward only (2N + 4·L·d·n).

Tokens: the dataset tier's training rows (catalogue row counts less the eval hold-out) × epochs × the
mean example length (MEAN_TOKENS for the shipped samples, measured with the project tokenizer; the
seq_len cap where the length is unknown: an upper bound, so a time limit errs long). Packed rows hold
the tokens of several examples (bfd fills them almost completely).

Step time = the step's tokens × FLOPs per token / (GPUs × achieved FLOP/s) + a fixed per-step overhead
(optimizer step, data loading, launch latency: what dominates a tiny model on a CPU).
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ftgrid import KIT_ROOT
from ftgrid.errors import ConfigError
from ftgrid.execution import execution
from ftgrid.registry import model_spec

RESULTS_DIR = KIT_ROOT / "benchmarks" / "results"

# Mean tokens per training example (prompt + response after the chat template) of the shipped samples,
# measured with `python -m data_prep --dataset NAME:large --seq-len 512 --json` (stats.tokens / train_rows,
# the project tokenizer of the tiny models). Datasets not listed count every example at the seq_len cap.
MEAN_TOKENS = {"wordnet": 43.1, "dolly-sample": 54.0, "openorca-sample": 88.9, "lima-sample": 57.7,
               "platypus-sample": 224.6}
PACKED_FILL = 0.97  # real tokens per packed row slot (bfd leaves a few percent of each row empty)

# --time when none is given: the largest cell's prediction × TIME_FACTOR + TIME_EXTRA_MIN (start-up:
# imports, model load, the final save), rounded up to minutes, at most TIME_CAP_MIN (a cluster's
# MaxTime caps it further, launch/cluster.py). Where nothing can be predicted: DEFAULT_TIME.
TIME_FACTOR = 1.5
TIME_EXTRA_MIN = 10
TIME_CAP_MIN = 7 * 24 * 60
DEFAULT_TIME = "24:00:00"


# ---------------------------------------------------------------------------------------------
# FLOPs


def token_flops(n_matmul: int, trainable: int, c: int, layers: int, hidden: int, context: float) -> float:
    """Training FLOPs of one token whose example is `context` tokens long (the module docstring's count)."""
    return c * n_matmul + (0 if c == 6 else 6 * trainable) + 12 * layers * hidden * context


def example_flops(n: int, f: dict) -> float:
    """Training FLOPs of one example of n tokens; f = {N, trainable, c, L, d} (benchmarks/throughput.py)."""
    return n * token_flops(f["N"], f["trainable"], f["c"], f["L"], f["d"], n)


def flop_counts(run: dict) -> dict:
    """{N, trainable, c, L, d} of a cell, counted from the registry (as the planner counts parameters)."""
    from ftgrid.launch import plan as planner
    spec = model_spec(planner._get(run, "model"))
    geo = planner._geometry(spec)
    method = planner._get(run, "method")
    if method == "full":
        trainable = geo.total
    else:
        rank = int(run.get("rank") or 16)
        trainable = planner._counts(spec, method, rank, planner.resolve_targets(
            spec, planner._get(run, "target_modules"), run.get("layers_to_transform")))[1]
    n = geo.linear_weights
    if spec.experts:  # a token runs through its top-k experts only
        per_expert = sum(lin.din * lin.dout for lin in geo.experts)
        n -= sum(st.layers for st in geo.stacks) * (spec.experts - spec.experts_per_token) * per_expert
    c = 6 if method == "full" else 4
    if planner._get(run, "grad_ckpt"):
        c += 2
    if planner._get(run, "task") == "dpo":
        c += 2
    return {"N": n, "trainable": trainable, "c": c, "L": sum(st.layers for st in geo.stacks), "d": spec.hidden}


# ---------------------------------------------------------------------------------------------
# Throughput: prior (gpus.yaml) or measured (benchmarks/results)


@dataclass(frozen=True)
class Rate:
    flops: float              # achieved FLOP/s per GPU (per process on the cpu preset)
    step_overhead_s: float
    source: str               # the gpus.yaml prior or the results file(s) it was measured in


_RESULT_FLOPS = re.compile(r"counted FLOPs per real token: ([0-9.eE+-]+) GFLOP")


def measured_flops(path: Path) -> float | None:
    """The achieved FLOP/s of the kit's fastest row in one benchmarks/throughput.py result file."""
    text = path.read_text(errors="replace")
    per_token = _RESULT_FLOPS.search(text)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if not per_token or len(lines) < 3:
        return None
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = next((i for i, name in enumerate(header) if name.startswith("real tokens/")), None)
    if col is None:
        return None
    rates = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > col and not cells[0].startswith("baseline"):
            try:
                rates.append(float(cells[col].replace(",", "")))
            except ValueError:
                continue
    return max(rates) * float(per_token.group(1)) * 1e9 if rates else None


def _result_prefix(preset: str) -> str:
    return preset.split("-")[0]  # h100-80gb -> h100_*.md, cpu -> cpu_*.md


@functools.lru_cache(maxsize=None)
def preset_rate(gpu: str, results_dir: Path = RESULTS_DIR) -> Rate:
    """Measured rows for a GPU preset where benchmarks/results/ has them (their mean), else the prior."""
    from ftgrid.launch import plan as planner
    preset = planner.gpu_preset(gpu)
    # GPU presets only: the cpu file counts the throughput ladder on pythia-tiny's synthetic data; the cpu
    # preset's rate is calibrated on the entrypoint itself (benchmarks/bench_time.py).
    files = sorted(Path(results_dir).glob(f"{_result_prefix(gpu)}_*.md")) \
        if preset.device == "cuda" and Path(results_dir).is_dir() else []
    measured = [(f.name, r) for f in files for r in [measured_flops(f)] if r]
    if measured:
        return Rate(sum(r for _, r in measured) / len(measured), preset.step_overhead_s,
                    ", ".join(name for name, _ in measured))
    if not preset.peak_tflops:
        raise ConfigError(f"gpu preset {gpu!r} has no peak_tflops in launch/gpus.yaml: no time can be predicted")
    return Rate(preset.peak_tflops * 1e12 * preset.mfu, preset.step_overhead_s, f"gpus.yaml prior for {gpu}")


# ---------------------------------------------------------------------------------------------
# Tokens


@functools.lru_cache(maxsize=1024)  # a sweep's cells share a few datasets
def _request(dataset: str):
    from ftgrid.data_prep import catalog
    return catalog.parse(dataset)


def train_rows(dataset: str, eval_rows: int = 0) -> int | None:
    """Training rows of a dataset tier (catalogue counts less the eval hold-out); None where unknown
    (a local file or a hub set without a published size, asked for whole or as a fraction)."""
    request = _request(dataset)
    entry, tier = request.entry, request.tier
    if entry.full_rows:
        held = 0 if entry.eval_split else (eval_rows or min(entry.eval_rows, max(1, entry.full_rows // 10)))
        return request.tier_rows(max(entry.full_rows - held, 1))
    counts = [v for v in entry.tiers.values() if isinstance(v, int)]
    if counts:  # a shipped sample: its largest tier is (about) all its training rows
        return request.tier_rows(max(counts))
    return tier if isinstance(tier, int) else None


def mean_tokens(dataset: str, seq_len: int) -> float:
    name = _request(dataset).entry.name
    return float(min(MEAN_TOKENS.get(name, seq_len), seq_len))


# ---------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class Estimate:
    steps: int
    step_s: float             # one optimizer step
    hours: float              # training and evaluation, wall time
    gpus: int
    tokens: float             # training tokens over all epochs
    flops_per_token: float
    source: str               # where the throughput came from

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus


def estimate(run: dict, *, gpu: str, gpus: int = 1) -> Estimate | None:
    """One cell's predicted time; None where the dataset's size is unknown."""
    from ftgrid.launch import plan as planner
    get = functools.partial(planner._get, run)
    rows = train_rows(get("dataset"), int(get("eval_rows") or 0))
    if rows is None:
        return None
    seq_len, micro, accum = int(get("seq_len")), int(get("micro_batch")), int(get("grad_accum"))
    mean = mean_tokens(get("dataset"), seq_len)
    per_epoch = rows * mean * (2 if get("task") == "dpo" else 1)  # dpo: a chosen and a rejected sequence
    batch = micro * accum * gpus
    spec = model_spec(get("model"))
    packing = planner._effective_packing(run, spec)
    units = math.ceil(per_epoch / (seq_len * PACKED_FILL)) if packing != "none" else rows  # rows per epoch
    steps_per_epoch = max(1, math.ceil(units / batch))
    max_steps = int(get("max_steps"))
    steps = max_steps if max_steps > 0 else math.ceil(steps_per_epoch * float(get("epochs")))
    f = flop_counts(run)
    exe = execution(spec, task=get("task"), packing=packing, chunked_loss=bool(get("chunked_loss")),
                    attn_implementation=run.get("attn_implementation") or "sdpa", zero=0)
    # what runs: with a mask (packed rows, eager) attention covers the whole row, not each example
    context = seq_len if exe.mask != "none" else mean
    per_token = token_flops(f["N"], f["trainable"], f["c"], f["L"], f["d"], context)
    rate = preset_rate(gpu)
    step_s = per_epoch / steps_per_epoch * per_token / (gpus * rate.flops) + rate.step_overhead_s
    # evaluation before training, at the end, and every eval_every steps: forward only
    entry = _request(get("dataset")).entry
    eval_tokens = (int(get("eval_rows") or 0) or entry.eval_rows) * mean
    evals = 2 + (steps // int(get("eval_every")) if int(get("eval_every")) > 0 else 0)
    eval_s = evals * eval_tokens * (2 * f["N"] + 4 * f["L"] * f["d"] * context) / (gpus * rate.flops)
    return Estimate(steps=steps, step_s=step_s, hours=(steps * step_s + eval_s) / 3600, gpus=gpus,
                    tokens=per_epoch * steps / steps_per_epoch, flops_per_token=per_token, source=rate.source)


# ---------------------------------------------------------------------------------------------
# The SLURM time limit


def duration_text(hours: float) -> str:
    """A predicted duration as people read it: 45 s, 12 min, 3.4 h, 2.1 d."""
    seconds = hours * 3600
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def minutes_text(minutes: int) -> str:
    """Whole minutes as a SLURM time: HH:MM:00, or D-HH:MM:00 from a day on."""
    days, rest = divmod(int(minutes), 24 * 60)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def time_limit_minutes(hours: float) -> int:
    return min(math.ceil(hours * 60 * TIME_FACTOR + TIME_EXTRA_MIN), TIME_CAP_MIN)


def predicted_time(estimates) -> tuple[str, str]:
    """(SLURM time, why) for a sweep whose user gave no --time: from its longest cell."""
    known = [e for e in estimates if e is not None]
    if not known:
        return DEFAULT_TIME, "no cell's time could be predicted (dataset size unknown)"
    longest = max(e.hours for e in known)
    minutes = time_limit_minutes(longest)
    capped = " (capped)" if minutes == TIME_CAP_MIN else ""
    return minutes_text(minutes), (f"predicted from the plan: longest cell {longest:.2f} h x {TIME_FACTOR:g} + "
                                   f"{TIME_EXTRA_MIN} min{capped}")


def time_warning(time: str, estimates) -> str | None:
    """One line when the user's --time is below the longest cell's predicted time."""
    from ftgrid.launch.spec import slurm_time_minutes
    known = [e.hours for e in estimates if e is not None]
    if not known or slurm_time_minutes(time) >= max(known) * 60:
        return None
    return (f"warning: --time {time} is below the predicted {max(known):.2f} h of the longest cell; "
            f"raise it or leave --time out to use the prediction")
