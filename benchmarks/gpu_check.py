#!/usr/bin/env python3
"""GPU truth in one call: the planner against measured peaks, OOM boundaries, throughput, the CUDA loss tests.

    bash benchmarks/gpu_check.sh --out "$OUT"                                   # an offline GPU machine (wheels)
    python benchmarks/gpu_check.py --device cuda --out DIR [--append-measured]  # the same, stack already there
    python benchmarks/gpu_check.py --device cpu --tiny --out runs/gpu-check     # CPU rehearsal, same code path
    python benchmarks/gpu_check.py --device cpu --tiny --quick --out DIR        # a few cells of each (the test)

Sections, in this order, under one time budget (--budget-s; a section that would not finish in what is
left is skipped and the report says so); the report and the CSV are rewritten after every measurement,
so a killed run still leaves what it measured:
  tests       pytest tests/finetune/test_losses.py -k cuda (the CUDA bf16 equality of the chunked loss)
  planner     PLANNER_CELLS: random-init models at real shapes, one training step (two optimizer steps,
              so the optimizer states exist during a forward) through the kit's own code -- the RunConfig,
              finetune.models (config, checkpointing, LoRA/QLoRA), the chunked loss and the kit's Trainer
              (finetune.tasks) -- measured torch.cuda.max_memory_allocated next to
              launch.plan.plan_cell(run, gpu=h200-141gb). The split is fixed in advance: cells at even
              positions of PLANNER_CELLS may inform coefficients ("calibration"), the odd ones are
              "held-out"; the report gives max and mean |error| of each half.
  oom         BOUNDARY_CELLS: cards of 80, 40, 24 and 16 GB emulated with
              torch.cuda.set_per_process_memory_fraction (the card's memory less its CUDA context), the
              largest micro batch measured by launch.probe.search (each try a fresh process) against the
              planner's max_micro_batch for that card.
  throughput  benchmarks/throughput.py (a subprocess per row): pythia-1.4b LoRA r16 on the preset targets and
              on all linear layers, Alpaca-like lengths and every sequence 2048; tokens/s, ratio, MFU.

Every memory measurement runs in a child process (`--worker`): a cell the planner puts within
SHARED_WORKER_FRACTION of the card shares a child with other such cells (it cannot run out of memory),
any other cell and every boundary try gets its own (after a CUDA OOM the allocator stays dirty; on the
CPU only the boundary tries do). QLoRA needs bitsandbytes: without it those cells are skipped and the
report says so.

--tiny swaps each model for its tiny twin of the same family (pythia-tiny, llama-tiny, mistral-tiny,
gpt2-tiny) and divides sequence lengths by 8; on the CPU the "peak" is the process's sampled RSS growth
over the cell and a card is a byte budget on it: the numbers prove the plumbing, not the planner.

Outputs in --out: <gpu>_gpu_check.md (versions that ran, the tables), <gpu>_gpu_check.csv (one row per
measurement), <gpu>_pythia-1.4b_r16-*.md (throughput.py's tables), logs/. --append-measured also appends
the planner rows to launch/measured_peaks.csv and copies the table to --out/measured_peaks.csv (on --device
cpu: only to that copy, never the real file).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ftgrid.launch import plan as planner  # noqa: E402
from ftgrid.launch.probe import search  # noqa: E402
from ftgrid.registry import model_spec  # noqa: E402

GIB = float(2**30)
THIS = Path(__file__).resolve()
THROUGHPUT_PY = ROOT / "benchmarks" / "throughput.py"
PLAN_GPU = "h200-141gb"          # the planner preset of the machine the real run measures on
SHARED_WORKER_FRACTION = 0.6     # predicted peak below this share of the card: no OOM possible, cells share a child
OPTIMIZER_STEPS = 2              # the second step's forward runs with the optimizer states allocated
TINY_TWIN = {"gpt_neox": "pythia-tiny", "llama": "llama-tiny", "mistral": "mistral-tiny", "gpt2": "gpt2-tiny"}
TINY_SEQ_DIVISOR = 8
TINY_MAX_MICRO_BATCH = 8         # --tiny boundary searches stop here (each try is a process start on the CPU)
DOCS_PER_PACKED_ROW = 4
EXIT_OOM = 3
CPU_BUDGET_DIVISOR = 256         # CPU rehearsal: a card of X GiB is a budget of X/256 GiB of RSS growth
# Section shares of --budget-s: a section starts only with its estimate left, and stops starting
# measurements once its share is spent (later sections keep theirs).
SECTION_SHARE = {"tests": 0.05, "planner": 0.35, "oom": 0.30, "throughput": 0.30}


# ---------------------------------------------------------------------------------------------
# The cells


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    rank: int | None = None
    targets: str = "preset"
    micro_batch: int = 1
    seq_len: int = 2048
    grad_ckpt: bool = False
    packing: str = "none"       # none | bfd (DOCS_PER_PACKED_ROW examples per row, position ids restarting)

    @property
    def label(self) -> str:
        bits = [self.model, self.method]
        if self.method in ("lora", "qlora", "lora-8bit"):
            bits.append(f"r{self.rank or 16} {self.targets}")
        bits += [f"mb{self.micro_batch}", f"s{self.seq_len}"]
        if self.grad_ckpt:
            bits.append("ckpt")
        if self.packing != "none":
            bits.append("packed")
        return " ".join(bits)

    def shrunk(self) -> "Cell":
        """The tiny twin of this cell (same method and layout, a tiny model, sequences / 8, the rank
        at most half the tiny hidden size)."""
        tiny = TINY_TWIN[model_spec(self.model).family]
        rank = None if self.rank is None else min(self.rank, model_spec(tiny).hidden // 2)
        return replace(self, model=tiny, rank=rank, seq_len=max(16, self.seq_len // TINY_SEQ_DIVISOR))

    def run(self) -> dict:
        """Run-config fields (ftgrid.schema.RunConfig keys): the planner's input and the worker's config."""
        run = {"model": self.model, "method": self.method, "micro_batch": self.micro_batch,
               "seq_len": self.seq_len, "grad_ckpt": self.grad_ckpt, "packing": self.packing}
        if self.method in ("lora", "qlora", "lora-8bit"):
            run.update(rank=self.rank or 16, target_modules=self.targets)
        return run


def C(model, method, rank, targets, mb, seq, ckpt=False, packed=False) -> Cell:
    return Cell(model, method, rank if method != "full" else None, targets if method != "full" else "preset",
                mb, seq, ckpt, "bfd" if packed else "none")


# Position in this list fixes the split: even = calibration, odd = held-out (decided before any
# measurement; the list alternates models and methods so both halves span them). All fit an H200.
PLANNER_CELLS = [
    C("pythia-160m", "lora", 16, "preset", 16, 2048),
    C("pythia-160m", "full", None, "", 8, 1024, packed=True),
    C("pythia-410m", "lora", 16, "all-linear", 8, 2048, packed=True),
    C("pythia-410m", "full", None, "", 4, 2048, ckpt=True),
    C("pythia-1b", "lora", 64, "preset", 16, 1024),
    C("pythia-1b", "qlora", 16, "preset", 8, 2048),
    C("pythia-1.4b", "lora", 16, "preset", 8, 2048),
    C("pythia-1.4b", "lora", 16, "all-linear", 8, 2048),
    C("pythia-1.4b", "lora", 16, "preset", 16, 2048, ckpt=True, packed=True),
    C("pythia-1.4b", "full", None, "", 4, 2048),
    C("pythia-1.4b", "full", None, "", 2, 1024, ckpt=True, packed=True),
    C("pythia-1.4b", "qlora", 64, "all-linear", 4, 2048, ckpt=True),
    C("pythia-2.8b", "lora", 16, "preset", 4, 2048, packed=True),
    C("pythia-2.8b", "lora", 32, "all-linear", 2, 2048),
    C("pythia-2.8b", "full", None, "", 1, 1024, ckpt=True),
    C("pythia-160m", "lora", 16, "all-linear", 4, 512, ckpt=True),
    C("pythia-6.9b", "lora", 16, "preset", 2, 2048),
    C("pythia-6.9b", "lora", 16, "all-linear", 1, 2048, ckpt=True, packed=True),
    C("pythia-410m", "lora", 8, "preset", 16, 512, packed=True),
    C("pythia-6.9b", "lora", 64, "preset", 4, 1024, packed=True),
    C("llama-2-7b", "lora", 16, "preset", 4, 2048),
    C("llama-2-7b", "lora", 16, "all-linear", 2, 1024, ckpt=True, packed=True),
    C("pythia-1b", "full", None, "", 8, 512),
    C("pythia-1b", "lora", 16, "preset", 1, 2048, ckpt=True),
    C("mistral-7b", "lora", 16, "preset", 4, 2048, packed=True),
    C("mistral-7b", "lora", 64, "all-linear", 2, 2048, ckpt=True),
    C("mistral-7b", "qlora", 256, "preset", 1, 2048),
    C("llama-2-7b", "lora", 64, "all-linear", 8, 512),
]
QUICK_PLANNER = [0, 1, 5, 25]   # --quick: LoRA, full packed, QLoRA, a GQA model with checkpointing


@dataclass(frozen=True)
class Card:
    """An emulated card: the allocator may hold (visible - context) GiB, as the preset counts it."""
    name: str
    preset: str | None          # the planner preset of this size, None when launch/gpus.yaml has none
    visible_gib: float
    context_gib: float

    @property
    def allowed_gib(self) -> float:
        return self.visible_gib - self.context_gib

    def capacity_gib(self) -> float:
        """What the planner compares a peak with (its fragmentation reserve taken off)."""
        if self.preset:
            return planner.gpu_preset(self.preset).capacity_gib
        frag = planner.gpu_preset(PLAN_GPU).fragmentation
        return self.allowed_gib * (1 - frag)


def _card(name: str, preset: str | None, visible: float | None = None, context: float | None = None) -> Card:
    if preset:
        p = planner.gpu_preset(preset)
        return Card(name, preset, p.visible_gib, p.visible_gib - p.mem_gib)
    return Card(name, None, visible, context)


CARDS = {"80GB": _card("80GB", "a100-80gb"), "40GB": _card("40GB", "a100-40gb"),
         # no 24 GB preset in launch/gpus.yaml: an A10/L4's 22.06 GiB visible, the T4's context
         "24GB": _card("24GB", None, 22.06, 0.6), "16GB": _card("16GB", "t4-16gb")}


@dataclass(frozen=True)
class Boundary:
    cell: Cell                  # micro_batch is the searched axis
    card: str
    values: tuple = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 40, 48, 56, 64)
    claim: str = ""             # what the kit's documentation says (checked against the measurement)


BOUNDARY_CELLS = [
    Boundary(C("pythia-6.9b", "full", None, "", 1, 2048), "80GB", (1,),
             "pythia-6.9b full fine-tuning does not fit an 80 GB card (FACTS: OOM on an H100)"),
    Boundary(C("gpt2-medium", "lora", 16, "preset", 8, 1024), "16GB", (1, 2, 3, 4, 6, 8, 12, 16),
             "GPT-2 medium LoRA at micro batch 8, seq 1024 does not fit a 16 GB T4"),
    Boundary(C("mistral-7b", "qlora", 256, "preset", 1, 2048), "40GB", (1, 2, 3, 4, 6, 8),
             "Mistral-7B QLoRA r256 fits a 40 GB card (micro batch 1, seq 2048)"),
    Boundary(C("pythia-1.4b", "lora", 16, "preset", 1, 2048), "24GB"),
    Boundary(C("pythia-1.4b", "full", None, "", 1, 1024), "80GB"),
    Boundary(C("pythia-2.8b", "lora", 16, "all-linear", 1, 2048, ckpt=True), "40GB"),
]
QUICK_BOUNDARY = [0]            # --quick: one try (pythia-6.9b full on 80 GB)

# (file suffix, throughput.py flags), most wanted first; real sizes (--tiny shrinks them). Fewer steps than
# throughput.py's defaults so the four fit the budget: 6 measured steps of 64 Alpaca-like examples, 4 of
# 16 x 2048 tokens; no --compile (its warm-up alone takes minutes).
THROUGHPUT_ROWS = [
    ("r16-qkv_alpaca", ["--targets", "preset", "--steps", "6", "--warmup", "2"]),
    ("r16-qkv_full2048", ["--targets", "preset", "--full-length", "--max-len", "2048", "--micro-batch", "8",
                          "--examples-per-step", "16", "--steps", "4", "--warmup", "1"]),
    ("r16-all-linear_alpaca", ["--targets", "all-linear", "--steps", "6", "--warmup", "2"]),
    ("r16-all-linear_full2048", ["--targets", "all-linear", "--full-length", "--max-len", "2048",
                                 "--micro-batch", "8", "--examples-per-step", "16", "--steps", "4",
                                 "--warmup", "1"]),
]
TINY_THROUGHPUT = ["--model", "pythia-tiny", "--median", "24", "--max-len", "64", "--micro-batch", "4",
                   "--examples-per-step", "8", "--steps", "2", "--warmup", "1", "--repeat", "1"]


# ---------------------------------------------------------------------------------------------
# The worker: measure cells in this process (run by the parent as `--worker JOB.json`)


class RssSampler(threading.Thread):
    """CPU stand-in for max_memory_allocated: the largest resident set seen, sampled every 2 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = self.rss()
        self.stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def run(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.rss())


