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


class _Packer:  # batched map over bins: picklable for num_proc
    def __init__(self, source):
        self.source = source

    def __call__(self, batch):
        out = {"input_ids": [], "labels": [], "position_ids": [], "num_examples": []}
        for members in batch["members"]:
            ids, labels, pos = [], [], []
            for i in members:
                row = self.source[int(i)]
                ex_labels = list(row["labels"])
                ex_labels[0] = IGNORE_INDEX
                ids += row["input_ids"]
                labels += ex_labels
                pos += range(len(row["input_ids"]))
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["position_ids"].append(pos)
            out["num_examples"].append(len(members))
        return out


def pack(ds, capacity: int, num_proc: int | None = None, fingerprint: str | None = None, **map_kwargs):
    """A tokenized causal dataset (input_ids, labels) -> packed rows (input_ids, labels, position_ids,
    num_examples)."""
    import datasets

    bins = best_fit([len(x) for x in ds["input_ids"]], capacity)
    plan = datasets.Dataset.from_dict({"members": bins})
    src = ds.select_columns(["input_ids", "labels"])
    map_kwargs = map_kwargs or {"keep_in_memory": True, "load_from_cache_file": False}
    return plan.map(_Packer(src), batched=True, batch_size=256, remove_columns=["members"], num_proc=num_proc,
                    new_fingerprint=fingerprint, desc="pack", **map_kwargs)


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


def length_grouped_order(lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50) -> list[int]:
    """Indices shuffled, then sorted by length within mega-batches of `mega` batches (like the Trainer's
    LengthGroupedSampler, group_by_length=True), longest mega-batch first. Deterministic for a seed."""
    import random

    idx = list(range(len(lengths)))
    random.Random(seed).shuffle(idx)
    size = batch_size * mega
    groups = [sorted(idx[i:i + size], key=lambda j: -lengths[j]) for i in range(0, len(idx), size)]
    groups.sort(key=lambda g: -lengths[g[0]])
    return [j for g in groups for j in g]
