"""What will a cell train on? Prepare (and cache) a dataset for a model and print the counts.

    python -m data_prep --dataset dolly-sample:medium --model pythia-tiny --seq-len 512
    python -m data_prep --dataset dolly:medium --model pythia-1.4b --seq-len 2048      # hub data + tokenizer
    python -m data_prep --dataset pii-sample --model roberta-tiny --task token-classification
    python -m data_prep --dataset my.jsonl:0.5 --model llama-2-7b --tokenizer /models/llama2 --packing
    python -m data_prep --list                                                          # the catalogue

Run it once before a sweep to fill the cache (~/.cache/ftgrid/data, or $FTGRID_DATA_CACHE): every
cell with the same dataset, tier, tokenizer, template, seq_len and task then loads it.
Bad input or a tokenizer that cannot be loaded (e.g. offline) is one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from ftgrid.cli import CliParser


def parse_args(argv):
    p = CliParser(prog="python -m data_prep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", help="NAME[:TIER] from the catalogue, a local file/folder[:TIER], hf:OWNER/NAME")
    p.add_argument("--model", default="pythia-tiny", help="registry entry: its tokenizer and kind (default "
                   "pythia-tiny)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id instead of the model's")
    p.add_argument("--task", help="sft | dpo | token-classification | summarization (default: the dataset's)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-rows", type=int, default=0, help="0 = the dataset's default")
    p.add_argument("--template", help="chat template: tokenizer (its own), alpaca, chatml, plain")
    p.add_argument("--train-on", default="responses", choices=["responses", "last", "all"])
    p.add_argument("--truncation", default="right", choices=["right", "left", "drop"])
    p.add_argument("--label-policy", default="first", choices=["first", "all"])
    p.add_argument("--packing", nargs="?", const="bfd", default=None, choices=["bfd", "flatten"],
                   help="bfd (best-fit bin packing; the default when given alone) or flatten (padding-free)")
    p.add_argument("--format", help="force a format adapter instead of detecting it from the columns")
    p.add_argument("--cache-dir", help="default $FTGRID_DATA_CACHE or ~/.cache/ftgrid/data")
    p.add_argument("--no-cache", action="store_true", help="build in memory, read and write no cache")
    p.add_argument("--num-proc", type=int, help="processes for map (default: several when rows are many)")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    return p.parse_args(argv)


def load_tokenizer(model: str, path: str | None):
    """The model's tokenizer exactly as finetune/train.py loads it (so the cache key matches)."""
    from ftgrid.registry import load_tokenizer as load_model_tokenizer
    from ftgrid.registry import model_spec

    spec = model_spec(model)
    if path:
        spec = dataclasses.replace(spec, hub_id=path)
    source = spec.hub_id or "the project's tiny tokenizer"
    try:
        return spec, load_model_tokenizer(spec)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SystemExit(f"error: could not load the tokenizer of {model} ({source}); offline there is no model "
                         f"hub: pass --tokenizer PATH to a local copy ({first})")


def histogram(lengths: list[int], seq_len: int) -> list[str]:
    if not lengths:
        return []
    edges, e = [], 16
    while e < seq_len:
        edges.append(e)
        e *= 2
    edges.append(seq_len)
    counts, lo = [], 0
    for hi in edges:
        counts.append((lo, hi, sum(1 for n in lengths if lo < n <= hi)))
        lo = hi
    top = max(c for _, _, c in counts) or 1
    return [f"  {lo + 1:>6}-{hi:<6} {c:>8}  {'#' * math.ceil(40 * c / top) if c else ''}" for lo, hi, c in counts]


def print_catalog() -> None:
    from ftgrid.data_prep.catalog import CATALOG

    print(f"{'name':20s} {'task':21s} {'format':14s} {'tiers':34s} source")
    for e in CATALOG.values():
        tiers = "/".join(f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in e.tiers.values())
        where = f"samples/{e.source}" if e.is_sample else f"hub {e.source}"
        print(f"{e.name:20s} {e.task:21s} {e.format:14s} {tiers:34s} {where}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        print_catalog()
        return 0
    if not args.dataset:
        print("error: --dataset is required (or --list)", file=sys.stderr)
        return 2
    import datasets

    from ftgrid.data_prep.catalog import DataError, parse
    from ftgrid.data_prep.prepare import prepare
    from ftgrid.errors import ConfigError

    datasets.disable_progress_bars()
    try:
        request = parse(args.dataset)
        spec, tok = load_tokenizer(args.model, args.tokenizer)
        task = args.task or request.entry.task or "sft"
        prep = prepare(request, task=task, tokenizer=tok, seq_len=args.seq_len, eval_rows=args.eval_rows,
                       model_kind=spec.kind, packing=args.packing or False, template=args.template,
                       train_on=args.train_on, truncation=args.truncation, label_policy=args.label_policy,
                       format=args.format, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       num_proc=args.num_proc)
    except SystemExit as e:
        print(e.code, file=sys.stderr)
        return 2
    except (DataError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = dataclasses.asdict(prep.stats)
    if args.json:
        print(json.dumps({"dataset": request.label, "task": task, "model": args.model, "seq_len": args.seq_len,
                          "format": prep.meta.get("format"), "template": prep.template, "stats": stats,
                          "cache": str(prep.cache_path) if prep.cache_path else None}, indent=1))
        return 0
    s = prep.stats
    print(f"{request.label}  task={task}  format={prep.meta.get('format')}  model={args.model} ({spec.kind})  "
          f"seq_len={args.seq_len}" + (f"  template={prep.template}" if prep.template else ""))
    print(f"  source rows {s.source_rows:,}: invalid {s.invalid:,}, duplicates {s.duplicates:,} removed")
    print(f"  eval rows {s.eval_rows:,} (dropped {s.eval_dropped}, truncated {s.eval_truncated})")
    print(f"  train rows {s.train_rows:,}: dropped {s.dropped:,}, truncated {s.truncated:,} "
          f"(policy {args.truncation})")
    print(f"  train tokens {s.tokens:,}, of which with loss {s.loss_tokens:,}"
          + (f"; mean {s.tokens / s.train_rows:.1f} per row" if s.train_rows else ""))
    if prep.label_names:
        print(f"  labels ({len(prep.label_names)}): {', '.join(prep.label_names)}")
    if s.packed_rows:
        print(f"  packed into {s.packed_rows:,} rows of <= {args.seq_len} tokens "
              f"({100 * s.tokens / (s.packed_rows * args.seq_len):.1f}% full)")
    if task != "dpo":
        lengths = [len(x) for x in (prep.train if not s.packed_rows else prep.train)["input_ids"]]
        print("  length histogram (tokens per train row" + (", packed" if s.packed_rows else "") + "):")
        print("\n".join(histogram(lengths, args.seq_len)))
    print(f"  cache: {prep.cache_path or 'off'}" + (" (hit)" if s.from_cache else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
