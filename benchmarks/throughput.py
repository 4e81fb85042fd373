#!/usr/bin/env python3
"""Training throughput: a plain HF Trainer + PEFT baseline vs the kit's path, one optimisation at a time.

    .venv/bin/python benchmarks/throughput.py                                  # CPU, pythia-tiny, ~1-2 min
    python benchmarks/throughput.py --device cuda --model pythia-1.4b          # Alpaca-like lengths, LoRA r16 qkv
    python benchmarks/throughput.py --device cuda --model pythia-1.4b --targets all-linear
    python benchmarks/throughput.py --device cuda --model pythia-1.4b --full-length --max-len 2048 --micro-batch 8
    python benchmarks/throughput.py ... --compile --out benchmarks/results/h100_pythia-1.4b_qkv_alpaca.md

Everything runs in this one process on the same synthetic data (Zipf-distributed random token ids, no
download): example lengths are lognormal (Alpaca-like: median 180 tokens, capped at 1024 on a GPU; median
40, cap 256 on the CPU), or all at the cap with --full-length; the first ~40% of each example is the prompt
(label -100, response-only loss, as the kit's SFT). Every run sees the same examples in the same order,
`--examples-per-step` of them per optimizer step, from the same random init (same seed, LoRA dropout 0),
and the loss is the sum over the step's target tokens / their count (the Trainer's num_items_in_batch).
So the runs differ only in how the work is laid out, and their per-step losses must agree.

The ladder (each row adds one thing to the row above; the gain column is row / previous row):
  baseline         HF Trainer + PEFT, micro-batches of --micro-batch examples padded to the longest,
                   gradient accumulation to --examples-per-step, sdpa, stock loss, optim adamw_torch
                   (a plain Trainer set-up; the kit's entrypoint and transformers default to adamw_torch_fused)
  + packing        the step's examples best-fit packed (data_prep.packing) into rows of <= the cap, position
                   ids restarting per example and no attention mask (block-diagonal attention, examples never
                   see each other), rows grouped into micro-batches of <= --token-budget tokens;
                   flash_attention_2 (varlen) where flash-attn is installed on CUDA, else sdpa
  + chunked CE     finetune.losses.install_chunked_loss: no (tokens x vocab) fp32 logits, and logits only
                   at target positions (Liger's fused kernel where installed on CUDA)
  + fused AdamW    optim adamw_torch_fused
  + torch.compile  with --compile only (the Trainer's torch_compile) on static shapes: packed rows padded to
                   the cap and to a fixed row count, so it compiles once, in the warm-up

Measured: real (non-pad) tokens per second over --steps optimizer steps after --warmup steps, each step's
fastest of --repeat tries. CUDA: wall time, synchronised at step ends. CPU: this process's CPU time on
--threads threads (1 by default), because shared cores make wall time swing by 2x; the ratios are what
a CPU run shows. Peak memory = torch.cuda.max_memory_allocated per run (n/a on CPU).

Counted FLOPs (model FLOPs, the same for every row; MFU = counted FLOPs / time / peak):
  per example of n tokens:  n * (c * N + 6 * N_trainable) + 12 * L * d * n^2
  N = weights of every matmul (all 2-D weights incl. the lm_head, not the input or position embeddings);
  c = 4 for a frozen base (forward 2N + the backward's input gradients 2N; LoRA), c = 6 for full
  fine-tuning (6N; then N_trainable is not added again); attention: PaLM's 12*L*d*context per token, with
  context = the token's own example (not the padded row), not halved for causality. The "MFU (6N)" column
  counts c = 6 for LoRA too (the convention that ignores the frozen base's skipped weight gradients).
  --peak-tflops sets the peak (default: bf16 dense of the detected GPU, H100/H200 SXM 989); on CPU MFU is
  n/a unless given.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ftgrid.finetune import losses  # noqa: E402
from ftgrid.launch.timing import example_flops  # noqa: E402  (the counted-FLOPs convention below)
from ftgrid.registry import model_spec  # noqa: E402

try:  # the data engineer's packing (best-fit + PackedCollator); else transformers' flattening collator
    from ftgrid.data_prep import packing
except ImportError:  # pragma: no cover - only before data_prep.packing exists
    packing = None

PAD, BOS = 0, 1
PROMPT_FRACTION = 0.4
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
DEFAULTS = {  # by device: data shape, batch sizes, steps, lr
    "cpu": dict(model="pythia-tiny", median=40, max_len=256, examples_per_step=32, steps=6, warmup=1, repeat=2,
                lr=1e-2),
    "cuda": dict(model="pythia-1.4b", median=180, max_len=1024, examples_per_step=64, steps=20, warmup=3, repeat=1,
                 lr=2e-4),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", help="registry name (default: pythia-tiny on cpu, pythia-1.4b on cuda)")
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--targets", default="preset", help="LoRA targets: preset | all-linear | a,comma,list")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--full-length", action="store_true", help="every example at the cap (no padding to remove)")
    p.add_argument("--median", type=float, help="median example length (default 40 cpu, 180 cuda)")
    p.add_argument("--max-len", type=int, help="length cap = packed row length (default 256 cpu, 1024 cuda)")
    p.add_argument("--micro-batch", type=int, default=16, help="baseline examples per micro-batch")
    p.add_argument("--examples-per-step", type=int, help="examples per optimizer step, all runs (default 32 cpu, "
                                                          "64 cuda)")
    p.add_argument("--token-budget", type=int, help="packed tokens per micro-batch (default micro-batch x cap)")
    p.add_argument("--steps", type=int, help="measured optimizer steps (default 6 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, help="unmeasured steps first (default 1 cpu, 3 cuda)")
    p.add_argument("--repeat", type=int, help="run the ladder this many times, keep each step's fastest try "
                                              "(default 2 cpu: shared cores are noisy; 1 cuda)")
    p.add_argument("--threads", type=int, default=1, help="CPU only: torch threads (default 1)")
    p.add_argument("--lr", type=float)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--compile", action="store_true", help="add the torch.compile row")
    p.add_argument("--attn", default="auto", help="attention of the packed rows: auto | sdpa | flash_attention_2")
    p.add_argument("--peak-tflops", type=float, help="peak for MFU (default: the GPU's bf16 dense peak)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    if args.examples_per_step % args.micro_batch:
        p.error("--examples-per-step must be a multiple of --micro-batch")
    args.token_budget = args.token_budget or args.micro_batch * args.max_len
    if args.token_budget < args.max_len:
        p.error("--token-budget must hold at least one row of --max-len tokens")
    return args


# ---------------------------------------------------------------------------------------------
# data: the same examples for every run, laid out per run


def make_examples(args, vocab: int, n: int) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    zipf = 1.0 / (np.arange(vocab - 2) + 10.0)  # token frequencies fall off like text's (the loss can move)
    zipf /= zipf.sum()
    if args.full_length:
        lengths = np.full(n, args.max_len)
    else:  # Alpaca-like: lognormal around the median, a long tail cut at the cap
        lengths = np.clip(np.round(rng.lognormal(math.log(args.median), 0.75, n)), 8, args.max_len).astype(int)
    examples = []
    for length in lengths:
        ids = [BOS] + (2 + rng.choice(vocab - 2, int(length) - 1, p=zipf)).tolist()
        cut = max(1, int(length * PROMPT_FRACTION))
        examples.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return examples


def padded_batches(examples, micro_batch):
    out = []
    for i in range(0, len(examples), micro_batch):
        group = examples[i:i + micro_batch]
        longest = max(len(e["input_ids"]) for e in group)
        ids = torch.full((len(group), longest), PAD)
        labels = torch.full((len(group), longest), -100)
        mask = torch.zeros((len(group), longest), dtype=torch.long)
        for r, e in enumerate(group):
            n = len(e["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def packed_micro_batches(step_examples, max_len, token_budget):
    """One step's examples -> lists of packed rows, each list <= token_budget tokens."""
    lengths = [len(e["input_ids"]) for e in step_examples]
    if packing is None:  # one flattened row per micro-batch (DataCollatorWithFlattening)
        groups, cur, size = [], [], 0
        for e, n in zip(step_examples, lengths):
            if cur and size + n > token_budget:
                groups.append(cur)
                cur, size = [], 0
            cur.append(e)
            size += n
        return groups + [cur]
    rows = []
    for members in packing.best_fit(lengths, max_len):
        ids, labels, pos = [], [], []
        for i in members:
            ex_labels = list(step_examples[i]["labels"])
            ex_labels[0] = -100  # the previous example's last token must not predict this one's first
            ids += step_examples[i]["input_ids"]
            labels += ex_labels
            pos += range(lengths[i])
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    per_micro = token_budget // max_len
    return [rows[i:i + per_micro] for i in range(0, len(rows), per_micro)]


