"""Benchmark (not a test): best-fit packing of tokenized rows, ours against trl.pack_dataset, one process.

    python benchmarks/bench_packing.py [--rows 50000] [--seq-len 512] [--repeat 3]

Rows are synthetic tokenized SFT examples (lengths log-normal around 150 tokens, at most --seq-len;
the first tokens of each are prompt, labelled -100), made with a fixed seed. Timed, best of --repeat:
`data_prep.packing.pack` (best-fit decreasing, position ids reset per example, the first label of every
example masked) and `trl.pack_dataset(ds, seq_len, "bfd")` in one batch (map_kwargs batch_size=None),
both in memory. Printed: seconds, the ratio ours / trl measured in this process (so figures from
different machines compare), packed rows and padding left in each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def synthetic_rows(n: int, seq_len: int, seed: int = 0):
    import datasets
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(150), 0.7, n).astype(np.int64), 8, seq_len)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    ids = rng.integers(0, 50_000, int(lengths.sum()), dtype=np.int32)
    position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels = np.where(position < np.repeat(lengths // 3, lengths), -100, ids).astype(np.int64)  # a third prompt
    table = pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                      "labels": pa.ListArray.from_arrays(offsets, pa.array(labels))})
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3, help="best of N runs each")
    args = p.parse_args(argv)

    import datasets
    import trl

    from ftgrid.data_prep import packing

    datasets.disable_progress_bars()
    ds = synthetic_rows(args.rows, args.seq_len)
    tokens = sum(len(x) for x in ds["input_ids"])
    ours, t_ours = timed(lambda: packing.pack(ds, args.seq_len), args.repeat)
    theirs, t_trl = timed(lambda: trl.pack_dataset(ds, args.seq_len, "bfd", map_kwargs={"batch_size": None}),
                          args.repeat)
    assert sum(ours["num_examples"]) == args.rows and sum(len(x) for x in ours["input_ids"]) == tokens
    print(f"{args.rows} rows, {tokens} tokens, seq_len {args.seq_len}, best of {args.repeat}")
    print(f"{'packer':22} {'seconds':>8} {'x trl':>6} {'rows':>7} {'padding':>8}")
    for name, packed, seconds in (("data_prep.packing.pack", ours, t_ours), ("trl.pack_dataset bfd", theirs, t_trl)):
        padding = 1 - tokens / (len(packed) * args.seq_len)
        print(f"{name:22} {seconds:8.2f} {seconds / t_trl:6.2f} {len(packed):7d} {padding:8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
