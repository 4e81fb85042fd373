"""Train one cell: the one entrypoint every launcher runs.

    python finetune/train.py --cell runs/<sweep>/<cell>/cell.yaml             # one process (CPU or 1 GPU)
    python finetune/train.py --model pythia-tiny --rank 8 --out runs/one      # one-off run from flags
    python finetune/train.py --model llama-tiny --task dpo --dataset pairs:small --out runs/dpo
    torchrun --nproc_per_node 8 finetune/train.py --cell .../cell.yaml        # one node, 8 GPUs
    deepspeed --num_gpus 8 finetune/train.py --cell .../cell.yaml             # one node, DeepSpeed launcher
    deepspeed --hostfile hosts.txt finetune/train.py --cell .../cell.yaml     # several nodes, no SLURM
    sbatch runs/<sweep>/<cell>/job.sbatch                                     # SLURM: srun + torchrun

Phases: setup (config -> tokenizer -> data -> random base if any -> training arguments -> model: the
arguments come before the model so a ZeRO-3 config loads it partitioned) -> train (the task's Trainer;
DeepSpeed when the cell has a ds_config) -> finish (eval, adapter/model, samples.jsonl, metrics.json,
status.json, wandb). Tasks: sft | dpo | token-classification | summarization (finetune/tasks.py);
methods: full | lora | qlora | lora-8bit (finetune/models.py). Only rank 0 writes files and talks to wandb.
Exit codes: 0 done, 1 failed, 2 bad config (one `error:` line, nothing written), 3 out of memory
(status `oom` with the phase, step and peak memory), 4 preempted (status `preempted`).

Preemption and resume: SIGUSR1 (SLURM's `--signal=USR1@<grace>` warning), SIGUSR2 (the warning submitit
asks for in its arrays) or SIGTERM sets a flag; at the next optimizer step's end every rank (the flag is
all-reduced when torch.distributed runs) saves a full
Trainer checkpoint under <out>/checkpoints (weights/adapter, optimizer, scheduler, RNG, step, tokens seen),
status becomes `preempted` and the process exits 4 so SLURM (--requeue / scontrol requeue) or a sweep
re-run starts it again. `save_every` N also checkpoints every N steps. A start that finds a complete
<out>/checkpoints/checkpoint-* resumes from the latest: the Trainer restores the data position and RNG,
so the resumed run trains the same steps on the same batches as an uninterrupted one.

Hangs: a run that, once training started, makes no progress (no step, eval batch or CPU work) for
`watchdog_minutes` (default 30; 0 = off) dumps every thread's stack into <out>/logs/stacks-<host>-<pid>.txt,
is marked `failed` with that reason and exits 1 (see Watchdog).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftgrid.cli import CliParser  # noqa: E402
from ftgrid import validate  # noqa: E402
from ftgrid import schema as run_config  # noqa: E402
from ftgrid import rundir  # noqa: E402
from ftgrid import startup  # noqa: E402
from ftgrid.errors import ConfigError, one_line  # noqa: E402
from ftgrid.schema import RunConfig  # noqa: E402

EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_OOM, EXIT_PREEMPTED = 1, 2, 3, 4
# Set by SIGUSR1/SIGUSR2/SIGTERM (the handler only flags); acted on at the next step end by PreemptCallback.
PREEMPT = {"signal": None, "stopped": False}
# Where the run is, for status.json when it fails (an OOM reports its phase, step and peak memory).
PROGRESS = {"phase": "setup", "step": 0, "beat": 0.0}


# ---------------------------------------------------------------------------------------------
# configuration


def parse_args(argv):
    p = CliParser(aliases=run_config.FIELD_ALIASES, hints=run_config.FIELD_HINTS, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cell", help="cell.yaml written by launch/grid.py")
    p.add_argument("--out", help="run directory for a one-off run (default: the cell.yaml's folder)")
    # The DeepSpeed launcher (and older torch.distributed.launch) pass the local rank as an argument;
    # LOCAL_RANK in the environment says the same, so the value itself is not used.
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    for f in dataclasses.fields(RunConfig):
        if f.name != "output_dir":
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                           help=f"override {f.name} (default {f.default!r})")
    return p.parse_args(argv)


def load_config(args) -> RunConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
                 if f.name != "output_dir" and getattr(args, f.name) is not None}
    if args.cell:
        base = run_config.load(args.cell).to_dict()
        base.update(overrides)
        cfg = run_config.from_dict(base)
    else:
        cfg = run_config.from_dict(overrides)
    if args.out:
        cfg.output_dir = args.out
    if not cfg.output_dir:
        cfg.output_dir = str(Path("runs") / cfg.name)
    validate.writable_dir(cfg.output_dir)  # under a file, read-only, /proc, too long: refused before it is made
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output directory {cfg.output_dir} is a file")
    return cfg


def check_dataset(cfg: RunConfig) -> None:
    from ftgrid.data_prep import catalog
    request = catalog.parse(cfg.dataset)
    task = getattr(request.entry, "task", None)
    if request.entry.name in catalog.CATALOG and task and task != cfg.task:
        raise ConfigError(f"dataset {request.entry.name!r} is a {task} dataset, but the task is {cfg.task!r}")
    if cfg.generate_prompts:  # a bad prompts line fails now, not after training
        from ftgrid.data_prep.prompts import read_prompts
        read_prompts(cfg.generate_prompts, cfg.task)


def abort_wandb() -> None:
    """A run still open here failed: close it as failed (no-op when wandb never started)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


