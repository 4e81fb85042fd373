"""`prepare()`: a dataset name or file -> tokenized, split, cached data for one task.

    from ftgrid.data_prep import prepare
    prep = prepare("dolly-sample:medium", task="sft", tokenizer=tok, seq_len=512)
    trainer = Trainer(..., train_dataset=prep.train, eval_dataset=prep.eval, data_collator=prep.collator)

Steps (each deterministic): read the source -> adapt to the task's canonical record -> drop invalid
rows and exact duplicates -> shuffle with the fixed data seed -> hold out the eval rows (the same for
every tier) -> cut the tier (small ⊂ medium ⊂ large) -> tokenize (batched; several processes when
rows are many) -> optionally pack. The result is cached on disk under a hash of everything that
changes it; in multi-process runs the local rank 0 builds while the others wait for it (no
collective, see cache.py).

Ordering: the Trainer shuffles; `group_by_length=True` in TrainingArguments groups similar lengths
(prep.lengths gives them). NEFTune is the Trainer's `neftune_noise_alpha` (e.g. 5): nothing to do here.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np

from ftgrid.data_prep import cache, catalog, formats, packing as packing_mod, sources, templates, tokenization
from ftgrid.data_prep.catalog import DataError, DatasetRequest, parse

VERSION = 2          # bump when the output of a given input changes: old cache entries are then ignored
DATA_SEED = 1234     # the shuffle that cuts tiers and the eval hold-out: fixed, not the run's seed
MODEL_KINDS = ("causal", "seq2seq", "encoder")
NUM_PROC_MIN_ROWS = 20_000  # below this a single process tokenizes faster than a pool starts


@dataclass
class DataStats:
    source_rows: int = 0      # rows read (train split, plus the eval split where the data set has one)
    invalid: int = 0          # rows the format adapter rejected (empty fields, broken spans, ...)
    duplicates: int = 0       # exact duplicates removed (same canonical record)
    eval_rows: int = 0        # held-out rows (after drops)
    train_rows: int = 0       # training examples (after drops; before packing)
    dropped: int = 0          # training rows dropped at tokenization (no trainable token left, or over-long
                              # under truncation="drop")
    truncated: int = 0        # training rows cut to seq_len
    tokens: int = 0           # training tokens (input ids; for dpo prompt + chosen + rejected)
    loss_tokens: int = 0      # training tokens with a label (responses, labelled words, targets; dpo:
                              # chosen + rejected)
    eval_dropped: int = 0
    eval_truncated: int = 0
    packed_rows: int = 0      # training rows after bin packing (0: not packed)
    from_cache: bool = False  # this call read an entry built earlier (or by another rank)
    cache_key: str = ""


@dataclass
class Prepared:
    train: datasets.Dataset
    eval: datasets.Dataset
    stats: DataStats
    collator: object = None
    task: str = "sft"
    model_kind: str = "causal"
    label_names: list | None = None       # token classification: the BIO tags, id = index
    eval_references: list | None = None   # summarization: the eval rows' reference summaries
    eval_prompts: list | None = None      # summarization: the eval rows' documents / rendered prompts
    template: str | None = None           # the chat template used (name)
    cache_path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        col = "input_ids" if "input_ids" in self.train.column_names else None
        return [len(x) for x in self.train[col]] if col else []


def _num_proc(n_rows: int, num_proc: int | None) -> int | None:
    if num_proc is not None:
        return num_proc if num_proc > 1 else None
    if n_rows < NUM_PROC_MIN_ROWS:
        return None
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or len(os.sched_getaffinity(0))
    return min(8, cpus) if cpus > 1 else None


def select_rows(request: DatasetRequest, keys, eval_keys=None, eval_rows: int = 0) -> tuple[list[int], list[int], dict]:
    """Indices (train, eval) and counts from each row's duplicate key ("" = invalid row; the records
    themselves serve as keys too). Eval indices point into `eval_keys` when the data set has its own
    eval split. Deterministic: dedupe in source order, one fixed shuffle, eval first, the tier next."""
    def dedupe(ks):
        seen, kept, invalid = set(), [], 0
        for i, k in enumerate(ks):
            if not k:
                invalid += 1
            elif k not in seen:
                seen.add(k)
                kept.append(i)
        return kept, invalid, len(ks) - invalid - len(kept), seen

    def shuffled(kept):
        return [kept[i] for i in np.random.default_rng(DATA_SEED).permutation(len(kept))]

    keys = list(keys)
    kept, invalid, duplicates, _ = dedupe(keys)
    order = shuffled(kept)
    if eval_keys is not None:
        eval_keys = list(eval_keys)
        ekept, einvalid, edup, _ = dedupe(eval_keys)
        invalid, duplicates = invalid + einvalid, duplicates + edup
        eorder = shuffled(ekept)
        if eval_rows > len(eorder):  # asked for by the user: never silently fewer
            raise DataError(f"dataset {request.label} has {len(eorder)} usable eval rows, fewer than eval_rows "
                            f"{eval_rows}")
        eval_idx = eorder[: min(eval_rows or request.entry.eval_rows, len(eorder))]
        held = {eval_keys[i] for i in eval_idx}
        rest = [i for i in order if keys[i] not in held]  # a train row equal to an eval row is a duplicate
        duplicates += len(order) - len(rest)
    else:
        n_eval = catalog.held_out_rows(request.label, len(order), eval_rows, request.entry.eval_rows)
        eval_idx, rest = order[:n_eval], order[n_eval:]
    train_idx = rest[: request.tier_rows(len(rest))]
    if not train_idx:
        raise DataError(f"dataset {request.label} has no training rows left")
    return train_idx, eval_idx, {"invalid": invalid, "duplicates": duplicates}


class Options:
    """The knobs of one preparation (all of them go into the cache key)."""

    def __init__(self, *, task, seq_len, eval_rows, model_kind, template, train_on, truncation, label_policy,
                 target_len, source_prefix, format, columns=None, prompt=""):
        self.task, self.seq_len, self.eval_rows, self.model_kind = task, seq_len, eval_rows, model_kind
        self.template, self.train_on, self.truncation = template, train_on, truncation
        self.label_policy, self.target_len, self.source_prefix, self.format = (
            label_policy, target_len, source_prefix, format)
        self.columns, self.prompt = dict(columns or {}), prompt or ""

    def as_dict(self):
        return dict(vars(self))


def _validate(request: DatasetRequest, o: Options) -> None:
    if o.task not in formats.TASKS:
        raise DataError(f"unknown task {o.task!r}; valid: {', '.join(formats.TASKS)}")
    if request.entry.task and request.entry.task != o.task:
        raise DataError(f"dataset {request.entry.name!r} is {request.entry.task} data, not {o.task}")
    if o.model_kind not in MODEL_KINDS:
        raise DataError(f"unknown model kind {o.model_kind!r}; valid: {', '.join(MODEL_KINDS)}")
    allowed = {"sft": ("causal",), "dpo": ("causal",), "summarization": ("causal", "seq2seq"),
               "token-classification": ("encoder", "causal")}[o.task]
    if o.model_kind not in allowed:
        raise DataError(f"task {o.task} needs a {' or '.join(allowed)} model, not {o.model_kind}")
    if o.truncation not in tokenization.TRUNCATION:
        raise DataError(f"unknown truncation {o.truncation!r}; valid: {', '.join(tokenization.TRUNCATION)}")
    if o.label_policy not in tokenization.LABEL_POLICIES:
        raise DataError(f"unknown label policy {o.label_policy!r}; valid: "
                        f"{', '.join(tokenization.LABEL_POLICIES)}")
    if o.train_on not in ("responses", "last", "all"):
        raise DataError(f"unknown train_on {o.train_on!r}; valid: responses, last, all")
    if o.seq_len < 8:
        raise DataError(f"seq_len must be at least 8, got {o.seq_len}")


def _encoder(o: Options, tokenizer, jinja_name: str, jinja: str, label_names):
    if o.task == "dpo":
        return tokenization.DPOEncoder(tokenizer, jinja, o.seq_len, adds_bos=templates.adds_bos(tokenizer),
                                       prompt=o.prompt)
    bos = o.model_kind == "causal" and templates.needs_bos(tokenizer, jinja_name)
    if o.task == "token-classification":
        return tokenization.TokenClassEncoder(tokenizer, o.seq_len, label_names, o.label_policy)
    if o.task == "summarization" and o.model_kind == "seq2seq":
        return tokenization.Seq2SeqEncoder(tokenizer, o.seq_len, o.target_len or o.seq_len, o.source_prefix,
                                           prompt=o.prompt)
    return tokenization.CausalEncoder(tokenizer, jinja, o.seq_len, bos=bos, truncation=o.truncation,
                                      train_on=o.train_on, summarize=o.task == "summarization", prompt=o.prompt)


def _map_kwargs(scratch: Path | None, name: str) -> dict:
    """Where datasets.map writes: a scratch folder inside the cache entry being built (removed when it
    is done), or memory. Never datasets' own cache: ours is keyed by everything that matters."""
    if scratch is None:
        return {"keep_in_memory": True, "load_from_cache_file": False}
    scratch.mkdir(parents=True, exist_ok=True)
    return {"cache_file_name": str(scratch / f"{name}.arrow"), "load_from_cache_file": False}