def fixed_rows(cell: Cell, n: int, vocab: int, seed: int) -> list[dict]:
    """n rows of exactly seq_len tokens (no padding); packed rows hold DOCS_PER_PACKED_ROW examples
    with position ids restarting (data_prep.packing's layout), the first token of each unlabelled."""
    import random
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(cell.seq_len)]
        labels = list(ids)
        row = {"input_ids": ids, "labels": labels}
        if cell.packing != "none":
            doc = max(1, cell.seq_len // DOCS_PER_PACKED_ROW)
            row["position_ids"] = [i % doc for i in range(cell.seq_len)]
            for start in range(0, cell.seq_len, doc):
                labels[start] = -100
        rows.append(row)
    return rows


def build_cell_model(cfg, spec, tokenizer, device: str, bases: Path):
    """The cell's model as the entrypoint has it after finetune.models.build_model: built in place
    from the registry config (the weights' values do not change memory), or -- quantized methods,
    which bitsandbytes quantizes while loading -- saved once per model and loaded by build_model."""
    import torch
    from ftgrid.finetune import models

    config = models.base_config(spec, tokenizer)
    torch.manual_seed(cfg.seed)
    if models.quantization_config(spec, cfg) is None:
        with torch.device(device):
            model = models.model_class(spec, cfg).from_config(config, dtype=models.weights_dtype(cfg))
        return models.prepare_model(model, spec, cfg, tokenizer)
    path = bases / f"{spec.name}-{str(models.weights_dtype(cfg)).split('.')[-1]}"
    if not (path / "config.json").exists():
        with torch.device(device):
            base = models.model_class(spec, cfg).from_config(config, dtype=models.weights_dtype(cfg))
        base.save_pretrained(path)
        del base
        if device == "cuda":
            torch.cuda.empty_cache()
    return models.build_model(spec, cfg, tokenizer, path)


def measure(task: dict, tokenizer, device: str, scratch: Path) -> dict:
    """One cell: two optimizer steps through the kit's Trainer; its peak (GiB) over them."""
    import gc
    import torch
    from ftgrid import schema
    from ftgrid.data_prep.packing import PackedCollator
    from ftgrid.finetune import losses, tasks

    cell = Cell(**task["cell"])
    spec = model_spec(cell.model)
    out = scratch / "runs" / re.sub(r"[^A-Za-z0-9._-]+", "-", cell.label)
    cfg = schema.from_dict({**cell.run(), "name": out.name, "output_dir": str(out), "init": "random",
                            "max_steps": OPTIMIZER_STEPS, "grad_accum": 1, "lr": 1e-5, "warmup": 0.0,
                            "schedule": "constant", "logging_steps": 1, "dataloader_workers": 0,
                            "group_by_length": False, "wandb_mode": "disabled", "seed": 0})
    gc.collect()
    sampler = None
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        sampler = RssSampler()
        before = sampler.peak
        sampler.start()
    t0 = time.time()
    try:
        model = build_cell_model(cfg, spec, tokenizer, device, scratch / "bases")
        if cfg.chunked_loss and not losses.unsupported_reason(model):   # as finetune/train.py's setup
            losses.install_chunked_loss(model, chunk_size=cfg.loss_chunk_size)
        args = tasks.training_args(cfg, spec, report_to=[])
        args.eval_on_start = False      # the untrained eval loss adds time, not memory
        rows = fixed_rows(cell, cell.micro_batch * OPTIMIZER_STEPS, min(spec.vocab, len(tokenizer)), 0)
        data = tasks.Data(train=rows, eval=rows[:1], stats={},
                          collator=PackedCollator(tokenizer.pad_token_id) if cell.packing != "none" else None)
        trainer = tasks.make_trainer(cfg, spec, args, model, tokenizer, data)
        trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = sampler.peak - before
        return {"peak_gib": round(peak / GIB, 4), "leftover_gib": round(before / GIB, 4), "oom": False,
                "seconds": round(time.time() - t0, 1)}
    finally:
        if sampler is not None:
            sampler.stop.set()
        shutil.rmtree(out, ignore_errors=True)
        model = trainer = None  # noqa: F841 - drop them before the next cell's empty_cache
        gc.collect()


def worker(job_path: str) -> int:
    """Measure the job's cells in order, one JSON line per cell into the job's results file (flushed),
    so the parent knows what finished if this process dies. Exits EXIT_OOM at the first OOM."""
    import torch
    import transformers
    from ftgrid.finetune.train import is_oom
    from ftgrid.registry import load_tokenizer

    transformers.logging.set_verbosity_error()
    job = json.loads(Path(job_path).read_text())
    device, scratch = job["device"], Path(job["scratch"])
    tokenizer = load_tokenizer(model_spec("pythia-tiny"))   # ids only: the project's tokenizer, no hub
    if device == "cpu":
        torch.set_num_threads(int(job.get("threads", 1)))
    elif job.get("allowed_gib"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, job["allowed_gib"] * GIB / total))
    with open(job["results"], "a") as res:
        for task in job["tasks"]:
            res.write(json.dumps({"id": task["id"], "started": True}) + "\n")
            res.flush()
            try:
                r = measure(task, tokenizer, device, scratch)
                budget = job.get("allowed_gib") if device == "cpu" else None
                if budget is not None and r["peak_gib"] > budget:   # the CPU rehearsal's byte budget
                    r.update(oom=True, error=f"over the emulated budget of {budget:g} GiB")
            except Exception as e:  # noqa: BLE001 - one line per cell, the parent decides
                if not is_oom(e):
                    import traceback
                    traceback.print_exc()
                r = {"oom": is_oom(e), "peak_gib": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            res.write(json.dumps({"id": task["id"], **r}) + "\n")
            res.flush()
            if r["oom"] and device == "cuda":
                return EXIT_OOM     # the allocator is dirty now: the parent starts a fresh process
    return 0


# ---------------------------------------------------------------------------------------------
# The parent


class Budget:
    def __init__(self, seconds: float):
        self.start = time.time()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.time()

    def elapsed(self) -> float:
        return time.time() - self.start


@dataclass
class Check:
    args: argparse.Namespace
    budget: Budget
    out: Path
    prefix: str
    scratch: Path
    rows: list = field(default_factory=list)         # CSV rows (planner + oom tries)
    sections: dict = field(default_factory=dict)      # name -> {"status":..., "lines": [...]}
    versions: dict = field(default_factory=dict)
    workers_started: int = 0

    @property
    def device(self) -> str:
        return self.args.device

    @property
    def plan_gpu(self) -> str:
        return PLAN_GPU if self.device == "cuda" else "cpu"

    def cell(self, cell: Cell) -> Cell:
        return cell.shrunk() if self.args.tiny else cell

    # -- children ---------------------------------------------------------------------------

    def run_worker(self, tasks: list[dict], allowed_gib: float | None, deadline: float) -> dict:
        """Run tasks in fresh worker processes until each has a result; a worker that dies (OOM, crash,
        timeout) is replaced for the tasks after the one it died on. Returns {id: result}."""
        results: dict = {}
        pending = list(tasks)
        while pending:
            left = deadline - time.time()
            if left < 5:
                for t in pending:
                    results[t["id"]] = {"oom": False, "peak_gib": None, "error": "skipped: out of time"}
                break
            self.workers_started += 1
            n = self.workers_started
            job = {"device": self.device, "scratch": str(self.scratch), "tasks": pending,
                   "results": str(self.scratch / f"worker-{n}.jsonl"), "allowed_gib": allowed_gib,
                   "threads": self.args.threads}
            job_path = self.scratch / f"worker-{n}.json"
            job_path.write_text(json.dumps(job))
            log = self.out / "logs" / f"worker-{n}.log"
            code = run_logged([sys.executable, str(THIS), "--worker", str(job_path)], log, self.args, left)
            started, lines = None, []
            if Path(job["results"]).exists():
                lines = Path(job["results"]).read_text().splitlines()
            for line in lines:
                r = json.loads(line)
                if r.pop("started", False):
                    started = r["id"]
                else:
                    results[r["id"]] = r
                    started = None
            died = "timeout" if code == "timeout" else f"worker exit {code}"
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[:400]
            if started is not None:       # died inside this task
                results[started] = {"oom": code == EXIT_OOM, "peak_gib": None, "error": f"{died}: {tail}"}
            elif code != 0 and not lines:  # died before its first task (an import, CUDA set-up): no retry
                for t in pending:
                    results[t["id"]] = {"oom": False, "peak_gib": None, "error": f"{died} before any cell: {tail}"}
            pending = [t for t in pending if t["id"] not in results]
        return results

    # -- sections ---------------------------------------------------------------------------

    def section_tests(self, deadline: float) -> None:
        sec = self.sections["tests"]
        if importlib.util.find_spec("pytest") is None:
            sec.update(status="skipped", lines=["pytest is not installed here: carry its wheels (.whl/) and rerun"])
            return
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/finetune/test_losses.py",
               "-k", "cuda", "-rA"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(self.args),
                                  timeout=max(5.0, deadline - time.time()))
            text, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout or b""
            text, code = out.decode(errors="replace") if isinstance(out, bytes) else out, "timeout"
        (self.out / "logs" / "test_losses.log").write_text(text)
        summary = [l for l in text.splitlines() if re.search(r"(PASSED|FAILED|SKIPPED|ERROR|passed|failed|skipped)", l)]
        sec.update(status=f"done (pytest exit {code})",
                   lines=[f"`{' '.join(cmd[1:])}`", "", "```", *summary[-12:], "```"])

    def planner_tasks(self) -> list[dict]:
        cells = PLANNER_CELLS if not self.args.quick else [PLANNER_CELLS[i] for i in QUICK_PLANNER]
        tasks = []
        for cell in cells:
            pos = PLANNER_CELLS.index(cell)
            tasks.append({"id": f"p{pos:02d}", "cell": asdict(self.cell(cell)), "real": cell.label,
                          "split": "calibration" if pos % 2 == 0 else "held-out"})
        return tasks

    def section_planner(self, deadline: float) -> None:
        sec = self.sections["planner"]
        tasks = self.planner_tasks()
        bnb = importlib.util.find_spec("bitsandbytes") is not None
        skipped = [t for t in tasks if not bnb and t["cell"]["method"] == "qlora"]
        tasks = [t for t in tasks if t not in skipped]
        cap = planner.gpu_preset(self.plan_gpu).capacity_gib
        for t in tasks:
            p = planner.plan_cell(Cell(**t["cell"]).run(), gpu=self.plan_gpu)
            t["predicted_gib"], t["fits"] = p.peak_gib, p.fits
        # on a GPU, a cell near the card's size or quantized (bitsandbytes' own CUDA allocations) runs alone
        shared = [t for t in tasks if self.device == "cpu" or (t["predicted_gib"] < SHARED_WORKER_FRACTION * cap
                                                             and t["cell"]["method"] != "qlora")]
        alone = [t for t in tasks if t not in shared]
        sec["skipped"] = [f"{t['real']} (bitsandbytes is not installed)" for t in skipped]
        rows = {t["id"]: t for t in tasks}

        def record(results):
            for tid, r in results.items():
                t = rows[tid]
                self.rows.append(self.csv_row("planner", t, r))
            self.write()

        record(self.run_worker(shared, None, deadline))
        for t in alone:
            if time.time() > deadline - 5:
                record({t["id"]: {"oom": False, "peak_gib": None, "error": "skipped: section budget spent"}})
                continue
            record(self.run_worker([t], None, deadline))
        sec["status"] = "done"

    def section_oom(self, deadline: float) -> None:
        sec = self.sections["oom"]
        bnb = importlib.util.find_spec("bitsandbytes") is not None
        chosen = BOUNDARY_CELLS if not self.args.quick else [BOUNDARY_CELLS[i] for i in QUICK_BOUNDARY]
        sec["boundaries"] = []
        for b in chosen:
            card = CARDS[b.card]
            base = self.cell(b.cell)
            entry = {"cell": b.cell.label.replace(f"mb{b.cell.micro_batch} ", ""), "card": b.card,
                     "preset": card.preset or f"no preset; capacity {card.capacity_gib():.2f} GiB as presets count",
                     "claim": b.claim, "predicted": self.predicted_max_micro_batch(base, card),
                     "measured": None, "tries": {}, "note": ""}
            sec["boundaries"].append(entry)
            if b.cell.method == "qlora" and not bnb:
                entry["note"] = "skipped: bitsandbytes is not installed"
                continue
            if time.time() > deadline - 10:
                entry["note"] = "skipped: section budget spent"
                continue
            allowed = card.allowed_gib if self.device == "cuda" else self.cpu_budget_gib(card)

            def fits(mb, base=base, entry=entry, allowed=allowed, b=b):
                if time.time() > deadline - 5:
                    raise TimeoutError
                t = {"id": f"b-{b.card}-{len(entry['tries'])}", "cell": asdict(replace(base, micro_batch=mb)),
                     "split": "boundary", "real": replace(b.cell, micro_batch=mb).label}
                r = self.run_worker([t], allowed, deadline)[t["id"]]
                t["predicted_gib"] = planner.plan_cell(Cell(**t["cell"]).run(), gpu=self.plan_gpu).peak_gib
                self.rows.append(self.csv_row(f"oom {b.card}", t, r))
                entry["tries"][mb] = "OOM" if r["oom"] else (f"{r['peak_gib']:.2f} GiB" if r.get("peak_gib") is not None
                                                             else f"failed: {r.get('error', '')[:80]}")
                self.write()
                if r.get("peak_gib") is None and not r["oom"]:
                    raise RuntimeError(r.get("error", "failed"))
                return not r["oom"]

            values = [v for v in b.values if not self.args.tiny or v <= TINY_MAX_MICRO_BATCH] or [b.values[0]]
            guess = entry["predicted"] or values[0]
            try:
                best, _ = search(values, fits, guess=guess)
                entry["measured"] = best or 0
            except TimeoutError:
                entry["note"] = "stopped: section budget spent"
            except RuntimeError as e:
                entry["note"] = f"a try failed: {str(e)[:120]}"
            self.write()
        sec["status"] = "done"

    def cpu_budget_gib(self, card: Card) -> float:
        """CPU rehearsal: a card is a byte budget on the sampled RSS growth, scaled down to the tiny
        cells' size (16 GB -> 55 MiB, 80 GB -> 307 MiB)."""
        return card.allowed_gib / CPU_BUDGET_DIVISOR

    def predicted_max_micro_batch(self, cell: Cell, card: Card) -> int:
        """The planner's largest micro batch on this card: plan_cell's max_micro_batch on the card's
        preset; without a preset (24 GB) or on the CPU, the largest one whose predicted peak is within
        the card's capacity (the CPU's byte budget)."""
        run = cell.run()
        if self.device == "cuda" and card.preset:
            return planner.plan_cell(run, gpu=card.preset).max_micro_batch
        cap = card.capacity_gib() if self.device == "cuda" else self.cpu_budget_gib(card)
        best, _ = search(list(range(1, planner.MAX_MICRO_BATCH + 1)),
                         lambda b: planner.plan_cell({**run, "micro_batch": b}, gpu=self.plan_gpu).peak_gib <= cap)
        return best or 0

    def section_throughput(self, deadline: float) -> None:
        sec = self.sections["throughput"]
        sec["runs"] = []
        rows = THROUGHPUT_ROWS if not self.args.quick else THROUGHPUT_ROWS[:1]
        for suffix, flags in rows:
            name = f"{self.prefix}_{'pythia-tiny' if self.args.tiny else 'pythia-1.4b'}_{suffix}.md"
            out = self.out / name
            if self.args.tiny:
                flags = [f for f in flags if f not in ("--full-length",)][:2] + TINY_THROUGHPUT + (
                    ["--full-length"] if "--full-length" in flags else [])
            else:
                flags = ["--model", "pythia-1.4b"] + flags
            cmd = [sys.executable, str(THROUGHPUT_PY), "--device", self.device, *flags, "--out", str(out)]
            run = {"file": name, "command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""), "summary": ""}
            sec["runs"].append(run)
            left = deadline - time.time()
            if left < 20:
                run["summary"] = "skipped: section budget spent"
                continue
            log = self.out / "logs" / f"throughput_{suffix}.log"
            code = run_logged(cmd, log, self.args, left)
            if out.exists():
                text = out.read_text()
                ratio = next((l for l in text.splitlines() if l.startswith("ours / baseline")), "")
                run["summary"] = ratio or "no ratio line (a row failed: see the file)"
                run["table"] = [l for l in text.splitlines() if l.startswith("|")]
            else:
                run["summary"] = f"no output (exit {code}): see logs/{log.name}"
            self.write()
        sec["status"] = "done"

    # -- rows and the report -----------------------------------------------------------------

    def csv_row(self, section: str, task: dict, r: dict) -> dict:
        cell = Cell(**task["cell"])
        measured = r.get("peak_gib")
        pred = task.get("predicted_gib")
        err = (pred - measured) if (measured is not None and pred is not None and not r.get("oom")) else None
        return {"section": section, "id": task["id"], "split": task["split"], "cell": task["real"],
                "model": cell.model, "method": cell.method, "rank": cell.rank or "",
                "targets": cell.targets if cell.method != "full" else "", "micro_batch": cell.micro_batch,
                "seq_len": cell.seq_len, "grad_ckpt": str(cell.grad_ckpt).lower(), "packing": cell.packing,
                "plan_gpu": self.plan_gpu, "predicted_gib": pred, "measured_gib": measured,
                "error_gib": None if err is None else round(err, 4),
                "error_pct": None if err is None or not measured else round(100 * err / measured, 2),
                "oom": str(bool(r.get("oom"))).lower(), "leftover_gib": r.get("leftover_gib"),
                "seconds": r.get("seconds"), "note": r.get("error", "")}

    def write(self) -> None:
        """The CSV and the report, whole, after every measurement (atomic renames)."""
        buf = io.StringIO()
        fields = list(self.csv_row("x", {"id": "", "split": "", "real": "", "cell": asdict(PLANNER_CELLS[0])}, {}))
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write(self.out / f"{self.prefix}_gpu_check.csv", buf.getvalue())
        atomic_write(self.out / f"{self.prefix}_gpu_check.md", self.report())

    def planner_stats(self) -> dict:
        out = {}
        for split in ("held-out", "calibration"):
            errs = [r for r in self.rows if r["section"] == "planner" and r["split"] == split
                    and r["error_gib"] is not None]
            pct = [abs(r["error_pct"]) for r in errs if r["error_pct"] is not None]  # none where 0 was measured
            if errs:
                out[split] = {"n": len(errs), "max_abs_gib": max(abs(r["error_gib"]) for r in errs),
                              "mean_abs_gib": sum(abs(r["error_gib"]) for r in errs) / len(errs),
                              "max_abs_pct": max(pct, default=math.nan),
                              "mean_abs_pct": sum(pct) / len(pct) if pct else math.nan}
        return out

    def report(self) -> str:
        a = self.args
        kind = "torch.cuda.max_memory_allocated" if self.device == "cuda" else \
            "sampled RSS growth of the worker process (CPU rehearsal: not comparable to the planner)"
        lines = [f"# GPU check: planner, OOM boundaries, throughput ({self.versions.get('device', self.device)})", "",
                 f"- command: `{' '.join(['python', 'benchmarks/gpu_check.py', *sys.argv[1:]])}`",
                 f"- versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items() if k != "device"),
                 f"- mode: {'tiny twins (sequences / 8), ' if a.tiny else ''}{'quick subset, ' if a.quick else ''}"
                 f"device {self.device}; peaks: {kind}; planner preset `{self.plan_gpu}`",
                 f"- elapsed {self.budget.elapsed():.0f} s of a {a.budget_s:.0f} s budget", ""]
        for name in SECTION_SHARE:
            sec = self.sections.get(name, {})
            lines += [f"## {name}: {sec.get('status', 'not started')}", ""]
            if name == "tests":
                lines += sec.get("lines", []) + [""]
            elif name == "planner":
                lines += self.planner_lines(sec)
            elif name == "oom":
                lines += self.oom_lines(sec)
            elif name == "throughput":
                for run in sec.get("runs", []):
                    lines += [f"### `{run['file']}`", "", f"`{run['command']}`", "", run["summary"], ""]
                    lines += run.get("table", []) + [""]
        return "\n".join(lines) + "\n"

    def planner_lines(self, sec: dict) -> list[str]:
        lines = ["Split (fixed before measuring): cells at even positions of `PLANNER_CELLS` are calibration "
                 "(may inform coefficients), odd positions are held-out (only checked).", ""]
        stats = self.planner_stats()
        for split in ("held-out", "calibration"):
            s = stats.get(split)
            if s:
                lines.append(f"- {split}: {s['n']} cells, |predicted - measured| max {s['max_abs_gib']:.2f} GiB "
                             f"({s['max_abs_pct']:.1f}%), mean {s['mean_abs_gib']:.2f} GiB ({s['mean_abs_pct']:.1f}%)")
            else:
                lines.append(f"- {split}: no measured cells")
        for s in sec.get("skipped", []):
            lines.append(f"- skipped: {s}")
        lines += ["", "| id | split | cell | measured as | predicted GiB | measured GiB | error GiB | error % | note |",
                  "|---|---|---|---|---:|---:|---:|---:|---|"]
        for r in sorted((r for r in self.rows if r["section"] == "planner"), key=lambda r: r["id"]):
            lines.append(f"| {r['id']} | {r['split']} | {r['cell']} | {r['model']} mb{r['micro_batch']} "
                         f"s{r['seq_len']} | {fmt(r['predicted_gib'])} | {fmt(r['measured_gib'])} | "
                         f"{fmt(r['error_gib'])} | {fmt(r['error_pct'], 1)} | {'OOM ' if r['oom'] == 'true' else ''}"
                         f"{r['note'][:120]} |")
        return lines + [""]

    def oom_lines(self, sec: dict) -> list[str]:
        cards = ", ".join(f"{c.name} = {c.allowed_gib:.2f} GiB for the allocator ({c.preset or 'no preset'})"
                          for c in CARDS.values())
        lines = [f"Cards emulated with `torch.cuda.set_per_process_memory_fraction`: {cards}. Each try is a fresh "
                 f"process; the search is `launch.probe.search` from the planner's guess." if self.device == "cuda"
                 else "CPU rehearsal: a card is a byte budget on the worker's sampled RSS growth "
                      f"(card GiB / {CPU_BUDGET_DIVISOR}), checked after the step: plumbing only.", "",
                 "| cell | card | planner max micro batch | measured max micro batch | tries | claim | agrees |",
                 "|---|---|---:|---:|---|---|---|"]
        for e in sec.get("boundaries", []):
            tries = ", ".join(f"mb{k}: {v}" for k, v in sorted(e["tries"].items()))
            agree = "" if e["measured"] is None else ("yes" if e["measured"] == e["predicted"] else "no")
            lines.append(f"| {e['cell']} | {e['card']} ({e['preset']}) | {e['predicted']} | "
                         f"{e['measured'] if e['measured'] is not None else e['note'] or 'n/a'} | {tries} | "
                         f"{e['claim']} | {agree} |")
        return lines + [""]


def fmt(v, digits: int = 2) -> str:
    return "" if v is None or v == "" else f"{float(v):.{digits}f}"


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_logged(cmd, log: Path, args, timeout_s: float):
    """A child in its own session, output to `log`; its exit code, or "timeout" (its whole group killed)
    once the section's budget is spent."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=child_env(args),
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return "timeout"


def child_env(args) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    return env


def versions(device: str) -> dict:
    import torch
    out = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'cpu'})",
           "python": platform.python_version(), "torch": torch.__version__}
    if device == "cuda":
        out["cuda"] = torch.version.cuda
        out["gpu memory"] = f"{torch.cuda.get_device_properties(0).total_memory / GIB:.2f} GiB"
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "triton", "liger_kernel", "flash_attn",
                 "pytest"):
        if importlib.util.find_spec(name) is None:
            out[name] = "absent"
            continue
        try:
            from importlib.metadata import version
            out[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a version is informative only
            out[name] = "present"
    return out


def device_prefix(device: str, name: str) -> str:
    if device == "cpu":
        return "cpu-rehearsal"
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def append_measured(path: Path, rows: list[dict], source: str) -> int:
    """Append the planner rows to a measured_peaks.csv (launch.plan.measured_points' table): the gpu
    column is the planner preset, the GPU's own name goes into `source`; a `packing` column is added
    to the header when missing (older rows then read as unpacked, as plan_measured assumes)."""
    text = path.read_text() if path.exists() else ""
    header = next(csv.reader([text.splitlines()[0]])) if text.strip() else \
        "model,method,rank,targets,zero,gpus,micro_batch,seq_len,grad_ckpt,gpu,peak_gib,oom,source,loss".split(",")
    body = text.splitlines()[1:] if text.strip() else []
    if "packing" not in header:
        header.append("packing")
        body = [line + "," if line.strip() and not line.startswith("#") else line for line in body]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    n = 0
    for r in rows:
        if r["measured_gib"] is None or r["oom"] == "true":
            continue
        w.writerow({"model": r["model"], "method": r["method"], "rank": r["rank"], "targets": r["targets"], "zero": 0,
                    "gpus": 1, "micro_batch": r["micro_batch"], "seq_len": r["seq_len"], "grad_ckpt": r["grad_ckpt"],
                    "gpu": r["plan_gpu"], "peak_gib": f"{r['measured_gib']:.3f}", "oom": "false",
                    "source": f"{source}, {r['split']}", "loss": "chunked", "packing": r["packing"]})
        n += 1
    lines = buf.getvalue().splitlines()
    atomic_write(path, "\n".join([lines[0], *body, *lines[1:]]) + "\n")
    return n


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny twins of every model, sequences / 8 (CPU rehearsal)")
    p.add_argument("--quick", action="store_true", help="a few cells of each section (the test)")
    p.add_argument("--out", required=True, help="folder for the report, the CSV, throughput tables and logs")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget for everything (default 450)")
    p.add_argument("--sections", default=",".join(SECTION_SHARE), help="comma list of " + ", ".join(SECTION_SHARE))
    p.add_argument("--append-measured", action="store_true",
                   help="append the planner rows to launch/measured_peaks.csv (cpu: to a copy in --out)")
    p.add_argument("--scratch", default=None, help="bases and run folders (default: a temporary folder, removed)")
    p.add_argument("--threads", type=int, default=1, help="CPU only: torch threads per child")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTION_SHARE)
    if unknown:
        p.error(f"unknown section {sorted(unknown)[0]!r}; valid: {', '.join(SECTION_SHARE)}")
    if args.budget_s <= 0 or not math.isfinite(args.budget_s):
        p.error("--budget-s must be a positive number of seconds")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1])
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.stderr.write("error: --device cuda but no CUDA device is visible\n")
            return 2
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="ftgrid-gpu-check-"))
    scratch.mkdir(parents=True, exist_ok=True)
    ver = versions(args.device)
    check = Check(args=args, budget=budget, out=out, prefix=device_prefix(args.device, ver["device"]),
                  scratch=scratch, versions=ver)
    wanted = [s for s in SECTION_SHARE if s in args.sections.split(",")]
    check.sections = {s: {"status": "pending" if s in wanted else "not asked"} for s in SECTION_SHARE}
    check.write()
    try:
        for i, name in enumerate(wanted):
            # this section's share of what is left, in proportion to the shares still to come
            rest = sum(SECTION_SHARE[s] for s in wanted[i:])
            deadline = time.time() + budget.left() * SECTION_SHARE[name] / rest
            if budget.left() < 15:
                check.sections[name]["status"] = f"skipped: {budget.left():.0f} s of the budget left"
                check.write()
                continue
            check.sections[name]["status"] = "running"
            t0 = time.time()
            print(f"[gpu_check] {name} (until +{deadline - budget.start:.0f} s)", flush=True)
            getattr(check, f"section_{name}")(deadline)
            check.sections[name]["status"] += f" in {time.time() - t0:.0f} s"
            check.write()
        if args.append_measured:
            target = planner.MEASURED_FILE if args.device == "cuda" else out / "measured_peaks.csv"
            if args.device != "cuda":
                shutil.copyfile(planner.MEASURED_FILE, target)
            day = time.strftime("%Y-%m-%d")
            kind = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "cpu rss"
            n = append_measured(target, [r for r in check.rows if r["section"] == "planner"],
                                f"gpu_check {day}: {ver['device']}, random init, {OPTIMIZER_STEPS} steps, {kind}")
            if args.device == "cuda":   # --out is what comes back from a GPU machine: the table goes too
                shutil.copyfile(target, out / "measured_peaks.csv")
            print(f"[gpu_check] appended {n} rows to {target} (the whole table: {out / 'measured_peaks.csv'})")
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    check.write()
    stats = check.planner_stats()
    print(f"[gpu_check] done in {budget.elapsed():.0f} s: {out / (check.prefix + '_gpu_check.md')}"
          + (f"; held-out |error| max {stats['held-out']['max_abs_gib']:.2f} GiB, mean "
             f"{stats['held-out']['mean_abs_gib']:.2f} GiB" if "held-out" in stats else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