def ensure_distributed_env(cfg: RunConfig) -> None:
    # DeepSpeed in a single plain `python` process still wants the torch.distributed variables,
    # else it falls back to mpi4py discovery.
    if cfg.deepspeed and "RANK" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))


# ---------------------------------------------------------------------------------------------
# phases


def setup(cfg: RunConfig):
    # peft imports bitsandbytes eagerly (which compiles its kernels at import: about 1.7 s of every start
    # on a CPU), accelerate imports DeepSpeed (0.7 s, and wandb with it): a run that uses neither runs
    # as if it were not installed.
    for package, used in (("bitsandbytes", cfg.uses_bitsandbytes), ("deepspeed", bool(cfg.deepspeed))):
        if not used:
            sys.modules.setdefault(package, None)
    with startup.heavy_imports():
        import torch
        import transformers
        from ftgrid.finetune import models, tasks

    spec = run_config.model_spec(cfg.model)
    transformers.set_seed(cfg.seed)
    run_dir = Path(cfg.output_dir)
    tokenizer = models.load_tokenizer(spec, cfg)
    wandb_mode = run_config.effective_wandb_mode(cfg)
    data = tasks.load_data(cfg, spec, tokenizer)  # tokenized once (data_prep's cache), read by every rank
    source = cfg.weights or spec.pretrained_source
    if not cfg.weights and not models.use_pretrained(spec, cfg):  # built by rank 0 before any ZeRO-3 context
        source = models.random_base(spec, cfg, tokenizer, run_dir / models.BASE_DIR, data.label_names,
                                    builder=int(os.environ.get("RANK", "0")) == 0)
    # The arguments come before the model: with a ZeRO-3 config, from_pretrained then loads inside
    # deepspeed.zero.Init, so no rank ever holds the whole model.
    args = tasks.training_args(cfg, spec, report_to=["wandb"] if wandb_mode != "disabled" else [])
    if cfg.deepspeed:
        # With use_cpu=True the Trainer starts torch.distributed but not DeepSpeed's comm layer, and
        # zero.Init would then see a world of 1 (batch-size assertion): attach it to the process group.
        import deepspeed
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    lora = None
    if cfg.task == "dpo" and cfg.is_lora:  # trl wraps the model itself; the reference = adapter disabled
        model = models.build_model(spec, cfg, tokenizer, source, data.label_names, apply_method=False)
        lora = models.lora_config(spec, cfg)
    else:
        model = models.build_model(spec, cfg, tokenizer, source, data.label_names)
        if cfg.chunked_loss and models.head_kind(spec, cfg) == "causal":
            from ftgrid.finetune import losses
            reason = losses.unsupported_reason(model)
            if reason:
                print(f"[train] chunked loss off for {cfg.model}: {reason}", flush=True)
            else:
                losses.install_chunked_loss(model, chunk_size=cfg.loss_chunk_size)
    local_fraction = models.local_fraction(model)
    quantized = models.quantized_layers(model)
    leaves = models.zero3_leaves(model)
    if wandb_mode != "disabled" and args.process_index == 0:
        start_wandb(cfg, spec, run_dir, wandb_mode)
    return dict(spec=spec, tokenizer=tokenizer, args=args, data=data, model=model, lora=lora,
                source=str(source), local_fraction=local_fraction, quantized=quantized, zero3_leaves=leaves, wandb_mode=wandb_mode,
                on_gpu=torch.cuda.is_available())


