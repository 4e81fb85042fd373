#!/usr/bin/env python3
"""Tokenization throughput of data_prep: rows/s and tokens/s, cold (build) vs cached (load), one process.

    .venv/bin/python benchmarks/bench_tokenize.py                       # wordnet (largest shipped sample)
    .venv/bin/python benchmarks/bench_tokenize.py --dataset pii-sample --task token-classification \
        --model-kind encoder
    .venv/bin/python benchmarks/bench_tokenize.py --json                # one JSON object

Cold = prepare() into an empty cache dir (read, adapt, dedupe, split, tokenize, write); encode = the
tokenizer pass alone (the encoder over every row, no I/O); cached = the same prepare() call again
(the entry is loaded; no tokenizer call). The ratio cold/cached is what a sweep saves per cell.
Repeats take the best (least disturbed) time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="wordnet", help="NAME[:TIER] (default: wordnet, all 4,000 rows)")
    ap.add_argument("--task", default="sft")
    ap.add_argument("--model-kind", default="causal")
    ap.add_argument("--tokenizer", default=str(ROOT / "finetune" / "assets" / "tokenizer-tiny"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--num-proc", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import datasets
    from transformers import AutoTokenizer

    from ftgrid.data_prep import formats, sources, templates
    from ftgrid.data_prep.catalog import parse
    from ftgrid.data_prep.prepare import Options, _encoder, prepare, select_rows
    from ftgrid.data_prep.tokenization import bio_names

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    kw = dict(task=args.task, tokenizer=tok, seq_len=args.seq_len, model_kind=args.model_kind,
              num_proc=args.num_proc)

    cold, cached, stats = [], [], None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            p = prepare(args.dataset, cache_dir=d, **kw)
            cold.append(time.perf_counter() - t)
            assert not p.stats.from_cache
            for _ in range(3):
                t = time.perf_counter()
                q = prepare(args.dataset, cache_dir=d, **kw)
                cached.append(time.perf_counter() - t)
                assert q.stats.from_cache
            stats = p.stats

    # the encoder alone over the same rows (train + eval): pure tokenization throughput
    req = parse(args.dataset)
    raw = sources.load(req.entry)
    fmt = formats.get(req.entry.format, raw.column_names, raw[0], args.task)
    canon = formats.canonical(raw, fmt)
    train_idx, eval_idx, _ = select_rows(req, canon["key"])
    rows = canon.select(train_idx + eval_idx).select_columns(["record"])
    labels = None
    if args.task == "token-classification":
        labels = bio_names({s["label"] for r in canon["record"] if r for s in json.loads(r)["spans"]})
    o = Options(task=args.task, seq_len=args.seq_len, eval_rows=0, model_kind=args.model_kind, template=None,
                train_on="responses", truncation="right", label_policy="first", target_len=None,
                source_prefix="", format=None)
    name, jinja = templates.resolve(tok, None)
    enc = _encoder(o, tok, name, jinja, labels)
    records = list(rows["record"])
    encode = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        n_tokens = 0
        for k in range(0, len(records), 500):
            out = enc({"record": records[k:k + 500]})
            n_tokens += sum(len(x) for x in out.get("input_ids", [])) or sum(out.get("_tokens", []))
        encode.append(time.perf_counter() - t)

    n_rows = stats.train_rows + stats.eval_rows
    best_cold, best_cached, best_encode = min(cold), min(cached), min(encode)
    result = {
        "dataset": args.dataset, "task": args.task, "rows": n_rows, "source_rows": stats.source_rows,
        "tokens": n_tokens, "seq_len": args.seq_len, "cpus": len(os.sched_getaffinity(0)),
        "encode_rows_per_s": round(len(records) / best_encode), "encode_tokens_per_s": round(n_tokens / best_encode),
        "cold_s": round(best_cold, 3), "cold_rows_per_s": round(n_rows / best_cold),
        "cold_tokens_per_s": round(n_tokens / best_cold), "cached_s": round(best_cached, 4),
        "cached_rows_per_s": round(n_rows / best_cached), "cold_over_cached": round(best_cold / best_cached, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.dataset} ({args.task}): {n_rows:,} rows, {n_tokens:,} tokens, seq_len {args.seq_len}, "
              f"{result['cpus']} cpus, best of {args.repeat}")
        print(f"  encode only : {best_encode:7.3f} s  {result['encode_rows_per_s']:>9,} rows/s  "
              f"{result['encode_tokens_per_s']:>11,} tokens/s")
        print(f"  cold prepare: {best_cold:7.3f} s  {result['cold_rows_per_s']:>9,} rows/s  "
              f"{result['cold_tokens_per_s']:>11,} tokens/s")
        print(f"  cached      : {best_cached:7.4f} s  {result['cached_rows_per_s']:>9,} rows/s")
        print(f"  cold / cached = {result['cold_over_cached']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
