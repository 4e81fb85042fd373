"""prepare(): tiers (nested, deterministic, same eval rows), the on-disk cache, the sft.build wrapper,
the catalogue and the `python -m data_prep` command."""
from __future__ import annotations

import json

import pytest

from ftgrid.data_prep import catalog, formats, sources, sft
from ftgrid.data_prep.catalog import CATALOG, DataError, parse
from ftgrid.data_prep.prepare import prepare, select_rows


class CountingTokenizer:
    """Delegates to a real tokenizer and counts every call that tokenizes or renders text."""

    def __init__(self, inner):
        self.__dict__["inner"] = inner
        self.__dict__["calls"] = 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("encode", "batch_encode_plus", "encode_plus", "apply_chat_template", "tokenize"):
            def counted(*a, **k):
                self.__dict__["calls"] += 1
                return attr(*a, **k)
            return counted
        return attr

    def __call__(self, *a, **k):
        self.__dict__["calls"] += 1
        return self.inner(*a, **k)


def records_of(name):
    entry = CATALOG[name]
    ds = sources.load(entry)
    return list(formats.canonical(ds, formats.get(entry.format, ds.column_names, ds[0]))["record"])


# ----------------------------------------------------------------------------- tiers and splits


def test_tiers_are_nested_deterministic_and_share_the_eval_rows():
    recs = records_of("wordnet")
    cut = {t: select_rows(parse(f"wordnet:{t}"), recs, None) for t in ("small", "medium", "large")}
    small, medium, large = (cut[t][0] for t in ("small", "medium", "large"))
    assert (len(small), len(medium), len(large)) == (400, 1200, 3600)
    assert medium[:400] == small and large[:1200] == medium  # nested: the same order, cut longer
    assert cut["small"][1] == cut["medium"][1] == cut["large"][1]  # one eval hold-out for all tiers
    assert not set(cut["large"][1]) & set(large)
    again = select_rows(parse("wordnet:small"), recs, None)
    assert again == cut["small"]
    count, frac = select_rows(parse("wordnet:500"), recs, None), select_rows(parse("wordnet:0.25"), recs, None)
    everything = select_rows(parse("wordnet"), recs, None)[0]
    assert len(everything) == 3800 and everything[:3600] == large
    assert count[0] == large[:500] and frac[0] == everything[:950]


def test_prepared_tiers_nest_on_a_sample(tiny_tok):
    small = prepare("dolly-sample:small", task="sft", tokenizer=tiny_tok, seq_len=128, use_cache=False)
    medium = prepare("dolly-sample:medium", task="sft", tokenizer=tiny_tok, seq_len=128, use_cache=False)
    assert small.stats.train_rows == 40 and medium.stats.train_rows == 120
    assert small.train["input_ids"] == medium.train["input_ids"][:40]
    assert small.eval["input_ids"] == medium.eval["input_ids"]
    again = prepare("dolly-sample:small", task="sft", tokenizer=tiny_tok, seq_len=128, use_cache=False)
    assert again.train["labels"] == small.train["labels"]


def test_hub_tiers_are_decades_of_the_full_set():
    assert CATALOG["pii"].tiers == {"small": 2093, "medium": 20926, "large": 209261}
    assert CATALOG["cnn_dailymail"].tiers == {"small": 3120, "medium": 31197, "large": 311971}
    assert CATALOG["openorca"].tiers == {"small": 2915, "medium": 29149, "large": 291490, "xlarge": 2914896}
    assert parse("openorca:xlarge").tier == "xlarge"
    with pytest.raises(DataError, match="no tier 'xlarge'"):
        parse("pii:xlarge")


def test_catalogue_names_errors_and_hub_offline(tiny_tok, monkeypatch):
    with pytest.raises(DataError, match="did you mean 'dolly'"):
        parse("doly")
    with pytest.raises(DataError, match="bad size tier"):
        parse("wordnet:huge")
    assert parse("hf:some/data:small").entry.source == "some/data"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        prepare("dolly:small", task="sft", tokenizer=tiny_tok, seq_len=64, use_cache=False)
    assert "cannot load hub dataset databricks/databricks-dolly-15k" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="task sft needs a causal model"):
        prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=64, model_kind="encoder")
    with pytest.raises(DataError, match="packing applies to causal sft"):
        prepare("pairs", task="dpo", tokenizer=tiny_tok, seq_len=64, packing=True)


def test_local_file_and_directory_sources(tiny_tok, tmp_path):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(50)]
    rows.append(rows[0])
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = prepare(f"{path}:0.5", task="sft", tokenizer=tiny_tok, seq_len=64, eval_rows=10, use_cache=False)
    assert (p.stats.duplicates, p.stats.eval_rows, p.stats.train_rows) == (1, 10, 20)
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.jsonl").write_text(path.read_text())
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    assert len(sources.load(parse(str(folder)).entry, "validation")) == 5


# ----------------------------------------------------------------------------- cache