def wandb_identity(cfg: RunConfig, run_dir: Path, environ=os.environ) -> dict:
    """The cell's wandb run: a user's own WANDB_PROJECT wins over the cell's wandb_project, and the run id
    is derived from the cell (its name and folder), so every start of the cell - a requeue after
    preemption, a re-run after a failure - continues the same run (resume="allow") instead of a new one."""
    import hashlib
    key = f"{cfg.wandb_group}/{cfg.name}/{Path(run_dir).resolve()}"
    return {"project": environ.get("WANDB_PROJECT") or cfg.wandb_project,
            "id": hashlib.sha256(key.encode()).hexdigest()[:32]}


def start_wandb(cfg: RunConfig, spec, run_dir: Path, mode: str) -> None:
    """One wandb run per cell, from rank 0 only; the Trainer's WandbCallback logs into it (it logs on
    the main process only). Files go under the cell's run directory."""
    import wandb
    who = wandb_identity(cfg, run_dir)
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_PROJECT", who["project"])  # never overwrite the user's own
    wandb.init(project=who["project"], id=who["id"], resume="allow", group=cfg.wandb_group or None, name=cfg.name,
               dir=str(run_dir), mode=mode, job_type=cfg.task, config=cfg.to_dict(),
               tags=[f"model:{cfg.model}", f"method:{cfg.method}", f"task:{cfg.task}", f"family:{spec.family}"])


def ProgressCallback():
    import transformers

    class _Progress(transformers.TrainerCallback):
        # Every callback is a heartbeat for the Watchdog.
        def on_step_begin(self, args, state, control, **kwargs):
            PROGRESS.update(phase="train", step=state.global_step, beat=time.monotonic())

        def on_step_end(self, args, state, control, **kwargs):
            PROGRESS.update(beat=time.monotonic())

        def on_substep_end(self, args, state, control, **kwargs):  # a micro batch of gradient accumulation
            PROGRESS.update(beat=time.monotonic())

        def on_prediction_step(self, args, state, control, **kwargs):  # an eval batch
            PROGRESS.update(beat=time.monotonic())

        def on_evaluate(self, args, state, control, **kwargs):
            PROGRESS.update(step=state.global_step, beat=time.monotonic())
    return _Progress()


class Watchdog(threading.Thread):
    """Turns a hang into a failure: when the run, once training started, makes no progress for `minutes` -
    no training step, eval batch or log (ProgressCallback's heartbeats) and no CPU work in this process
    (generating and lm_eval scoring use CPU; a deadlock, such as a forked worker stuck on a lock, uses
    none) - it writes every thread's stack to <out>/logs/stacks-<host>-<pid>.txt and to stderr, marks the
    run `failed` saying so (rank 0), ends this process's children and exits 1, so the job's time is not
    burnt and the log shows where it stood."""

    CPU_SHARE = 0.05  # CPU seconds per wall second below which the process counts as idle

    def __init__(self, minutes: float, run_dir: Path, is_main: bool):
        super().__init__(name="ftgrid-watchdog", daemon=True)
        self.limit_s, self.run_dir, self.is_main = minutes * 60, Path(run_dir), is_main

    def run(self) -> None:
        poll = min(max(self.limit_s / 10, 0.1), 30.0)
        last_beat, last_cpu, idle_since = PROGRESS["beat"], time.process_time(), time.monotonic()
        while True:
            time.sleep(poll)
            beat, cpu, now = PROGRESS["beat"], time.process_time(), time.monotonic()
            # setup is not watched: other ranks sleep-poll while rank 0 tokenizes (data_prep's own limit)
            if beat != last_beat or cpu - last_cpu > self.CPU_SHARE * poll or PROGRESS["phase"] == "setup":
                idle_since = now
            last_beat, last_cpu = beat, cpu
            if now - idle_since >= self.limit_s:
                self.fail(now - idle_since)

    def fail(self, idle_s: float) -> None:
        import faulthandler
        import multiprocessing
        stacks = self.run_dir / "logs" / f"stacks-{socket.gethostname()}-{os.getpid()}.txt"
        stacks.parent.mkdir(parents=True, exist_ok=True)
        with open(stacks, "w") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        why = (f"no progress for {idle_s / 60:.1f} min (watchdog_minutes {self.limit_s / 60:g}; phase "
               f"{PROGRESS['phase']}, step {PROGRESS['step']}): stacks in {stacks}")
        print(f"error: {why}", file=sys.stderr, flush=True)
        if self.is_main:
            rundir.write_status(self.run_dir, "failed", error=why, watchdog=True, ended=time.time(),
                                phase=PROGRESS["phase"], step=PROGRESS["step"])
        for child in multiprocessing.active_children():  # e.g. the stuck pool's workers
            child.kill()
        os._exit(EXIT_FAILED)  # the main thread is stuck: no clean shutdown is possible


