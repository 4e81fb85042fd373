"""Packing without contamination, and the collators that go with each layout.

Two ways to stop paying for padding, both keeping examples apart (FACTS: packing without position-id
resets lets examples attend across each other):

- `packing="bfd"` (or True): best-fit-decreasing bin packing of whole examples into rows of at most
  seq_len tokens. Each packed row carries `position_ids` that restart at 0 for every example, and the
  first label of every example is -100 (the previous example's last token must not predict it).
  `PackedCollator` pads rows and sends NO attention mask: transformers then reads the example
  boundaries from the position ids (masking_utils.find_packed_sequence_indices) and builds a
  block-diagonal causal mask for sdpa/eager; flash-attention takes the same position ids.
- `packing="flatten"`: padding-free batches; rows stay unpacked and `FlatteningCollator` (transformers'
  DataCollatorWithFlattening) concatenates each micro-batch into one row with reset position ids.

Both collators put `use_cache=False` in the batch: a forward that builds a KV cache ignores the
position-id boundaries (masking_utils only looks for packed sequences when there is no cache).
"""
from __future__ import annotations

import bisect

import torch

from ftgrid.data_prep.tokenization import IGNORE_INDEX

PACKING_MODES = ("bfd", "flatten")


def normalize(packing) -> str | None:
    if packing in (None, False, "", "none", "no"):
        return None
    if packing is True or packing in ("bfd", "best-fit", "pack", "packed"):
        return "bfd"
    if packing in ("flatten", "padding-free", "padding_free"):
        return "flatten"
    raise ValueError(f"unknown packing {packing!r}; valid: False, True/'bfd' (bin packing), 'flatten' (padding-free)")


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices grouped into bins of total length <= capacity.

    Longest first (ties by index); each goes to the bin with the least room that still fits it.
    Deterministic; bins come out in the order they were opened, members in placement order.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"an example is longer ({max(lengths)}) than the pack capacity {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free space, bin index)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            free, b = room.pop(k)
        else:
            free, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if free - n > 0:
            bisect.insort(room, (free - n, b))
    return bins


class _Packer:
    """Batched map over bins, columnar: one `take` of the members' rows, then numpy over the flat token
    arrays (no Python loop per row or token: as fast as trl.pack_dataset, see benchmarks/bench_packing.py).
    Picklable for num_proc."""

    def __init__(self, source):
        self.source = source
        self._table = None  # the source rows as one arrow table, made in the process that packs

    def __getstate__(self):  # num_proc workers get the dataset (memory-mapped: a path), not a copy of its table
        return {"source": self.source, "_table": None}

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if self._table is None:
            self._table = self.source.with_format("arrow")[:]  # zero-copy unless an indices mapping is applied
        members = batch["members"].combine_chunks()
        per_row = pc.list_value_length(members).to_numpy()
        rows = self._table.take(members.flatten())  # every member's row, in packed order
        ids, labels = rows["input_ids"].combine_chunks(), rows["labels"].combine_chunks()
        lengths = pc.list_value_length(ids).to_numpy().astype(np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths  # where each example begins in the flat token array
        label_values = labels.flatten().to_numpy(zero_copy_only=False).copy()
        label_values[starts[lengths > 0]] = IGNORE_INDEX  # the previous example's last token must not predict it
        positions = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) - np.repeat(starts, lengths)
        offsets = pa.array(np.concatenate([[0], ends[np.cumsum(per_row) - 1]]), pa.int32())

        def packed(values):
            return pa.ListArray.from_arrays(offsets, values)

        return pa.table({"input_ids": packed(ids.flatten()),
                         "labels": packed(pa.array(label_values, labels.type.value_type)),
                         "position_ids": packed(pa.array(positions)),
                         "num_examples": pa.array(per_row.astype(np.int64))})


def pack(ds, capacity: int, num_proc: int | None = None, fingerprint: str | None = None, **map_kwargs):
    """A tokenized causal dataset (input_ids, labels) -> packed rows (input_ids, labels, position_ids,
    num_examples)."""
    import datasets
    import pyarrow.compute as pc

    bins = best_fit(pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_pylist(), capacity)
    plan = datasets.Dataset.from_dict({"members": bins}).with_format("arrow")
    src = ds.select_columns(["input_ids", "labels"])
    map_kwargs = map_kwargs or {"keep_in_memory": True, "load_from_cache_file": False}
    fingerprint = fingerprint or datasets.fingerprint.generate_random_fingerprint()  # hashing _Packer: ~1 s
    packed = plan.map(_Packer(src), batched=True, batch_size=4096, remove_columns=["members"], num_proc=num_proc,
                      new_fingerprint=fingerprint, desc="pack", **map_kwargs)
    return packed.with_format(None)


def position_ids(n: int) -> list[int]:
    return list(range(n))


class PackedCollator:
    """Pads packed (or plain) causal rows; position ids restart per example; no attention mask.

    Rows without `position_ids` (e.g. the unpacked eval set) count as one example each. Padding is a
    separate fake example (its own positions from 0, labels -100), so real tokens never see it.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids, labels, pos = [], [], []
        for f in features:
            n = len(f["input_ids"])
            p = list(f["position_ids"]) if "position_ids" in f else position_ids(n)
            pad = longest - n
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            pos.append(p + position_ids(pad))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(pos), "use_cache": False}


class FlatteningCollator:
    """transformers.DataCollatorWithFlattening (one row per micro-batch, position ids reset per example)."""

    def __init__(self, position_ids_start: int = 0):
        from transformers import DataCollatorWithFlattening

        self.inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX,
                                                position_ids_start=position_ids_start)

    def __call__(self, features):
        features = [{k: f[k] for k in ("input_ids", "labels")} for f in features]
        batch = dict(self.inner(features, return_tensors="pt"))
        batch["use_cache"] = False
        return batch