def _tokenize(encoder, rows: datasets.Dataset, num_proc, fingerprint: str, desc: str, scratch=None):
    n = _num_proc(len(rows), num_proc)
    return rows.map(encoder, batched=True, batch_size=500, remove_columns=rows.column_names, num_proc=n,
                    new_fingerprint=fingerprint, desc=desc, **_map_kwargs(scratch, fingerprint))


def _finish(tok: datasets.Dataset, task: str):
    """Drop rows flagged `_keep=False`: (rows, kept indices, dropped, truncated, tokens, loss tokens)."""
    keep = tok["_keep"]
    truncated = sum(t for t, k in zip(tok["_truncated"], keep) if k)
    idx = [i for i, k in enumerate(keep) if k]
    out = tok.select(idx) if len(idx) < len(tok) else tok
    if task == "dpo":
        tokens, loss = sum(out["_tokens"]), sum(out["_loss"])
        out = out.remove_columns([c for c in out.column_names if c.startswith("_")])
        return out, idx, len(tok) - len(idx), truncated, tokens, loss
    out = out.remove_columns([c for c in out.column_names if c.startswith("_")])
    tokens = sum(len(x) for x in out["input_ids"])
    loss = sum(sum(1 for t in x if t != tokenization.IGNORE_INDEX) for x in out["labels"])
    return out, idx, len(tok) - len(idx), truncated, tokens, loss


