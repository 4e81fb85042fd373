"""The four tasks: their training arguments, data, trainer, loss and metrics.

    sft                   causal LM on instruction/chat data, loss on the response tokens only
    dpo                   trl DPOTrainer on preference pairs (prompt, chosen, rejected)
    token-classification  an encoder, or a decoder with a classification head; seqeval P/R/F1/accuracy
    summarization         encoder-decoder: Seq2SeqTrainer generating in eval; decoder: prompted SFT, then
                          generation from the eval prompts; ROUGE-1/2/L (rouge-score)

Loss normalisation: every task's training loss is a mean over the target tokens of the whole optimizer
step (all micro-batches of a gradient accumulation, all ranks), not a mean of per-micro-batch means.
The Trainer counts the step's target tokens (`num_items_in_batch`) and causal LMs divide their summed
loss by it; models whose own loss ignores that count (RoBERTa's token head, BART) get `token_loss`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers

from ftgrid.finetune import models
from ftgrid.registry import ModelSpec
from ftgrid.schema import RunConfig

IGNORE_INDEX = -100
# Run-config optimizer -> TrainingArguments.optim. Fused AdamW: one kernel over all parameters (transformers'
# own default; also on CPU). bitsandbytes' 8-bit AdamW (paged: states in CUDA unified memory; on CPU
# bitsandbytes runs it unpaged). Adafactor: transformers' (relative_step off, so lr applies). SGD: torch's.
OPTIM_NAMES = {"adamw": "adamw_torch_fused", "adamw-8bit": "adamw_bnb_8bit", "paged-adamw-8bit": "paged_adamw_8bit",
               "adafactor": "adafactor", "sgd": "sgd"}


# ---------------------------------------------------------------------------------------------
# training arguments


def sampling_strategy(cfg: RunConfig) -> str:
    """Length grouping where rows vary in length: unpacked training (packed rows are all ~seq_len).
    DPO rows are pairs the trl trainer tokenizes itself: no input_ids length to group by."""
    if cfg.group_by_length and cfg.effective_packing() == "none" and cfg.task != "dpo":
        return "group_by_length"
    return "random"


def dataloader_workers(cfg: RunConfig) -> int:
    """-1 = auto: none on CPU (the training process has the cores); on a GPU up to 4 per process,
    from the CPUs this node's processes share."""
    if cfg.dataloader_workers >= 0:
        return cfg.dataloader_workers
    if not torch.cuda.is_available():
        return 0
    per_process = (len(os.sched_getaffinity(0)) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)) - 1
    return max(0, min(4, per_process))


def training_args(cfg: RunConfig, spec: ModelSpec, report_to: list[str]):
    # Built BEFORE the model: a ZeRO-3 config then makes from_pretrained partition.
    dtype = models.compute_dtype(cfg)
    common = dict(
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
        optim=OPTIM_NAMES[cfg.optimizer],
        bf16=dtype == torch.bfloat16 and not cfg.is_lora,  # LoRA: base already in bf16
        fp16=dtype == torch.float16 and not cfg.is_lora,
        use_cpu=not torch.cuda.is_available(),  # DeepSpeed on CPU only works through this flag (gloo)
        deepspeed=cfg.deepspeed,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if cfg.eval_every else "no",
        eval_steps=cfg.eval_every or None,
        eval_on_start=True,  # the untrained model's eval loss, inside the loop (ZeRO<3 refuses it outside)
        # Resumable checkpoints every save_every steps (train.py also saves one on SIGUSR1/SIGTERM); the
        # last two are kept. A checkpoint holds the weights/adapter, optimizer, scheduler, RNG and step.
        save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or 500,
        save_total_limit=2,
        report_to=report_to,
        run_name=cfg.name,
        include_num_input_tokens_seen="non_padding",
        average_tokens_across_devices=True,  # the loss divides by the step's tokens over all ranks
        remove_unused_columns=False,
        dataloader_drop_last=False,
        train_sampling_strategy=sampling_strategy(cfg),
        torch_compile=cfg.torch_compile,
        dataloader_num_workers=dataloader_workers(cfg),
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )
    if cfg.neftune_alpha:
        common["neftune_noise_alpha"] = cfg.neftune_alpha
    if cfg.task == "dpo":
        import trl
        # trl defaults gradient checkpointing (and bf16) on: the run config decides both here.
        return trl.DPOConfig(**common, beta=cfg.dpo_beta, max_length=cfg.seq_len,
                             gradient_checkpointing=cfg.grad_ckpt)
    if cfg.task == "summarization" and spec.kind == "seq2seq":
        return transformers.Seq2SeqTrainingArguments(**common, predict_with_generate=True)
    return transformers.TrainingArguments(**common)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    train: Any
    eval: Any
    stats: dict
    collator: Any = None
    label_names: list[str] | None = None
    eval_references: list[str] | None = None


