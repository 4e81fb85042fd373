"""Datasets for the grid: catalogue and size tiers, format adapters, chat templates, tokenization with
response-only loss, packing without contamination, and an on-disk cache shared by the ranks of a run.

    from ftgrid.data_prep import prepare
    prep = prepare("wordnet:small", task="sft", tokenizer=tok, seq_len=256)
    prep.train, prep.eval, prep.collator, prep.stats

`python -m data_prep --dataset dolly-sample:medium --model pythia-tiny --seq-len 512` prints what a
cell will train on. See prepare.py for the options, catalog.py for the data sets.
"""
from __future__ import annotations


def prepare(*args, **kwargs):
    from ftgrid.data_prep.prepare import prepare as _prepare

    return _prepare(*args, **kwargs)


prepare.__doc__ = "See data_prep.prepare.prepare."
