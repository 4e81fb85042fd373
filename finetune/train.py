"""Train one cell: the one entrypoint every launcher runs.

    python finetune/train.py --cell runs/<sweep>/<cell>/cell.yaml             # one process (CPU or 1 GPU)
    python finetune/train.py --model pythia-tiny --rank 8 --out runs/one      # one-off run from flags
    torchrun --nproc_per_node 8 finetune/train.py --cell .../cell.yaml        # one node, 8 GPUs
    deepspeed --hostfile hosts.txt finetune/train.py --cell .../cell.yaml     # several nodes, no SLURM
    sbatch runs/<sweep>/<cell>/job.sbatch                                     # SLURM: srun + torchrun

Phases: setup (config, data, model) -> train (HF Trainer, DeepSpeed when the cell has a ds_config)
-> finish (eval, adapter/model, metrics.json, status.json). Only rank 0 writes files.
Exit codes: 0 done, 1 failed, 2 bad config (nothing written), 3 out of memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import socket
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finetune import config as run_config  # noqa: E402
from finetune import rundir  # noqa: E402
from finetune.config import ConfigError, RunConfig  # noqa: E402

EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_OOM = 1, 2, 3


# ---------------------------------------------------------------------------------------------
# configuration


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cell", help="cell.yaml written by launch/grid.py")
    p.add_argument("--out", help="run directory for a one-off run (default: the cell.yaml's folder)")
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
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output directory {cfg.output_dir} is a file")
    return cfg


def ensure_distributed_env(cfg: RunConfig) -> None:
    # DeepSpeed in a single plain `python` process still wants the torch.distributed variables,
    # else it falls back to mpi4py discovery.
    if cfg.deepspeed and "RANK" not in os.environ:
        import socket as s
        with s.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))


# ---------------------------------------------------------------------------------------------
# phases


def setup(cfg: RunConfig):
    import torch
    import transformers
    from data_prep import catalog, sft
    from finetune import models

    spec = run_config.model_spec(cfg.model)
    transformers.set_seed(cfg.seed)
    tokenizer = models.load_tokenizer(spec, cfg)
    on_cpu = not torch.cuda.is_available()
    dtype = models.compute_dtype(cfg)
    args = transformers.TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"),
        per_device_train_batch_size=cfg.micro_batch,
        per_device_eval_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type={"cosine": "cosine_with_min_lr", "linear": "linear",
                           "constant": "constant_with_warmup"}[cfg.schedule],
        # min_lr as a ratio: the absolute form reads optimizer.defaults, which DeepSpeed optimizers lack
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr / cfg.lr} if cfg.schedule == "cosine" else {},
        warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim={"adamw": "adamw_torch", "adamw-8bit": "adamw_bnb_8bit",
               "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor"}[cfg.optimizer],
        bf16=dtype == torch.bfloat16 and not cfg.is_lora,  # LoRA: base already in bf16
        fp16=dtype == torch.float16 and not cfg.is_lora,
        use_cpu=on_cpu,  # DeepSpeed on CPU only works through this flag (gloo backend)
        deepspeed=cfg.deepspeed,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if cfg.eval_every else "no",
        eval_steps=cfg.eval_every or None,
        eval_on_start=True,  # the untrained model's eval loss, inside the loop (ZeRO<3 refuses it outside)
        save_strategy="no",
        report_to=["wandb"] if cfg.wandb_mode != "disabled" else [],
        run_name=cfg.name,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_drop_last=False,
        disable_tqdm=True,
    )
    # Tokenize once: rank 0 first (cached by datasets), the other ranks then read its cache.
    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds, stats = sft.build(catalog.parse(cfg.dataset), tokenizer, cfg.seq_len, cfg.eval_rows)
    model = models.build_model(spec, cfg, tokenizer)
    trainable, total = models.count_params(model)
    return dict(spec=spec, tokenizer=tokenizer, args=args, train=train_ds, eval=eval_ds,
                data_stats=stats, model=model, trainable=trainable, total=total)


def train(cfg: RunConfig, parts: dict):
    import transformers

    collator = transformers.DataCollatorForSeq2Seq(parts["tokenizer"], padding=True, label_pad_token_id=-100)
    trainer = transformers.Trainer(model=parts["model"], args=parts["args"], train_dataset=parts["train"],
                                   eval_dataset=parts["eval"], data_collator=collator,
                                   processing_class=parts["tokenizer"])
    args = trainer.args
    if args.process_index == 0:
        print(f"[train] {cfg.name}: model={cfg.model} method={cfg.method} rank={cfg.rank} "
              f"params trainable/total={parts['trainable']:,}/{parts['total']:,} world={args.world_size} "
              f"global batch={cfg.micro_batch}x{cfg.grad_accum}x{args.world_size}="
              f"{cfg.micro_batch * cfg.grad_accum * args.world_size} train rows={len(parts['train'])}",
              flush=True)
    assert args.train_batch_size * args.gradient_accumulation_steps * args.world_size == \
        cfg.micro_batch * cfg.grad_accum * args.world_size
    t0 = time.time()
    result = trainer.train()
    train_seconds = time.time() - t0
    initial = next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)
    final = trainer.evaluate()["eval_loss"]
    return trainer, dict(initial_eval_loss=initial, eval_loss=final, train_seconds=train_seconds,
                         train_result=result)


def finish(cfg: RunConfig, parts: dict, trainer, out: dict, started: float) -> dict:
    import torch
    import torch.distributed as dist

    args = trainer.args
    # Every rank reports what it did, so a test (and a human) can see all ranks took part.
    me = {"rank": args.process_index, "host": socket.gethostname(), "steps": trainer.state.global_step}
    ranks = [me]
    if dist.is_available() and dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, me)
    run_dir = Path(cfg.output_dir)
    # save_model gathers ZeRO-3 shards (stage3_gather_16bit_weights_on_model_save) on every rank.
    trainer.save_model(str(run_dir / ("adapter" if cfg.is_lora else "model")))
    if args.process_index != 0:
        return {}
    history = trainer.state.log_history
    # Runs shorter than logging_steps log no step loss: fall back to the run's mean loss.
    train_losses = [h["loss"] for h in history if "loss" in h] or [out["train_result"].training_loss]
    wall = time.time() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {
        "name": cfg.name, "model": cfg.model, "method": cfg.method, "rank": cfg.rank, "alpha": cfg.alpha,
        "lr": cfg.lr, "seed": cfg.seed,
        "train_loss_first": train_losses[0],
        "train_loss_last": train_losses[-1],
        "train_loss_min": min(train_losses),
        "train_loss_mean": out["train_result"].training_loss,
        "initial_eval_loss": out["initial_eval_loss"],
        "eval_loss": out["eval_loss"],
        "perplexity": math.exp(min(out["eval_loss"], 50.0)),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens": tokens,
        "tokens_per_second": tokens / out["train_seconds"] if out["train_seconds"] else None,
        "train_seconds": out["train_seconds"],
        "wall_seconds": wall,
        "trainable_params": parts["trainable"],
        "total_params": parts["total"],
        "world_size": args.world_size,
        "global_batch": cfg.micro_batch * cfg.grad_accum * args.world_size,
        "ranks": ranks,
        "peak_memory_gib": peak,
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "cpu_max_rss",
        "data": dataclasses.asdict(parts["data_stats"]),
        "history": history,
    }


# ---------------------------------------------------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    import torch
    text = str(exc).lower()
    # CUDA OOM, Python's MemoryError, or the CPU allocator refusing (e.g. under an address-space cap).
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args)
        from data_prep import catalog
        catalog.parse(cfg.dataset)  # fail on a bad dataset before any model is built
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    ensure_distributed_env(cfg)
    run_dir = Path(cfg.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    started = time.time()
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_text(run_dir / "resolved.yaml", run_config.dump(cfg))
        rundir.write_status(run_dir, "running", pid=os.getpid(), host=socket.gethostname(),
                            slurm_job_id=os.environ.get("SLURM_JOB_ID"), started=started)
    try:
        parts = setup(cfg)
        trainer, out = train(cfg, parts)
        metrics = finish(cfg, parts, trainer, out, started)
    except BaseException as e:  # noqa: BLE001 - every failure must reach status.json and the exit code
        oom = is_oom(e)
        if is_main:
            rundir.write_status(run_dir, "oom" if oom else "failed", error=f"{type(e).__name__}: {e}"[:2000],
                                ended=time.time())
        if oom:
            print(f"error: out of memory in {cfg.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  file=sys.stderr)
            return EXIT_OOM
        traceback.print_exc()
        return EXIT_FAILED
    if is_main:
        rundir.atomic_write_json(run_dir / rundir.METRICS_FILE, metrics)
        rundir.write_status(run_dir, "done", ended=time.time(), eval_loss=metrics["eval_loss"])
        print(f"[train] {cfg.name}: done in {metrics['wall_seconds']:.1f}s  train loss "
              f"{metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}  eval loss "
              f"{metrics['initial_eval_loss']:.3f} -> {metrics['eval_loss']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