def on_preempt_signal(signum, frame) -> None:
    PREEMPT["signal"] = signum
    print(f"[train] got signal {signum}: checkpoint at the end of this step, then exit {EXIT_PREEMPTED}",
          file=sys.stderr, flush=True)


def install_signal_handlers() -> None:
    import signal
    # USR1: the kit's own sbatch (--signal=USR1@grace); USR2: what submitit's arrays ask SLURM for.
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, on_preempt_signal)


def PreemptCallback():
    import torch
    import torch.distributed as dist
    import transformers

    class _Preempt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            flag = PREEMPT["signal"] is not None
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                # Any rank signalled -> all ranks stop at this same step (the save is collective).
                device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
                t = torch.tensor([1.0 if flag else 0.0], device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = bool(t.item() > 0)
            if flag and state.global_step < state.max_steps:
                PREEMPT["stopped"] = True
                control.should_save = True
                control.should_training_stop = True
            return control
    return _Preempt()


def latest_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint (trainer_state.json is written last) under <run_dir>/checkpoints."""
    found = []
    for d in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        step = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and step.isdigit() and (d / "trainer_state.json").is_file():
            found.append((int(step), d))
    return str(max(found)[1]) if found else None


def peak_memory() -> tuple[float, str]:
    """(GiB, kind): CUDA max allocated on a GPU, the process's peak RSS on CPU."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_max_rss"


def train(cfg: RunConfig, parts: dict):
    from ftgrid.finetune import models, tasks

    trainer = tasks.make_trainer(cfg, parts["spec"], parts["args"], parts["model"], parts["tokenizer"],
                                 parts["data"], lora=parts["lora"])
    trainer.add_callback(ProgressCallback())
    trainer.add_callback(PreemptCallback())
    args = trainer.args
    parts["trainable"], parts["total"] = models.count_params(trainer.model)
    if models.head_kind(parts["spec"], cfg) == "causal" and cfg.task != "dpo":
        # Causal LMs sum their loss and divide by the step's target tokens only when the Trainer can
        # pass num_items_in_batch; without it accumulation would average micro-batch means.
        if not trainer.model_accepts_loss_kwargs:
            raise RuntimeError(f"{cfg.model}: the model's forward takes no loss kwargs; the loss would not be "
                               f"normalised by tokens across gradient accumulation")
    if args.process_index == 0:
        print(f"[train] {cfg.name}: model={cfg.model} method={cfg.method} task={cfg.task} rank={cfg.rank} "
              f"params trainable/total={parts['trainable']:,}/{parts['total']:,} world={args.world_size} "
              f"global batch={cfg.micro_batch}x{cfg.grad_accum}x{args.world_size}="
              f"{cfg.micro_batch * cfg.grad_accum * args.world_size} train rows={len(parts['data'].train)} "
              f"local params={parts['local_fraction']:.2f}", flush=True)
    assert args.train_batch_size * args.gradient_accumulation_steps * args.world_size == \
        cfg.micro_batch * cfg.grad_accum * args.world_size
    t0 = time.time()
    resume = latest_checkpoint(Path(cfg.output_dir))
    if resume and args.process_index == 0:
        print(f"[train] {cfg.name}: resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - t0
    if PREEMPT["stopped"]:
        return trainer, dict(preempted=True, step=trainer.state.global_step, resumed_from=resume,
                             checkpoint=latest_checkpoint(Path(cfg.output_dir)))
    initial = next(h for h in trainer.state.log_history if "eval_loss" in h)
    final = trainer.evaluate()
    return trainer, dict(initial_eval=initial, final_eval=final, train_seconds=train_seconds,
                         train_result=result)


TASK_METRICS = {  # metrics.json name -> the Trainer's eval key
    "dpo": {"reward_accuracy": "eval_rewards/accuracies", "reward_margin": "eval_rewards/margins",
            "reward_chosen": "eval_rewards/chosen", "reward_rejected": "eval_rewards/rejected"},
    "token-classification": {"precision": "eval_precision", "recall": "eval_recall", "f1": "eval_f1",
                             "accuracy": "eval_accuracy"},
    "summarization": {"rouge1": "eval_rouge1", "rouge2": "eval_rouge2", "rougeL": "eval_rougeL"},
}


def task_metrics(cfg: RunConfig, evaluation: dict) -> dict:
    return {name: evaluation[key] for name, key in TASK_METRICS.get(cfg.task, {}).items() if key in evaluation}


def train_task_metrics(cfg: RunConfig, history: list[dict]) -> dict:
    """DPO: the reward accuracy and margin of the last logged training steps."""
    if cfg.task != "dpo":
        return {}
    last = next((h for h in reversed(history) if "rewards/accuracies" in h), None)
    return {} if last is None else {"train_reward_accuracy": last["rewards/accuracies"],
                                    "train_reward_margin": last["rewards/margins"]}


def finish(cfg: RunConfig, parts: dict, trainer, out: dict, started: float) -> dict:
    import torch.distributed as dist
    from transformers.integrations import is_deepspeed_zero3_enabled
    from ftgrid.finetune import models, tasks

    args = trainer.args
    spec, tokenizer, data = parts["spec"], parts["tokenizer"], parts["data"]
    distributed = dist.is_available() and dist.is_initialized()
    synced = is_deepspeed_zero3_enabled() and distributed and dist.get_world_size() > 1
    # Every rank reports what it did, so a test (and a human) can see all ranks took part.
    # ZeRO-3 holds ~1/world of the weights per rank: from loading on (zero.Init), or, for quantized
    # bases (loaded whole), from the engine's start on.
    me = {"rank": args.process_index, "host": socket.gethostname(), "steps": trainer.state.global_step,
          "local_param_fraction_at_load": parts["local_fraction"],
          "local_param_fraction": models.local_fraction(trainer.model)}
    ranks = [me]
    if distributed:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, me)
    run_dir = Path(cfg.output_dir)
    # save_model gathers ZeRO-3 shards (stage3_gather_16bit_weights_on_model_save) on every rank.
    saved = run_dir / ("adapter" if cfg.is_lora else "model")
    t_save = time.time()
    trainer.save_model(str(saved))
    parts["phase_seconds"]["save"] = time.time() - t_save
    t_generate = time.time()
    final = dict(out["final_eval"])
    kind = models.head_kind(spec, cfg)
    # Generations: all ranks run them (ZeRO-3 gathers layers collectively), rank 0 writes them.
    samples = []
    if kind == "causal" and cfg.task == "summarization":
        rows = tasks.prompts_from_eval(data.eval)
        gens = tasks.generate(trainer.model, tokenizer, [r["prompt_ids"] for r in rows], cfg.max_new_tokens,
                              batch_size=cfg.micro_batch, synced=synced)
        refs = data.eval_references if data.eval_references and len(data.eval_references) == len(rows) else \
            [tokenizer.decode(r["target_ids"], skip_special_tokens=True).strip() for r in rows]
        texts = [tokenizer.decode(g["ids"], skip_special_tokens=True).strip() for g in gens]
        summaries = tasks.rouge(texts, refs)
        final.update({f"eval_{k}": v for k, v in summaries.items()})
        samples = [dict(index=r["index"], prompt=tokenizer.decode(r["prompt_ids"]), reference=ref,
                        generation=text, new_tokens=len(g["ids"]), stopped_at_eos=g["stopped_at_eos"])
                   for r, g, ref, text in zip(rows, gens, refs, texts)][:max(cfg.num_samples, 0)]
    elif kind == "causal" and cfg.task == "sft" and cfg.num_samples:
        rows = tasks.prompts_from_eval(data.eval, cfg.num_samples)
        gens = tasks.generate(trainer.model, tokenizer, [r["prompt_ids"] for r in rows], cfg.max_new_tokens,
                              batch_size=cfg.micro_batch, synced=synced)
        samples = [dict(index=r["index"], prompt=tokenizer.decode(r["prompt_ids"]),
                        reference=tokenizer.decode(r["target_ids"]),
                        generation=tokenizer.decode(g["ids"]), new_tokens=len(g["ids"]),
                        stopped_at_eos=g["stopped_at_eos"]) for r, g in zip(rows, gens)]
    generations = []
    if cfg.generate_prompts and kind == "causal":  # the user's prompts (generate_prompts / grid --generate)
        from ftgrid.data_prep.prompts import read_prompts
        from ftgrid.finetune import generate
        generations = generate.generate_records(trainer.model, tokenizer, cfg, read_prompts(cfg.generate_prompts,
                                                cfg.task), generate.settings(cfg.max_new_tokens), synced=synced)
    parts["phase_seconds"]["generate"] = time.time() - t_generate
    if args.process_index != 0:
        return {}
    if cfg.is_lora:
        check_adapter(saved, must_have_moved=took_a_step(trainer))
    lm_eval = run_lm_eval(cfg, saved, parts) if cfg.lm_eval_tasks else {}
    if generations:
        generate.write(run_dir, generations)
    if samples:
        rundir.atomic_write_text(run_dir / "samples.jsonl",
                                 "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    history = trainer.state.log_history
    # Runs shorter than logging_steps log no step loss: fall back to the run's mean loss.
    train_losses = [h["loss"] for h in history if "loss" in h] or [out["train_result"].training_loss]
    wall = time.time() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    peak, peak_kind = peak_memory()
    eval_loss = final["eval_loss"]
    ds_facts = deepspeed_facts(trainer)
    lm_loss = cfg.task in run_config.LM_LOSS_TASKS  # a per-token LM loss: perplexity means something
    metrics = {
        "name": cfg.name, "model": cfg.model, "method": cfg.method, "task": cfg.task, "rank": cfg.rank,
        "alpha": cfg.alpha, "lr": cfg.lr, "seed": cfg.seed, "dataset": cfg.dataset,
        "train_loss_first": train_losses[0],
        "train_loss_last": train_losses[-1],
        "train_loss_min": min(train_losses),
        "train_loss_mean": out["train_result"].training_loss,
        "initial_eval_loss": out["initial_eval"]["eval_loss"],
        "eval_loss": eval_loss,
        "perplexity": math.exp(min(eval_loss, 50.0)) if lm_loss else None,
        "task_metrics": {**task_metrics(cfg, final), **train_task_metrics(cfg, history),
                         **{f"{task}/{name}": value for task, scores in lm_eval.items()
                            for name, value in scores.items() if not name.endswith("_stderr")}},
        "lm_eval": lm_eval or None,
        "initial_task_metrics": task_metrics(cfg, out["initial_eval"]),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens": tokens,
        "tokens_per_second": tokens / out["train_seconds"] if out["train_seconds"] else None,
        "train_seconds": out["train_seconds"],
        "wall_seconds": wall,
        "phase_seconds": parts["phase_seconds"],
        "trainable_params": parts["trainable"],
        "total_params": parts["total"],
        "world_size": args.world_size,
        "global_batch": cfg.micro_batch * cfg.grad_accum * args.world_size,
        "deepspeed": ds_facts,
        "loss_impl": _loss_impl(trainer.model),
        "packing": cfg.effective_packing(),
        "sampling": args.train_sampling_strategy,
        "optimizer_impl": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "zero_stage": (ds_facts or {}).get("stage"),
        "local_param_fraction_at_load": parts["local_fraction"],
        "local_param_fraction": me["local_param_fraction"],
        "quantized_layers": parts["quantized"],
        "zero3_leaf_modules": parts["zero3_leaves"],
        "loss_normalisation": "target tokens per optimizer step",
        "ranks": ranks,
        "peak_memory_gib": peak,
        "peak_memory_kind": peak_kind,
        "samples": len(samples),
        "generations": len(generations),
        "data": data.stats,
        "base": parts["source"],
        "wandb_mode": parts["wandb_mode"],
        "history": history,
    }
    return metrics


def run_lm_eval(cfg: RunConfig, saved: Path, parts: dict) -> dict:
    """The lm-evaluation-harness tasks on what this run saved: the adapter on its base, or the model."""
    from ftgrid.finetune import lm_eval_hook
    t0 = time.time()
    on_gpu = parts["on_gpu"]
    results = lm_eval_hook.evaluate(
        str(saved), tasks=lm_eval_hook.parse_tasks(cfg.lm_eval_tasks), base=parts["source"] if cfg.is_lora else None,
        include_path=cfg.lm_eval_include or None, limit=cfg.lm_eval_limit or None, batch_size=cfg.micro_batch,
        device="cuda" if on_gpu else "cpu", dtype="bfloat16" if on_gpu else "float32")
    parts["phase_seconds"]["lm_eval"] = time.time() - t0
    return results


def deepspeed_facts(trainer) -> dict | None:
    """What the DeepSpeed engine really ran with (None without DeepSpeed)."""
    engine = getattr(trainer, "deepspeed", None)
    if engine is None:
        return None
    off_param = engine.zero_offload_param()
    return {"stage": int(engine.zero_optimization_stage()),
            "offload_optimizer": bool(engine.zero_cpu_offload()),
            "offload_param": bool(off_param is not None and str(getattr(off_param, "device", "none")) not in
                                  ("none", "OffloadDeviceEnum.none")),
            "optimizer": type(engine.optimizer).__name__ if engine.optimizer is not None else None,
            "world_size": int(engine.world_size)}


def took_a_step(trainer) -> bool:
    """Whether some optimizer step ran at a learning rate above zero. The first step of a warmup runs at
    zero, so a one-step run (a probe, a smoke test) leaves LoRA B at its initial zeros, rightly. A
    scheduler whose rates cannot be read counts as having stepped (the strict check)."""
    steps = trainer.state.global_step
    factors = getattr(trainer.lr_scheduler, "lr_lambdas", None)
    if not factors:
        return steps > 0
    return any(f(step) > 0 for f in factors for step in range(min(steps, 100_000)))


def check_adapter(path: Path, must_have_moved: bool = True) -> None:
    """A saved adapter must hold real weights: LoRA B starts at zero and must have moved once a step ran
    at a learning rate above zero (an adapter saved from ZeRO-3 shards without gathering is empty or all
    zeros)."""
    from safetensors.torch import load_file
    files = sorted(Path(path).glob("adapter_model*.safetensors"))
    if not files:
        raise RuntimeError(f"no adapter weights saved in {path}")
    lora_b = {k: w for f in files for k, w in load_file(str(f)).items() if "lora_B" in k}
    empty = [k for k, w in lora_b.items() if w.numel() == 0 or (must_have_moved and not bool(w.abs().sum() > 0))]
    if not lora_b or empty:
        raise RuntimeError(f"saved adapter in {path} is empty or zero: {empty[:3] or 'no lora_B weights'}")


def finish_wandb(metrics: dict, cfg: RunConfig, mode: str) -> None:
    if mode == "disabled":
        return
    import wandb
    if wandb.run is None:
        return
    wandb.config.update(cfg.to_dict(), allow_val_change=True)  # the cell config wins over the Trainer's keys
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    summary.update({f"task/{k}": v for k, v in metrics["task_metrics"].items()})
    wandb.run.summary.update(summary)
    wandb.finish()


# ---------------------------------------------------------------------------------------------


def _loss_impl(model) -> str:
    from ftgrid.finetune import losses
    return losses.implementation(model)


def is_oom(exc: BaseException) -> bool:
    import torch
    text = str(exc).lower()
    # CUDA OOM, Python's MemoryError, or the CPU allocator refusing (e.g. under an address-space cap).
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def _failed(cfg: RunConfig, run_dir: Path, is_main: bool, e: BaseException) -> int:
    """Every failure reaches status.json (oom with phase, step and peak memory) and the exit code."""
    oom = is_oom(e)
    abort_wandb()
    if is_main:
        where = dict(phase=PROGRESS["phase"], step=PROGRESS["step"])
        if oom:
            where["peak_memory_gib"], where["peak_memory_kind"] = peak_memory()
        rundir.write_status(run_dir, "oom" if oom else "failed", error=f"{type(e).__name__}: {e}"[:2000],
                            ended=time.time(), **where)
    if oom:
        print(f"error: out of memory in {cfg.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return EXIT_OOM
    traceback.print_exc()
    return EXIT_FAILED


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args)
        check_dataset(cfg)  # fail on a bad dataset before any model is built
        if cfg.weights:  # the grid only warns about a folder it cannot see (a login node); here it must exist
            run_config.check_weights_folder(cfg.weights)
        run_config.effective_wandb_mode(cfg)  # and on a bad WANDB_MODE
    except (ConfigError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    ensure_distributed_env(cfg)
    run_dir = Path(cfg.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    started = time.time()
    install_signal_handlers()
    if cfg.watchdog_minutes > 0:
        Watchdog(cfg.watchdog_minutes, run_dir, is_main).start()
    fresh = not run_dir.exists()  # a bad dataset found while loading must leave nothing behind
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_text(run_dir / "resolved.yaml", run_config.dump(cfg))
        rundir.write_status(run_dir, "running", pid=os.getpid(), host=socket.gethostname(),
                            slurm_job_id=os.environ.get("SLURM_JOB_ID"), started=started,
                            resume_from=latest_checkpoint(run_dir))
    try:
        parts = setup(cfg)
        parts["phase_seconds"] = {"setup": time.time() - started}
        trainer, out = train(cfg, parts)
        if out.get("preempted"):
            if parts["wandb_mode"] != "disabled":
                wandb = sys.modules.get("wandb")
                if wandb is not None and getattr(wandb, "run", None) is not None:
                    wandb.mark_preempting()
                    wandb.finish(exit_code=EXIT_PREEMPTED)
            if is_main:
                rundir.write_status(run_dir, "preempted", step=out["step"], checkpoint=out["checkpoint"],
                                    signal=PREEMPT["signal"], ended=time.time())
                print(f"[train] {cfg.name}: preempted at step {out['step']}, checkpoint {out['checkpoint']}; "
                      f"exit {EXIT_PREEMPTED}", file=sys.stderr, flush=True)
            return EXIT_PREEMPTED
        parts["phase_seconds"]["train"] = time.time() - started - parts["phase_seconds"]["setup"]
        PROGRESS["phase"] = "finish"
        metrics = finish(cfg, parts, trainer, out, started)
    except Exception as e:
        from ftgrid.data_prep.catalog import DataError
        if not (isinstance(e, DataError) and PROGRESS["phase"] == "setup"):
            return _failed(cfg, run_dir, is_main, e)
        abort_wandb()  # bad input (e.g. a file whose columns match no format): exit 2, nothing written
        if is_main and fresh:
            import shutil
            shutil.rmtree(run_dir, ignore_errors=True)
        elif is_main:  # a cell folder the launcher made: say why in status.json
            rundir.write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}"[:2000], ended=time.time(),
                                phase="setup", step=0)
        print(f"error: dataset {cfg.dataset}: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except BaseException as e:  # noqa: BLE001 - every failure must reach status.json and the exit code
        return _failed(cfg, run_dir, is_main, e)
    if is_main:
        rundir.atomic_write_json(run_dir / rundir.METRICS_FILE, metrics)
        finish_wandb(metrics, cfg, parts["wandb_mode"])
        rundir.write_status(run_dir, "done", ended=time.time(), eval_loss=metrics["eval_loss"])
        print(f"[train] {cfg.name}: done in {metrics['wall_seconds']:.1f}s  train loss "
              f"{metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}  eval loss "
              f"{metrics['initial_eval_loss']:.3f} -> {metrics['eval_loss']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