def load_data(cfg: RunConfig, spec: ModelSpec, tokenizer) -> Data:
    """Tokenized train/eval sets for the task, through data_prep's `prepare` (tokenized once, cached)."""
    # Every rank calls prepare: local rank 0 builds the cache entry, the others wait for it on disk
    # (no collective, so no NCCL timeout while rank 0 tokenizes).
    from ftgrid.data_prep.prepare import data_shaping, prepare  # (the package's `prepare` name is the module)

    packing = cfg.effective_packing()
    prep = prepare(cfg.dataset, task=cfg.task, tokenizer=tokenizer, seq_len=cfg.seq_len,
                   eval_rows=cfg.eval_rows, model_kind=spec.kind,
                   packing=False if packing == "none" else packing, **data_shaping(cfg))
    stats = prep.stats
    if dataclasses.is_dataclass(stats):
        stats = dataclasses.asdict(stats)
    return Data(prep.train, prep.eval, dict(stats or {}), collator=getattr(prep, "collator", None),
                label_names=getattr(prep, "label_names", None),
                eval_references=getattr(prep, "eval_references", None))


# ---------------------------------------------------------------------------------------------
# loss


def token_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy summed over target tokens, divided by the optimizer step's target-token count.

    For heads whose labels align with the logits (token classification, encoder-decoder targets)."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum()
    if torch.is_tensor(count):
        count = count.to(loss.device)
    return loss / count


class DecoderInputsCollator:
    """Adds `decoder_input_ids` (labels shifted right) so an encoder-decoder can run without `labels`
    in its forward: the Trainer hands the labels to `token_loss` instead."""

    def __init__(self, collator, model):
        self.collator = collator
        self.model = model

    def __call__(self, features):
        batch = self.collator(features)
        if "labels" in batch and "decoder_input_ids" not in batch:
            batch["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return batch


class TokenMeanEval:
    """Eval loss = mean over every target token of the eval set (all ranks), like the training loss.

    The stock loop averages per-batch means, so its eval loss moves with the eval batch size (here
    the micro batch, which the planner may change per GPU). This mixin sums each batch's local mean
    times its local target-token count and divides by the total (all-reduced over ranks)."""

    def evaluation_loop(self, *args, **kwargs):
        self._token_sum, self._token_count = 0.0, 0
        out = super().evaluation_loop(*args, **kwargs)
        totals = torch.tensor([self._token_sum, float(self._token_count)], dtype=torch.float64,
                              device=self.args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if totals[1] > 0 and f"{prefix}_loss" in out.metrics:
            out.metrics[f"{prefix}_loss"] = float(totals[0] / totals[1])
        return out

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **kwargs):
        # This batch's own target-token count, and a loss that is this batch's own token mean.
        average = self.args.average_tokens_across_devices
        self.args.average_tokens_across_devices = False
        try:
            count = self._get_num_items_in_batch([inputs], self.args.device)
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only,
                                                           ignore_keys=ignore_keys, **kwargs)
        finally:
            self.args.average_tokens_across_devices = average
        if loss is not None and count is not None:
            n = int(count)
            self._token_sum += float(loss.float().mean()) * n
            self._token_count += n
        return loss, logits, labels


class Trainer(TokenMeanEval, transformers.Trainer):
    pass


class Seq2SeqTrainer(TokenMeanEval, transformers.Seq2SeqTrainer):
    pass


# ---------------------------------------------------------------------------------------------
# metrics


