"""What will a cell train on? Prepare (and cache) a dataset for a model and print the counts.

    python -m data_prep --dataset dolly-sample:medium --model pythia-tiny --seq-len 512
    python -m data_prep --dataset dolly:medium --model pythia-1.4b --seq-len 2048      # hub data + tokenizer
    python -m data_prep --dataset pii-sample --model roberta-tiny --task token-classification
    python -m data_prep --dataset my.jsonl:0.5 --model llama-2-7b --tokenizer /models/llama2 --packing
    python -m data_prep --dataset my.csv --columns instruction=Input,output=Output --template chatml
    python -m data_prep --cell runs/<sweep>/<cell>/cell.yaml     # exactly what that cell trains on
    python -m data_prep --list                                                          # the catalogue

It prints the first training example as the model sees it, the tokens with a loss between ⟦ and ⟧.

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
from ftgrid import validate
from ftgrid.cli import CliParser
from ftgrid.errors import one_line
from ftgrid.schema import LIMITS
from ftgrid.data_prep.tokenization import TRAINED_CLOSE, TRAINED_OPEN


def parse_args(argv):
    p = CliParser(prog="python -m data_prep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", help="NAME[:TIER] from the catalogue, a local file/folder[:TIER], hf:OWNER/NAME")
    p.add_argument("--model", default=None, help="registry name, model folder or hub id: its tokenizer and kind "
                   "(default pythia-tiny)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id instead of the model's")
    p.add_argument("--task", help="sft | dpo | token-classification | summarization (default: the dataset's)")
    p.add_argument("--seq-len", type=validate.arg_int(1, LIMITS["seq_len"][1]), default=None, help="default 512 (a --cell: its seq_len)")
    p.add_argument("--eval-rows", type=validate.arg_int(0, LIMITS["eval_rows"][1]), default=None, help="0 = the dataset's default")
    p.add_argument("--cell", help="a cell.yaml: its dataset, model, task, seq_len, template, prompt, columns "
                   "and packing (flags given here win)")
    p.add_argument("--template", help="chat template: tokenizer (its own), alpaca, chatml, plain, or a Jinja file")
    p.add_argument("--prompt", help='the user turn with named fields, e.g. "Summarize: {document}"')
    p.add_argument("--columns", help="rename columns to a known layout, e.g. instruction=Input,output=Output")
    p.add_argument("--train-on", default="responses", choices=["responses", "last", "all"])
    p.add_argument("--truncation", default="right", choices=["right", "left", "drop"])
    p.add_argument("--label-policy", default="first", choices=["first", "all"])
    p.add_argument("--packing", nargs="?", const="bfd", default=None, choices=["bfd", "flatten"],
                   help="bfd (best-fit bin packing; the default when given alone) or flatten (padding-free)")
    p.add_argument("--format", help="force a format adapter instead of detecting it from the columns")
    p.add_argument("--cache-dir", help="default $FTGRID_DATA_CACHE or ~/.cache/ftgrid/data")
    p.add_argument("--no-cache", action="store_true", help="build in memory, read and write no cache")
    p.add_argument("--num-proc", type=validate.arg_int(1, 256), help="processes for map (default: several when rows are many)")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    return p.parse_args(argv)


def load_tokenizer(model: str, path: str | None):
    """The model's tokenizer exactly as finetune/train.py loads it (so the cache key matches)."""
    from ftgrid.registry import load_tokenizer as load_model_tokenizer
    from ftgrid.registry import model_spec

    spec = model_spec(model)
    if path:
        spec = dataclasses.replace(spec, hub_id=path, tokenizer=path)
    source = spec.tokenizer or spec.hub_id or "the project's tiny tokenizer"
    try:
        return spec, load_model_tokenizer(spec)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SystemExit(f"error: could not load the tokenizer of {model} ({source}); offline there is no model "
                         f"hub: pass --tokenizer PATH to a local copy ({first})")


def from_cell(args) -> None:
    """Fill what the command line left open from a cell.yaml, so the preview is that cell's data."""
    if not args.cell:
        args.model, args.seq_len = args.model or "pythia-tiny", args.seq_len or 512
        args.eval_rows = args.eval_rows or 0
        return
    from ftgrid import schema
    cfg = schema.load(args.cell)
    for key, value in (("dataset", cfg.dataset), ("model", cfg.model), ("task", cfg.task), ("seq_len", cfg.seq_len),
                       ("eval_rows", cfg.eval_rows), ("template", cfg.template), ("prompt", cfg.prompt),
                       ("columns", cfg.columns)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.packing is None and cfg.effective_packing() != "none":
        args.packing = cfg.effective_packing()


def shaping(args, task: str) -> dict:
    """--template/--prompt/--columns, checked by the run-config schema exactly as a cell's keys are."""
    from ftgrid.data_prep.prepare import data_shaping
    from ftgrid.schema import RunConfig
    cfg = RunConfig(task=task, template=args.template or "", prompt=args.prompt or "", columns=args.columns or "")
    cfg._validate_data_shaping()
    return data_shaping(cfg)


def first_example(prep, tokenizer, task: str) -> str:
    """The first training row as text; packed rows are cut to their first example (position ids restart)."""
    from ftgrid.data_prep.tokenization import marked_text
    if len(prep.train) == 0 or task == "token-classification":
        return ""
    first = prep.train[0]
    if task == "dpo":
        return (f"{first['prompt']}{TRAINED_OPEN}{first['chosen']}{TRAINED_CLOSE}\n  (rejected: "
                f"{TRAINED_OPEN}{first['rejected']}{TRAINED_CLOSE})")
    ids, labels = list(first["input_ids"]), list(first["labels"])
    positions = first.get("position_ids")
    if positions is not None:
        end = next((i for i in range(1, len(positions)) if positions[i] == 0), len(positions))
        ids, labels = ids[:end], labels[:end]
    return marked_text(tokenizer, ids, labels)


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
    if not args.dataset and not args.cell:
        print("error: --dataset is required (or --cell, or --list)", file=sys.stderr)
        return 2
    import datasets

    from ftgrid.data_prep.catalog import DataError, parse
    from ftgrid.data_prep.prepare import prepare
    from ftgrid.errors import ConfigError

    datasets.disable_progress_bars()
    try:
        from_cell(args)
        request = parse(args.dataset)
        spec, tok = load_tokenizer(args.model, args.tokenizer)
        task = args.task or request.entry.task or "sft"
        prep = prepare(request, task=task, tokenizer=tok, seq_len=args.seq_len, eval_rows=args.eval_rows,
                       model_kind=spec.kind, packing=args.packing or False,
                       train_on=args.train_on, truncation=args.truncation, label_policy=args.label_policy,
                       format=args.format, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       num_proc=args.num_proc, **shaping(args, task))
    except SystemExit as e:
        print(e.code, file=sys.stderr)
        return 2
    except (DataError, ConfigError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
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
    preview = first_example(prep, tok, task)
    if preview:
        print(f"first training example (tokens with a loss between {TRAINED_OPEN} and {TRAINED_CLOSE}):")
        print(preview)
    return 0


if __name__ == "__main__":
    sys.exit(main())