def build(request: DatasetRequest, tokenizer, o: Options, *, num_proc=None, key: str = "",
          scratch: Path | None = None):
    """(train, eval, meta) for one request; intermediate tables in `scratch` (a folder) or memory."""
    entry = request.entry
    raw = formats.rename_columns(sources.load(entry, entry.split, request.label), o.columns, request.label)
    raw_eval = (formats.rename_columns(sources.load(entry, entry.eval_split, request.label), o.columns, request.label)
                if entry.eval_split else None)
    if len(raw) == 0:
        raise DataError(f"dataset {request.label} is empty")
    fmt = formats.get(o.format or entry.format, raw.column_names, raw[0], o.task)
    n_map = _num_proc(len(raw), num_proc)
    canon = formats.canonical(raw, fmt, n_map, f"{key}-canon-train", **_map_kwargs(scratch, "canon-train"))
    canon_eval = (formats.canonical(raw_eval, fmt, None, f"{key}-canon-eval", **_map_kwargs(scratch, "canon-eval"))
                  if raw_eval is not None else None)
    train_idx, eval_idx, counts = select_rows(request, canon["key"],
                                              canon_eval["key"] if canon_eval is not None else None, o.eval_rows)
    train_src = canon.select(train_idx).select_columns(["record"])
    eval_src = (canon_eval if canon_eval is not None else canon).select(eval_idx).select_columns(["record"])

    label_names = None
    if o.task == "token-classification":  # from the whole data set, so every tier has the same label ids
        all_records = list(canon["record"]) + (list(canon_eval["record"]) if canon_eval is not None else [])
        label_names = tokenization.bio_names({s["label"] for r in all_records if r for s in json.loads(r)["spans"]})
    jinja_name, jinja = templates.resolve(tokenizer, o.template)
    encoder = _encoder(o, tokenizer, jinja_name, jinja, label_names)
    train, _, dropped, truncated, tokens, loss = _finish(
        _tokenize(encoder, train_src, num_proc, f"{key}-tok-train", "tokenize train", scratch), o.task)
    eval_ds, eval_kept, e_dropped, e_truncated, _, _ = _finish(
        _tokenize(encoder, eval_src, num_proc, f"{key}-tok-eval", "tokenize eval", scratch), o.task)
    if len(train) == 0:
        raise DataError(f"no training rows left in {request.label} at seq_len {o.seq_len} (all {dropped} dropped)")
    stats = DataStats(
        source_rows=len(raw) + (len(raw_eval) if raw_eval is not None else 0), invalid=counts["invalid"],
        duplicates=counts["duplicates"], eval_rows=len(eval_ds), train_rows=len(train), dropped=dropped,
        truncated=truncated, tokens=tokens, loss_tokens=loss, eval_dropped=e_dropped, eval_truncated=e_truncated,
        cache_key=key)
    meta = {"stats": asdict(stats), "format": fmt.name, "template": jinja_name if o.task in ("sft", "dpo") or (
        o.task == "summarization" and o.model_kind == "causal") else None, "label_names": label_names}
    if o.task == "summarization":
        eval_recs = eval_src["record"]
        kept = [json.loads(eval_recs[i]) for i in eval_kept]
        meta["eval_references"] = [r["summary"] for r in kept]
        meta["eval_prompts"] = [r["document"] for r in kept]
    return train, eval_ds, meta