def test_second_call_is_a_cache_hit_without_tokenizer_calls(tiny_tok, cache):
    counting = CountingTokenizer(tiny_tok)
    first = prepare("wordnet:small", task="sft", tokenizer=counting, seq_len=128)
    assert counting.calls > 0 and not first.stats.from_cache
    assert first.cache_path.parent == cache and (first.cache_path / "meta.json").is_file()
    counting.__dict__["calls"] = 0
    second = prepare("wordnet:small", task="sft", tokenizer=counting, seq_len=128)
    assert counting.calls == 0 and second.stats.from_cache
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.stats.train_rows == first.stats.train_rows
    # anything that changes the tokens changes the key: another seq_len, template or tier builds again
    third = prepare("wordnet:small", task="sft", tokenizer=counting, seq_len=64)
    fourth = prepare("wordnet:small", task="sft", tokenizer=counting, seq_len=128, template="alpaca")
    assert not third.stats.from_cache and not fourth.stats.from_cache and counting.calls > 0
    assert len({first.stats.cache_key, third.stats.cache_key, fourth.stats.cache_key}) == 3
    assert not list(cache.glob("*.tmp-*"))


def test_failed_build_leaves_no_entry_and_a_failure_note(tiny_tok, cache, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n' * 20)
    with pytest.raises(DataError):
        prepare(str(bad), task="sft", tokenizer=tiny_tok, seq_len=64)
    assert [p.name.endswith(".failed") for p in cache.iterdir() if not p.name.endswith(".lock")] == [True]


def test_sft_build_wrapper_matches_prepare(tiny_tok, cache):
    train, eval_ds, stats = sft.build(catalog.parse("wordnet:small"), tiny_tok, 128, 0)
    p = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128)
    assert p.stats.from_cache and train["input_ids"] == p.train["input_ids"] and len(eval_ds) == 200
    assert stats.train_rows == 400 and stats.tokens > 0


def test_collators_per_task(tiny_tok):
    from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification

    p = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=64, use_cache=False)
    assert isinstance(p.collator, DataCollatorForSeq2Seq)
    batch = p.collator([p.train[0], p.train[1]])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tiny_tok.pad_token_id).all()
    t = prepare("pii-sample:small", task="token-classification", tokenizer=tiny_tok, seq_len=64,
                model_kind="encoder", use_cache=False)
    assert isinstance(t.collator, DataCollatorForTokenClassification)


# ----------------------------------------------------------------------------- command line


def test_cli_prints_counts_and_histogram(capsys, cache):
    from ftgrid.data_prep.__main__ import main

    assert main(["--dataset", "dolly-sample:small", "--model", "pythia-tiny", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "train rows 40" in out and "duplicates 3 removed" in out and "invalid 2" in out
    assert "length histogram" in out and "33-64" in out and "truncated 0" in out
    assert main(["--dataset", "dolly-sample:small", "--model", "pythia-tiny", "--seq-len", "128", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stats"]["from_cache"] and data["stats"]["train_rows"] == 40


def test_cli_offline_hub_tokenizer_is_one_clear_line(capsys, monkeypatch):
    from ftgrid.data_prep.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--dataset", "wordnet:small", "--model", "pythia-1.4b", "--seq-len", "2048"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: could not load the tokenizer of pythia-1.4b")
    assert "--tokenizer PATH" in err
    assert main(["--dataset", "nope:small"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_several_processes_give_the_same_rows(tiny_tok, cache):
    one = prepare("dolly-sample:medium", task="sft", tokenizer=tiny_tok, seq_len=128, use_cache=False)
    two = prepare("dolly-sample:medium", task="sft", tokenizer=tiny_tok, seq_len=128, num_proc=2)
    assert two.train["input_ids"] == one.train["input_ids"] and two.train["labels"] == one.train["labels"]
    assert not (two.cache_path / "scratch").exists()


def test_bos_adding_tokenizer_gets_exactly_one_bos(tiny_tok):
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny_tok)  # a Llama-style tokenizer: encode() puts bos first
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A",
                                                              special_tokens=[("<|endoftext|>", 0)])
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    p = prepare("wordnet:small", task="sft", tokenizer=tok, seq_len=64, template="alpaca", use_cache=False)
    for row in p.train.select(range(10)):
        assert row["input_ids"][0] == tok.bos_token_id and row["input_ids"][1] != tok.bos_token_id
        assert row["labels"][0] == -100
    tok.chat_template = "{{ bos_token }}" + tiny_tok.chat_template  # a template that writes bos itself
    d = prepare("pairs:small", task="dpo", tokenizer=tok, seq_len=128, use_cache=False)
    assert not d.train[0]["prompt"].startswith(tok.bos_token)  # trl adds it when it tokenizes the prompt
    s = prepare("wordnet:small", task="sft", tokenizer=tok, seq_len=64, use_cache=False)
    assert s.train[0]["input_ids"][:2] == [tok.bos_token_id, tok("<|user|>", add_special_tokens=False)["input_ids"][0]]


def test_package_level_prepare_in_any_import_order(tiny_tok):
    import ftgrid.data_prep
    import ftgrid.data_prep.prepare as module  # noqa: F401 - rebinds the package attribute to the module
    from ftgrid.data_prep import prepare as p

    assert callable(p)
    assert p("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=64, use_cache=False).stats.train_rows == 400
    assert callable(ftgrid.data_prep.prepare)
