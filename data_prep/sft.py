"""Load, split and tokenize instruction data for causal-LM SFT with loss on the response only.

`build(request, tokenizer, seq_len, eval_rows)` -> (train, eval) `datasets.Dataset`s with
`input_ids`, `attention_mask`, `labels` (-100 on prompt tokens), plus `stats` of what was dropped.
Tokenization goes through `datasets.map`, which caches on disk by fingerprint, so the second call
with the same inputs reads the cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import datasets

from data_prep import formats
from data_prep.catalog import DataError, DatasetRequest

DATA_SEED = 1234  # the shuffle that cuts tiers and the eval hold-out: fixed, not the run's seed
IGNORE_INDEX = -100

# For tokenizers without a chat template of their own.
PLAIN_TEMPLATE = {"user": "### Instruction:\n{content}\n\n### Response:\n", "system": "{content}\n\n"}


@dataclass
class DataStats:
    source_rows: int
    duplicates: int
    eval_rows: int
    train_rows: int
    dropped_empty_response: int
    truncated: int
    train_tokens: int
    response_tokens: int


def load_rows(request: DatasetRequest) -> datasets.Dataset:
    entry = request.entry
    path = entry.local_path or entry.source
    suffix = str(path).rsplit(".", 1)[-1]
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow"}.get(suffix)
    try:
        if builder:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:  # a hub id: the real datasets path (needs a network)
            ds = datasets.load_dataset(str(path), split="train")
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"cannot read dataset {request.label}: {str(e).splitlines()[0]}") from None
    return ds


def split(request: DatasetRequest, ds: datasets.Dataset, eval_rows: int = 0):
    """Dedupe, shuffle with the data seed, hold out eval rows, cut the tier. Returns (train, eval, dups)."""
    fn = formats.adapter(request.entry.format, ds.column_names)
    ds = ds.map(fn, remove_columns=ds.column_names, desc="format")
    seen, keep = set(), []
    for i, messages in enumerate(ds["messages"]):
        key = tuple((m["role"], m["content"]) for m in messages)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    duplicates = len(ds) - len(keep)
    ds = ds.select(keep).shuffle(seed=DATA_SEED)
    n_eval = eval_rows or min(request.entry.eval_rows, max(1, len(ds) // 10))
    if n_eval >= len(ds):
        raise DataError(f"dataset {request.label} has {len(ds)} rows, too few for {n_eval} eval rows")
    eval_ds = ds.select(range(n_eval))
    rest = ds.select(range(n_eval, len(ds)))
    train = rest.select(range(request.tier_rows(len(rest))))
    return train, eval_ds, duplicates


def render(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text, response text) for a conversation whose last turn is the assistant's."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise DataError("the tokenizer's chat template does not extend the prompt with the response")
        return prompt, full[len(prompt):]
    prompt = "".join(PLAIN_TEMPLATE[m["role"]].format(content=m["content"]) for m in messages[:-1])
    return prompt, messages[-1]["content"] + tokenizer.eos_token


def tokenize_fn(tokenizer, seq_len: int):
    def fn(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": [], "truncated": []}
        for messages in batch["messages"]:
            prompt, response = render(tokenizer, messages)
            # Encode the parts apart so the boundary is exact (no BPE merge across it).
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(response, add_special_tokens=False)["input_ids"]
            ids = (p + r)[:seq_len]
            labels = ([IGNORE_INDEX] * len(p) + r)[:seq_len]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out["truncated"].append(len(p) + len(r) > seq_len)
        return out
    return fn


def tokenize(ds: datasets.Dataset, tokenizer, seq_len: int, desc: str) -> tuple[datasets.Dataset, int, int]:
    """Returns (tokenized rows with at least one response token, dropped count, truncated count)."""
    tok = ds.map(tokenize_fn(tokenizer, seq_len), batched=True, remove_columns=ds.column_names, desc=desc)
    keep = [i for i, labels in enumerate(tok["labels"]) if any(t != IGNORE_INDEX for t in labels)]
    truncated = sum(tok["truncated"])
    return tok.select(keep).remove_columns("truncated"), len(tok) - len(keep), truncated


def build(request: DatasetRequest, tokenizer, seq_len: int, eval_rows: int = 0):
    raw = load_rows(request)
    train_raw, eval_raw, duplicates = split(request, raw, eval_rows)
    train, dropped, truncated = tokenize(train_raw, tokenizer, seq_len, "tokenize train")
    eval_ds, _, _ = tokenize(eval_raw, tokenizer, seq_len, "tokenize eval")
    if len(train) == 0:
        raise DataError(f"no training rows left in {request.label} at seq_len {seq_len}")
    stats = DataStats(
        source_rows=len(raw), duplicates=duplicates, eval_rows=len(eval_ds), train_rows=len(train),
        dropped_empty_response=dropped, truncated=truncated,
        train_tokens=sum(len(x) for x in train["input_ids"]),
        response_tokens=sum(sum(t != IGNORE_INDEX for t in x) for x in train["labels"]),
    )
    return train, eval_ds, stats