def seqeval_metrics(label_names: list[str]):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    def compute(pred):
        logits, labels = pred.predictions, pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        predicted = logits.argmax(-1)
        y_true, y_pred = [], []
        for p_row, l_row in zip(predicted, labels):
            keep = [(p, l) for p, l in zip(p_row, l_row) if l != IGNORE_INDEX]
            y_true.append([label_names[int(l)] for _, l in keep])
            y_pred.append([label_names[int(p)] for p, _ in keep])
        return {"precision": precision_score(y_true, y_pred, zero_division=0),
                "recall": recall_score(y_true, y_pred, zero_division=0),
                "f1": f1_score(y_true, y_pred, zero_division=0),
                "accuracy": accuracy_score(y_true, y_pred)}
    return compute


def rouge(predictions: list[str], references: list[str]) -> dict:
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: v / n for k, v in totals.items()}


def seq2seq_rouge_metrics(tokenizer, references: list[str] | None):
    def compute(pred):
        generated = pred.predictions
        if isinstance(generated, tuple):
            generated = generated[0]
        special = set(tokenizer.all_special_ids)
        generated = [[t for t in row if t >= 0 and t not in special] for row in generated.tolist()]
        texts = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        if references is not None and len(references) == len(texts):
            refs = list(references)
        else:
            refs = [t.strip() for t in tokenizer.batch_decode(
                [[t for t in row if t != IGNORE_INDEX] for row in pred.label_ids.tolist()],
                skip_special_tokens=True)]
        out = rouge(texts, refs)
        out["gen_tokens_mean"] = sum(len(g) for g in generated) / max(len(generated), 1)
        return out
    return compute


# ---------------------------------------------------------------------------------------------
# the trainer


def make_trainer(cfg: RunConfig, spec: ModelSpec, args, model, tokenizer, data: Data, lora=None):
    kind = models.head_kind(spec, cfg)
    if cfg.task == "dpo":
        import trl
        return trl.DPOTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                              processing_class=tokenizer, peft_config=lora)
    common = dict(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer)
    if kind == "token-classification":
        collator = data.collator or transformers.DataCollatorForTokenClassification(
            tokenizer, label_pad_token_id=IGNORE_INDEX)
        return Trainer(**common, data_collator=collator, compute_loss_func=token_loss,
                                    compute_metrics=seqeval_metrics(data.label_names))
    if kind == "seq2seq":
        collator = data.collator or transformers.DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
        # Greedy summaries of at most max_new_tokens, ending at eos (the ids come from the model's config).
        model.generation_config.update(max_new_tokens=cfg.max_new_tokens, num_beams=1, do_sample=False)
        return Seq2SeqTrainer(**common, data_collator=DecoderInputsCollator(collator, model),
                                           compute_loss_func=token_loss,
                                           compute_metrics=seq2seq_rouge_metrics(tokenizer, data.eval_references))
    collator = data.collator or transformers.DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                                    label_pad_token_id=IGNORE_INDEX)
    # Causal LMs divide their summed loss by the Trainer's num_items_in_batch (checked in train.py).
    return Trainer(**common, data_collator=collator)


# ---------------------------------------------------------------------------------------------
# generation (causal models): samples.jsonl and decoder summarization


def prompts_from_eval(eval_ds, limit: int | None = None) -> list[dict]:
    """Prompt ids (the tokens before the first target) and target ids of eval rows."""
    out = []
    rows = range(len(eval_ds)) if limit is None else range(min(limit, len(eval_ds)))
    for i in rows:
        row = eval_ds[i]
        ids, labels = list(row["input_ids"]), list(row["labels"])
        first = next((j for j, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
        out.append({"index": i, "prompt_ids": ids[:first],
                    "target_ids": [t for t in labels[first:] if t != IGNORE_INDEX]})
    return out


def sampling(temperature: float, top_p: float) -> dict:
    """model.generate's sampling arguments: greedy at temperature 0 (the model's own sampling config off)."""
    if temperature <= 0:
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int = 8,
             synced: bool = False, temperature: float = 0.0, top_p: float = 1.0) -> list[dict]:
    """Continuations stopping at eos: greedy, or sampled when temperature > 0 (with top_p); every rank
    must call this under ZeRO-3 (synced)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        width = max(len(p) for p in chunk)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             num_beams=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
                             synced_gpus=synced, **sampling(temperature, top_p))
        for row in out[:, width:].tolist():
            stopped = tokenizer.eos_token_id in row
            row = row[:row.index(tokenizer.eos_token_id)] if stopped else row
            results.append({"ids": row, "stopped_at_eos": stopped})
    model.train(was_training)
    return results