def packed_batches(examples, args, static: bool = False):
    """Every step's packed micro-batches, padded to the same number per step (the Trainer's accumulation
    is fixed): a missing micro-batch is one pad token with no target (it adds nothing to the loss).
    static (for torch.compile): every micro-batch the same shape, rows padded to the cap and topped up with
    pad rows to the most rows any micro-batch has, so the graph compiles once, in the warm-up."""
    e = args.examples_per_step
    steps = [packed_micro_batches(examples[i:i + e], args.max_len, args.token_budget)
             for i in range(0, len(examples), e)]
    accum = max(len(s) for s in steps)
    if packing is None:
        from transformers import DataCollatorWithFlattening
        flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        collate = lambda group: {**flatten(group, return_tensors="pt"), "use_cache": False}  # noqa: E731
        pad_row = None
    else:
        collate = packing.PackedCollator(PAD, pad_to_multiple_of=args.max_len if static else None)
        pad_row = {"input_ids": [PAD], "labels": [-100], "position_ids": [0]}
    if static and pad_row is not None:
        most = max(len(group) for s in steps for group in s)
        steps = [[group + [pad_row] * (most - len(group)) for group in s] + [[pad_row] * most] * (accum - len(s))
                 for s in steps]
    dummy = {"input_ids": torch.tensor([[PAD]]), "labels": torch.tensor([[-100]]),
             "position_ids": torch.tensor([[0]]), "use_cache": False}
    out = []
    for s in steps:
        out += [collate(group) for group in s] + [dummy] * (accum - len(s))
    return out, accum


