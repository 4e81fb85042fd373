"""Compatibility wrapper: `build(request, tokenizer, seq_len, eval_rows)` -> (train, eval, stats) for
causal-LM SFT. New code calls `data_prep.prepare(...)`, which this delegates to (same splits, same
cache)."""
from __future__ import annotations

from ftgrid.data_prep.catalog import DatasetRequest
from ftgrid.data_prep.prepare import DATA_SEED, DataStats, prepare  # noqa: F401 - re-exported
from ftgrid.data_prep.tokenization import IGNORE_INDEX  # noqa: F401


def build(request: DatasetRequest, tokenizer, seq_len: int, eval_rows: int = 0):
    prep = prepare(request, task="sft", tokenizer=tokenizer, seq_len=seq_len, eval_rows=eval_rows)
    return prep.train, prep.eval, prep.stats