def _save(folder: Path, train, eval_ds, meta) -> None:
    train.save_to_disk(str(folder / "train"))
    eval_ds.save_to_disk(str(folder / "eval"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def _load(folder: Path):
    meta = json.loads((folder / "meta.json").read_text())
    return (datasets.load_from_disk(str(folder / "train")), datasets.load_from_disk(str(folder / "eval")), meta)


def collator_for(task: str, model_kind: str, tokenizer, packing: str | None, pad_to_multiple_of=None):
    from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification

    if task == "dpo":
        return None  # trl's DPOTrainer brings its own
    if packing == "bfd":
        return packing_mod.PackedCollator(tokenizer.pad_token_id, pad_to_multiple_of)
    if packing == "flatten":
        return packing_mod.FlatteningCollator()
    if task == "token-classification":
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=tokenization.IGNORE_INDEX,
                                  pad_to_multiple_of=pad_to_multiple_of)


def generation_encoder(tokenizer, *, task: str, model_kind: str = "causal", template: str | None = None,
                       prompt: str = "", **_):
    """The encoder training uses for a causal model, for rendering generation prompts (prompt_ids)."""
    if model_kind != "causal" or task not in ("sft", "dpo", "summarization"):
        raise DataError(f"generation renders prompts for causal sft, dpo and summarization models, not {task} "
                        f"with a {model_kind} model")
    o = Options(task="sft" if task == "dpo" else task, seq_len=2**31, eval_rows=0, model_kind=model_kind,
                template=template, train_on="responses", truncation="right", label_policy="first", target_len=None,
                source_prefix="", format=None, prompt=prompt)
    jinja_name, jinja = templates.resolve(tokenizer, template)
    return _encoder(o, tokenizer, jinja_name, jinja, None)


def data_shaping(cfg) -> dict:
    """A run config's data-shaping keys (template, prompt, columns) as prepare() takes them: the entrypoint
    and `python -m data_prep --cell` prepare a cell's data with the same call."""
    from ftgrid.schema import parse_columns
    return dict(template=cfg.template or None, prompt=cfg.prompt, columns=parse_columns(cfg.columns))


def prepare(dataset, *, task: str, tokenizer, seq_len: int, eval_rows: int = 0, model_kind: str = "causal",
            packing=False, template: str | None = None, train_on: str = "responses", truncation: str = "right",
            label_policy: str = "first", target_len: int | None = None, source_prefix: str = "",
            format: str | None = None, columns: dict | None = None, prompt: str = "", cache_dir=None,
            use_cache: bool = True, num_proc: int | None = None,
            rank: int | None = None, wait_timeout: float | None = None,
            pad_to_multiple_of: int | None = None) -> Prepared:
    """Tokenized train/eval data for `task` (sft, dpo, token-classification, summarization).

    dataset: `NAME[:TIER]` from the catalogue, a local file/folder, `hf:owner/name`, or a DatasetRequest.
    eval_rows: held-out rows; 0 = the dataset's default (a tenth of the rows at most).
    model_kind: causal | seq2seq | encoder (the registry's `kind`).
    packing: False; True or "bfd" = best-fit bin packing to seq_len with position ids reset per
        example; "flatten" = padding-free micro-batches (DataCollatorWithFlattening). Causal sft and
        summarization only.
    template: None = the tokenizer's chat template, else `alpaca`; or a name (alpaca, chatml, plain,
        tokenizer) or an inline Jinja string.
    train_on: responses (every assistant turn), last (the final one), all (prompt tokens too).
    truncation: right | left | drop (sft); summarization always shortens the document first.
    label_policy: first | all (token classification, see tokenization.py).
    target_len: seq2seq target length (default seq_len).
    columns: {source column: layout column} renamed before the format is detected (schema.parse_columns).
    prompt: the user turn with named fields ({document} for summarization, {instruction} for sft/dpo).
    cache_dir / use_cache: see cache.py. rank: the local rank (default from LOCAL_RANK/RANK).
    """
    request = dataset if isinstance(dataset, DatasetRequest) else parse(dataset)
    o = Options(task=task, seq_len=int(seq_len), eval_rows=int(eval_rows or 0), model_kind=model_kind,
                template=template, train_on=train_on, truncation=truncation, label_policy=label_policy,
                target_len=target_len, source_prefix=source_prefix, format=format, columns=columns, prompt=prompt)
    _validate(request, o)
    mode = packing_mod.normalize(packing)
    if mode and not (model_kind == "causal" and task in ("sft", "summarization")):
        raise DataError(f"packing applies to causal sft/summarization, not {task} with a {model_kind} model"
                        + (" (trl's DPOTrainer has its own padding_free option)" if task == "dpo" else ""))
    jinja_name, jinja = templates.resolve(tokenizer, template)
    key_parts = {"version": VERSION, "data_seed": DATA_SEED, "source": sources.identity(request.entry),
                 "entry": {k: v for k, v in asdict(request.entry).items() if k != "note"}, "tier": request.tier,
                 "options": o.as_dict(), "tokenizer": cache.tokenizer_fingerprint(tokenizer),
                 "template": [jinja_name, jinja]}
    key = cache.key(key_parts)
    from_cache, folder = False, None
    if not use_cache:
        train, eval_ds, meta = build(request, tokenizer, o, num_proc=num_proc, key=key)
    else:
        root = cache.cache_dir(cache_dir)

        def make(tmp: Path):
            _save(tmp, *build(request, tokenizer, o, num_proc=num_proc, key=key, scratch=tmp / "scratch"))
            shutil.rmtree(tmp / "scratch", ignore_errors=True)
        folder, built = cache.get_or_build(root, key, make, rank=rank, timeout=wait_timeout, label=request.label,
                                           check=lambda: sources.check_files(sources.local_files(request.entry),
                                                                             request.label))
        from_cache = not built
        train, eval_ds, meta = _load(folder)
    stats = DataStats(**meta["stats"])
    stats.from_cache, stats.cache_key = from_cache, key
    if mode == "bfd":
        pkey = cache.key({"tokenized": key, "packing": mode, "capacity": o.seq_len, "v": VERSION})
        if use_cache:
            def make_packed(tmp: Path):
                packed = packing_mod.pack(train, o.seq_len, _num_proc(len(train), num_proc), pkey,
                                          **_map_kwargs(tmp / "scratch", "pack"))
                _save(tmp, packed, eval_ds, meta)
                shutil.rmtree(tmp / "scratch", ignore_errors=True)
            pfolder, _ = cache.get_or_build(root, pkey, make_packed, rank=rank, timeout=wait_timeout,
                                            label=f"{request.label} (packed)")
            train = datasets.load_from_disk(str(pfolder / "train"))
        else:
            train = packing_mod.pack(train, o.seq_len, _num_proc(len(train), num_proc), pkey)
        stats.packed_rows = len(train)
    return Prepared(train=train, eval=eval_ds, stats=stats,
                    collator=collator_for(task, model_kind, tokenizer, mode, pad_to_multiple_of),
                    task=task, model_kind=model_kind, label_names=meta.get("label_names"),
                    eval_references=meta.get("eval_references"), eval_prompts=meta.get("eval_prompts"),
                    template=meta.get("template"), cache_path=folder, meta=meta)


class _CallableModule(types.ModuleType):
    """Importing this module rebinds `data_prep.prepare` (the package attribute) from the function to the
    module; making the module callable keeps `from data_prep import prepare; prepare(...)` working in
    every import order."""

    def __call__(self, *args, **kwargs) -> Prepared:
        return prepare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