# ---------------------------------------------------------------------------------------------
# model, FLOPs, one run


def build_model(args, spec, attn: str):
    import transformers
    from peft import LoraConfig, get_peft_model

    config = transformers.AutoConfig.for_model(spec.model_type, **spec.hf_config_kwargs(), attn_implementation=attn,
                                               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=BOS, use_cache=False)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    bf16 = args.device == "cuda"
    dtype = torch.bfloat16 if bf16 and args.method == "lora" else torch.float32  # as finetune/models.py
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if args.method == "lora":
        targets = {"preset": list(spec.lora_preset), "all-linear": list(spec.linear)}.get(
            args.targets, args.targets.split(","))
        torch.manual_seed(args.seed)
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    return model


def flop_counts(model, method: str) -> dict:
    hf = losses._unwrap(model)
    skip = {id(hf.get_input_embeddings().weight)}
    skip |= {id(p) for n, p in hf.named_parameters() if n.endswith(("wpe.weight", "embed_positions.weight"))}
    matmul = {id(p): p.numel() for n, p in hf.named_parameters() if p.ndim >= 2 and id(p) not in skip
              and "lora_" not in n}
    head = hf.get_output_embeddings().weight
    matmul[id(head)] = head.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = hf.config
    return {"N": sum(matmul.values()), "trainable": trainable, "c": 6 if method == "full" else 4,
            "L": cfg.num_hidden_layers, "d": cfg.hidden_size}


