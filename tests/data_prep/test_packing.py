"""Packing without contamination: an example's loss is the same packed and unpacked on a tiny model."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ftgrid.data_prep import packing
from ftgrid.data_prep.prepare import prepare
from ftgrid.data_prep.tokenization import IGNORE_INDEX


def test_best_fit_decreasing():
    assert packing.best_fit([6, 5, 4, 3, 2, 2], 8) == [[0, 4], [1, 3], [2, 5]]
    rng = random.Random(0)
    lengths = [rng.randrange(1, 100) for _ in range(500)]
    bins = packing.best_fit(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower = -(-sum(lengths) // 128)
    assert len(bins) <= lower * 1.05 + 1  # close to the bound: far fewer rows than examples
    assert packing.best_fit(lengths, 128) == bins  # deterministic
    with pytest.raises(ValueError, match="longer"):
        packing.best_fit([9], 8)


@pytest.mark.parametrize("num_proc", [None, 2])
def test_pack_rows_follow_the_best_fit_plan(num_proc):
    """The columnar packer against the plan read row by row: members concatenated in plan order,
    positions restarting per example, each example's first label masked; a shuffled (index-mapped)
    source and worker processes (the packer pickled) give the same rows."""
    import datasets

    rng = random.Random(1)
    rows = [[rng.randrange(1, 1000) for _ in range(rng.randrange(1, 60))] for _ in range(300)]
    labels = [r if k % 2 else [-100] * (len(r) // 2) + r[len(r) // 2:] for k, r in enumerate(rows)]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": labels, "other": list(range(300))})
    order = list(range(300))
    rng.shuffle(order)
    ds = ds.select(order)
    rows, labels = [rows[i] for i in order], [labels[i] for i in order]
    packed = packing.pack(ds, 64, num_proc=num_proc)
    bins = packing.best_fit([len(r) for r in rows], 64)
    assert packed.column_names == ["input_ids", "labels", "position_ids", "num_examples"]
    assert len(packed) == len(bins) < 300
    for got, members in zip(packed, bins):
        assert got["input_ids"] == [t for i in members for t in rows[i]]
        assert got["labels"] == [t for i in members for t in [IGNORE_INDEX] + labels[i][1:]]
        assert got["position_ids"] == [p for i in members for p in range(len(rows[i]))]
        assert got["num_examples"] == len(members)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftgrid.registry import model_spec

    spec = model_spec("pythia-tiny")
    config = AutoConfig.for_model(spec.model_type, **spec.hf_config_kwargs(), attn_implementation="sdpa")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def token_losses(logits, labels):
    """Per-token loss of next-token prediction (position t predicts labels[t+1]); nan where ignored."""
    shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]).float(), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    return torch.where(shift_labels == IGNORE_INDEX, torch.nan, loss)


def test_packed_and_unpacked_losses_are_equal(tiny_tok, model):
    unpacked = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128, use_cache=False)
    packed = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128, packing=True, use_cache=False)
    assert packed.stats.packed_rows < unpacked.stats.train_rows / 2
    assert sum(packed.train["num_examples"]) == unpacked.stats.train_rows
    lengths = [len(x) for x in unpacked.train["input_ids"]]
    bins = packing.best_fit(lengths, 128)  # the plan prepare() packed with, in the same order
    batch = packed.collator([packed.train[i] for i in range(4)])
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"} and batch["use_cache"] is False
    with torch.no_grad():
        out = model(**batch)
        packed_losses = token_losses(out.logits, batch["labels"])
        total, count = 0.0, 0
        for row in range(4):
            offset = 0
            members = bins[row]
            assert batch["input_ids"].shape[1] >= sum(lengths[i] for i in members)
            for i in members:
                ex = unpacked.train[i]
                n = len(ex["input_ids"])
                assert batch["input_ids"][row, offset:offset + n].tolist() == ex["input_ids"]
                assert batch["position_ids"][row, offset:offset + n].tolist() == list(range(n))
                alone = model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=False).logits
                want = token_losses(alone, torch.tensor([ex["labels"]]))[0]
                # in the pack, the example's tokens predict positions offset+1 .. offset+n-1
                got = packed_losses[row, offset:offset + n - 1]
                torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, equal_nan=True)
                total += float(torch.nansum(want))
                count += int((~torch.isnan(want)).sum())
                offset += n
        # the batch loss the Trainer sees is the token-weighted mean over all examples
        torch.testing.assert_close(out.loss, torch.tensor(total / count), atol=1e-5, rtol=1e-5)


def test_packing_without_position_resets_would_contaminate(tiny_tok, model):
    """The control: the same packed row as one plain sequence (positions 0..n, full causal attention)
    gives different losses for every example after the first, so the equality above is not vacuous."""
    packed = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128, packing=True, use_cache=False)
    row = next(r for r in packed.train if r["num_examples"] >= 3)
    ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
    with torch.no_grad():
        good = token_losses(model(input_ids=ids, position_ids=torch.tensor([row["position_ids"]]),
                                  use_cache=False).logits, labels)
        bad = token_losses(model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits, labels)
        cached = token_losses(model(input_ids=ids, position_ids=torch.tensor([row["position_ids"]]),
                                    use_cache=True).logits, labels)
    second = row["position_ids"].index(0, 1)
    assert torch.allclose(good[0, :second - 1], bad[0, :second - 1], atol=1e-5, equal_nan=True)
    assert not torch.allclose(good[0, second:], bad[0, second:], atol=1e-3, equal_nan=True)
    # with a KV cache the model ignores the boundaries (hence use_cache=False in the collator's batch)
    assert not torch.allclose(good[0, second:], cached[0, second:], atol=1e-3, equal_nan=True)


def test_flattening_collator_matches_unpacked(tiny_tok, model):
    p = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128, packing="flatten", use_cache=False)
    assert p.stats.packed_rows == 0 and isinstance(p.collator, packing.FlatteningCollator)
    feats = [p.train[i] for i in range(3)]
    batch = p.collator(feats)
    assert batch["input_ids"].shape[0] == 1 and batch["use_cache"] is False
    with torch.no_grad():
        flat = token_losses(model(**batch).logits, batch["labels"])[0]
        offset = 0
        for ex in feats:
            n = len(ex["input_ids"])
            alone = token_losses(model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=False).logits,
                                 torch.tensor([ex["labels"]]))[0]
            torch.testing.assert_close(flat[offset:offset + n - 1], alone, atol=2e-5, rtol=1e-4, equal_nan=True)
            offset += n


def test_packed_collator_pads_as_a_separate_example(tiny_tok):
    coll = packing.PackedCollator(tiny_tok.pad_token_id, pad_to_multiple_of=8)
    batch = coll([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]},
                  {"input_ids": [5, 6], "labels": [-100, 6]}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"][1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert batch["labels"][1, 2:].eq(IGNORE_INDEX).all() and "attention_mask" not in batch


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bfd", "flatten"])
def test_trainer_runs_on_packed_batches(tiny_tok, model, tmp_path, mode):
    import transformers

    p = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128, packing=mode, use_cache=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                                          use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                                          remove_unused_columns=False, logging_steps=1,
                                          include_num_input_tokens_seen="non_padding")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=p.train, eval_dataset=p.eval.select(range(8)),
                                   data_collator=p.collator, processing_class=tiny_tok)
    result = trainer.train()
    assert result.global_step == 2 and trainer.state.num_input_tokens_seen > 0
    assert trainer.evaluate()["eval_loss"] > 0
    model.eval()


def _causal_families():
    from ftgrid.registry import registry
    smallest = {}
    for spec in sorted(registry().values(), key=lambda s: s.hidden * s.total_layers):
        if spec.kind == "causal":
            smallest.setdefault(spec.family, spec)
    return sorted(smallest.items())


@pytest.mark.parametrize("family, spec", _causal_families(), ids=[f for f, _ in _causal_families()])
def test_every_causal_family_keeps_packed_examples_apart(family, spec):
    """packing=auto packs every causal model's sft: each registry family, shrunk, must give an example the
    same logits alone and inside a packed row (position ids reset, no attention mask)."""
    import dataclasses

    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = dataclasses.replace(spec, layers=2, hidden=64, heads=4, kv_heads=2 if spec.kv_heads else None, ffn=128,
                               vocab=1024, max_seq_len=512,
                               experts=min(spec.experts or 0, 4) or None)
    kwargs = tiny.hf_config_kwargs()
    if "rotary_dim" in kwargs:
        kwargs["rotary_dim"] = 8  # within the tiny head size (16)
    attn = "eager" if family == "gptj" else "sdpa"  # transformers has no sdpa for GPT-J
    config = AutoConfig.for_model(tiny.model_type, **kwargs, attn_implementation=attn)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    a, b = torch.randint(0, 1000, (1, 7)), torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=x, use_cache=False).logits for x in (a, b)], dim=1)
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([list(range(7)) + list(range(9))]),
                       use_cache=False).logits
        joined = model(input_ids=torch.cat([a, b], 1), use_cache=False).logits  # the control: b sees a
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(joined[:, 7:], alone[:, 7:], atol=1e-3)