def run_one(args, spec, row: dict, data: list, accum: int, tmp: str) -> dict:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = time.perf_counter if cuda else time.process_time  # CPU: this process's CPU time (shared cores)
    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step >= args.warmup:
                sync()
                marks[state.global_step] = clock()

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(args, spec, row["attn"])
    if row["chunked"]:
        losses.install_chunked_loss(model, chunk_size=args.chunk_size)
    targs = TrainingArguments(
        output_dir=tmp, per_device_train_batch_size=1, gradient_accumulation_steps=accum,
        max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim=row["optim"], logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=True, remove_unused_columns=False, seed=args.seed,
        use_cpu=not cuda, bf16=cuda and args.method == "full", torch_compile=row["compile"],
        dataloader_pin_memory=cuda, dataloader_num_workers=0)
    class InOrder(Trainer):  # the pre-built micro-batches in their order (any transformers 5.x)
        def _get_train_sampler(self, *a, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(model=model, args=targs, train_dataset=data, data_collator=lambda f: f[0],
                      callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # the table is the output
    assert trainer.model_accepts_loss_kwargs  # the loss divides by the step's target tokens
    result = {"flops": flop_counts(model, args.method), "loss_impl": losses.implementation(model)}
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:  # later runs in this process may OOM too: see FACTS
        result["error"] = f"OOM: {str(e).splitlines()[0][:80]}"
    except Exception as e:  # noqa: BLE001 - one failing row (e.g. torch.compile) must not lose the table
        traceback.print_exc()
        result["error"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    else:
        result["step_seconds"] = [marks[k + 1] - marks[k] for k in range(args.warmup, args.warmup + args.steps)]
        result["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del trainer, model
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------


def ladder(args) -> list[dict]:
    attn = args.attn
    if attn == "auto":
        attn = "flash_attention_2" if args.device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    base = dict(layout="padded", attn="sdpa", chunked=False, optim="adamw_torch", compile=False)
    rows = [dict(base, name="baseline: HF Trainer + PEFT, padded")]
    rows.append(dict(rows[-1], name="+ packing" if packing else "+ padding-free (flattening)", layout="packed",
                     attn=attn))
    rows.append(dict(rows[-1], name="+ chunked CE", chunked=True))
    rows.append(dict(rows[-1], name="+ fused AdamW", optim="adamw_torch_fused"))
    if args.compile:
        rows.append(dict(rows[-1], name="+ torch.compile (static shapes)", compile=True, layout="static"))
    return rows


def device_name(args) -> str:
    if args.device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    spec = model_spec(args.model)
    total_steps = args.warmup + args.steps
    examples = make_examples(args, spec.vocab, total_steps * args.examples_per_step)
    lengths = [len(e["input_ids"]) for e in examples]
    padded = padded_batches(examples, args.micro_batch)
    packed, packed_accum = packed_batches(examples, args)
    static = packed_batches(examples, args, static=True)[0] if args.compile else None
    measured = examples[args.warmup * args.examples_per_step:]
    real_tokens = sum(len(e["input_ids"]) for e in measured)
    first = args.warmup * args.examples_per_step // args.micro_batch
    padded_tokens = sum(b["input_ids"].numel() for b in padded[first:])
    packed_tokens = sum(b["input_ids"].numel() for b in packed[args.warmup * packed_accum:])
    peak = peak_tflops(args)

    rows = ladder(args)
    best = [None] * len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):  # interleaved, so a noisy minute hurts one try of each row, not one row
            for i, row in enumerate(rows):
                data, accum = {"padded": (padded, args.examples_per_step // args.micro_batch),
                               "packed": (packed, packed_accum), "static": (static, packed_accum)}[row["layout"]]
                print(f"[throughput] {row['name']} (try {rep + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
                r = run_one(args, spec, row, data, accum, tmp)
                if best[i] is None or "error" in best[i]:
                    best[i] = r
                elif "error" not in r:  # each step's fastest try
                    best[i]["step_seconds"] = [min(a, b) for a, b in zip(best[i]["step_seconds"], r["step_seconds"])]
    for r in best:
        if "step_seconds" in r:
            r["seconds"] = sum(r["step_seconds"])
    results = list(zip(rows, best))

    f = results[0][1]["flops"]
    counted = sum(example_flops(len(e["input_ids"]), f) for e in measured)
    counted6 = sum(example_flops(len(e["input_ids"]), dict(f, c=6)) for e in measured)  # the 6N convention
    base = results[0][1]
    lines = [
        f"# Throughput: {args.model} {args.method}"
        + (f" r{args.rank} ({args.targets})" if args.method == "lora" else "")
        + f", {'full-length' if args.full_length else 'Alpaca-like'} data, {device_name(args)}",
        "",
        f"- data: {len(examples)} synthetic examples, lengths "
        + (f"all {args.max_len}" if args.full_length else
           f"lognormal median {args.median:g} (measured median {int(np.median(lengths))}, mean "
           f"{np.mean(lengths):.0f}, cap {args.max_len})")
        + f"; {args.examples_per_step} examples per optimizer step; {args.warmup} warm-up + {args.steps} measured "
          f"steps ({real_tokens:,} real tokens measured); each step's fastest of {args.repeat} tries",
        f"- baseline: micro-batch {args.micro_batch} padded to the longest -> {padded_tokens:,} tokens computed "
        f"({real_tokens / padded_tokens:.0%} real); packed: rows <= {args.max_len}, <= {args.token_budget:,} "
        f"tokens per micro-batch, {packed_accum} micro-batch(es) per step -> {packed_tokens:,} tokens "
        f"({real_tokens / packed_tokens:.0%} real)",
        f"- counted FLOPs per real token: {counted / real_tokens / 1e9:.4g} GFLOP (N={f['N']:,} matmul weights, "
        f"{f['trainable']:,} trainable, c={f['c']}; the 6N convention: {counted6 / real_tokens / 1e9:.4g}); "
        f"MFU against "
        + (f"{peak:g} TFLOP/s" if peak else "n/a (no peak given for this device)"),
        f"- dtype: {'bf16' if args.device == 'cuda' else 'fp32'}; torch {torch.__version__}, "
        f"transformers {__import__('transformers').__version__}, peft {__import__('peft').__version__}; "
        f"packing: {'data_prep.packing best-fit + PackedCollator' if packing else 'DataCollatorWithFlattening'}",
        (f"- baseline loss: step 1 {base['losses'][0]:.5f} -> step {total_steps} {base['losses'][-1]:.5f}"
         if "losses" in base else "- baseline: no losses (it failed)"),
        "",
        f"| step | attention | loss | real tokens/{'s' if args.device == 'cuda' else 'CPU-s'} | gain vs row above "
        "| x baseline | MFU | MFU (6N) | peak GiB | final loss "
        "| max abs loss diff vs baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    prev = None
    for row, r in results:
        if "error" in r:
            lines.append(f"| {row['name']} | {row['attn']} | {r['loss_impl']} | {r['error']} | | | | | | | |")
            prev = None
            continue
        tps = real_tokens / r["seconds"]
        mfu = f"{counted / r['seconds'] / (peak * 1e12):.1%}" if peak else "n/a"
        mfu6 = f"{counted6 / r['seconds'] / (peak * 1e12):.1%}" if peak else "n/a"
        mem = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        diff = max(abs(a - b) for a, b in zip(r["losses"], base["losses"])) if "losses" in base else float("nan")
        gain = f"{tps / prev:.2f}x" if prev else "-"
        ratio = f"{r['seconds'] and base['seconds'] / r['seconds']:.2f}x" if "seconds" in base else "n/a"
        lines.append(f"| {row['name']} | {row['attn']} | {r['loss_impl']} | {tps:,.0f} | {gain} | {ratio} | {mfu} | "
                     f"{mfu6} | {mem} | "
                     f"{r['losses'][-1]:.5f} | {diff:.1e} |")
        prev = tps
    ok = [(row, r) for row, r in results if "seconds" in r]
    if "seconds" in base and len(ok) > 1:
        row, fast = min(ok[1:], key=lambda x: x[1]["seconds"])
        worst = max(max(abs(a - b) for a, b in zip(r["losses"], base["losses"])) for _, r in ok)
        lines += ["", f"ours / baseline: {base['seconds'] / fast['seconds']:.2f}x real tokens/s (fastest row: "
                      f"{row['name']}); per-step losses of every row within {worst:.1e} of the baseline's over "
                      f"{total_steps} steps"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
