"""One test per format adapter on its shipped sample: the canonical records, the loss masks and the
labels are checked against the source rows, not just counted."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from ftgrid.data_prep import formats, sources
from ftgrid.data_prep.catalog import CATALOG, SAMPLES_DIR, DataError
from ftgrid.data_prep.prepare import prepare
from ftgrid.data_prep.tokenization import IGNORE_INDEX

EOS = "<|endoftext|>"


def raw(name: str, split: str | None = None) -> datasets.Dataset:
    return sources.load(CATALOG[name], split)


def recs(name: str, fmt: str | None = None, split: str | None = None) -> list[dict]:
    ds = raw(name, split)
    return formats.records(ds, formats.get(fmt or CATALOG[name].format, ds.column_names, ds[0]))


def runs(tok, ids, labels) -> list[tuple[str, bool]]:
    """The row as decoded (text, trained-on) runs."""
    out, cur, flag = [], [], None
    for i, lab in zip(ids, labels):
        t = lab != IGNORE_INDEX
        if flag is not None and t != flag:
            out.append((tok.decode(cur), flag))
            cur = []
        cur.append(i)
        flag = t
    if cur:
        out.append((tok.decode(cur), flag))
    return out


def trained(tok, row) -> list[str]:
    return [t for t, k in runs(tok, row["input_ids"], row["labels"]) if k]


def sft(name, tok, **kw):
    return prepare(f"{name}:large", task="sft", tokenizer=tok, seq_len=kw.pop("seq_len", 512), use_cache=False, **kw)


def by_prompt(prep, tok):
    """decoded prompt text -> row, for finding a known source row in the shuffled output."""
    return {tok.decode([i for i, l in zip(r["input_ids"], r["labels"]) if l == IGNORE_INDEX]): r
            for r in prep.train}


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if e.is_sample])
def test_every_sample_is_detected_as_its_catalogued_format(name):
    ds = raw(name)
    assert formats.detect(ds.column_names, ds[0], CATALOG[name].task) == CATALOG[name].format


def test_unknown_layout_fails_with_one_line_listing_columns_and_formats(tmp_path, tiny_tok):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"foo": "a", "bar": "b"}\n' * 30)
    with pytest.raises(DataError) as e:
        prepare(str(path), task="sft", tokenizer=tiny_tok, seq_len=64, use_cache=False)
    msg = str(e.value)
    assert "\n" not in msg and "bar, foo" in msg
    for fmt in ("alpaca", "dolly", "openorca", "messages", "lima"):
        assert f"{fmt}:" in msg


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# The plain layouts of files from outside the catalog: one row each, what it must become, and the task.
PLAIN = [
    ("prompt-completion", {"prompt": "Name a colour.", "completion": "Blue."}, "sft",
     {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}),
    ("prompt-completion", {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                           "completion": [{"role": "assistant", "content": "Hello."}]}, "sft",
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello."}]}),
    ("prompt-response", {"prompt": "2+2?", "response": "4"}, "sft",
     {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
    ("instruction-response", {"instruction": "Say yes.", "response": "Yes."}, "sft",
     {"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}]}),
    ("question-answer", {"question": "3*3?", "answer": "9"}, "sft",
     {"messages": [{"role": "user", "content": "3*3?"}, {"role": "assistant", "content": "9"}]}),
    ("input-output", {"input": "abc", "output": "cba"}, "sft",
     {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"}]}),
    ("hh-rlhf", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 1+1?\n\nAssistant: 2",
                 "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 1+1?\n\nAssistant: 3"}, "dpo",
     {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "1+1?"}], "chosen": "2", "rejected": "3"}),
    ("hh-rlhf", {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                 "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}, "dpo",
     {"messages": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"}),
    ("samsum", {"dialogue": "Ann: lunch?\nBob: sure", "summary": "They will have lunch."}, "summarization",
     {"document": "Ann: lunch?\nBob: sure", "summary": "They will have lunch."}),
    ("text-summary", {"text": "A long bill.", "summary": "A bill."}, "summarization",
     {"document": "A long bill.", "summary": "A bill."}),
]


@pytest.mark.parametrize("name, row, task, record", PLAIN, ids=[f"{p[0]}-{i}" for i, p in enumerate(PLAIN)])
def test_plain_layouts_are_detected_and_adapted(name, row, task, record):
    ds = datasets.Dataset.from_list([row])
    fmt = formats.get("auto", ds.column_names, ds[0], task)
    assert fmt.name == name and fmt.task == task
    assert formats.records(ds, fmt) == [record]


def test_plain_layouts_reject_rows_that_do_not_hold_a_pair():
    bad = [{"prompt": [{"content": "no role"}], "completion": "x"},  # a message without a role
           {"prompt": "q", "completion": []},
           {"prompt": "q", "completion": "   "}]
    for row in bad:
        assert formats.prompt_completion(row) is None, row
    hh = formats.FORMATS["hh-rlhf"].fn
    assert hh({"chosen": "no turns at all", "rejected": "none here"}) is None
    assert hh({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"}) is None
    assert hh({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"}) is None


def test_rows_of_another_shape_than_the_layout_are_rejected_not_a_crash(tmp_path, tiny_tok):
    """A null message list (or text where a list goes) made the adapter raise and the whole preparation fail
    with a traceback; such rows are now rejected and counted, like any invalid row."""
    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(20)]
    p = prepare(_jsonl(tmp_path / "holes.jsonl", good + [{"messages": None}] * 5), task="sft", tokenizer=tiny_tok,
                seq_len=64, use_cache=False)
    assert p.stats.invalid == 5 and p.stats.train_rows + p.stats.eval_rows == 20
    with pytest.raises(DataError, match="dataset text has 0 usable rows"):
        prepare(_jsonl(tmp_path / "text.jsonl", [{"messages": f"hello {i}"} for i in range(30)]), task="sft",
                tokenizer=tiny_tok, seq_len=64, use_cache=False)


def test_a_prompt_completion_file_trains_on_the_completion_only(tmp_path, tiny_tok):
    rows = [{"prompt": f"Spell {w} backwards.", "completion": w[::-1]} for w in
            ("apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon", "ocean", "candle") * 3]
    rows = [dict(r, prompt=f"{r['prompt']} ({i})") for i, r in enumerate(rows)]
    p = prepare(_jsonl(tmp_path / "mine.jsonl", rows), task="sft", tokenizer=tiny_tok, seq_len=64, use_cache=False)
    assert p.stats.invalid == 0 and p.stats.train_rows + p.stats.eval_rows == len(rows)
    want = {f"<|user|>\n{r['prompt']}\n<|assistant|>\n": r["completion"] + EOS for r in rows}
    for prompt, row in by_prompt(p, tiny_tok).items():
        assert trained(tiny_tok, row) == [want[prompt]]


def test_named_format_wrong_task_and_wrong_columns_fail():
    with pytest.raises(DataError, match="is dpo data, not sft"):
        formats.get("pairs", ["prompt", "chosen", "rejected"], task="sft")
    with pytest.raises(DataError, match="needs columns context"):
        formats.get("dolly", ["instruction", "response"])
    with pytest.raises(DataError, match="look like format 'pairs'"):
        formats.detect(["prompt", "chosen", "rejected"], task="sft")


# ----------------------------------------------------------------------------- sft adapters


def test_alpaca_wordnet(tiny_tok):
    rows = raw("wordnet")
    r = recs("wordnet")
    with_input = next(i for i, x in enumerate(rows) if x["input"])
    assert r[with_input]["messages"] == [
        {"role": "user", "content": rows[with_input]["instruction"] + "\n\n" + rows[with_input]["input"]},
        {"role": "assistant", "content": rows[with_input]["output"]}]
    p = prepare("wordnet:small", task="sft", tokenizer=tiny_tok, seq_len=128, use_cache=False)
    for row in p.train.select(range(20)):
        pieces = runs(tiny_tok, row["input_ids"], row["labels"])
        assert [k for _, k in pieces] == [False, True]
        assert pieces[0][0].startswith("<|user|>\n") and pieces[0][0].endswith("<|assistant|>\n")
        assert pieces[1][0].endswith(EOS) and EOS not in pieces[0][0]


def test_dolly(tiny_tok):
    rows = raw("dolly-sample")
    r = recs("dolly-sample")
    closed = next(x for x in rows if x["context"] and x["response"].strip())
    rec = next(x for x in r if x["messages"][1]["content"] == closed["response"]
               and x["messages"][0]["content"].endswith(closed["context"]))
    assert rec["messages"][0]["content"] == f"{closed['instruction']}\n\n{closed['context']}"
    p = sft("dolly-sample", tiny_tok)
    assert (p.stats.invalid, p.stats.duplicates) == (2, 3)  # an empty and a blank response; 3 repeats
    assert p.stats.source_rows == 303 and p.stats.eval_rows == 20 and p.stats.train_rows == 303 - 2 - 3 - 20
    want = {}
    for x in rows:
        user = x["instruction"] + (f"\n\n{x['context']}" if x["context"] else "")
        want[f"<|user|>\n{user}\n<|assistant|>\n"] = x["response"] + EOS
    for prompt, row in by_prompt(p, tiny_tok).items():
        assert trained(tiny_tok, row) == [want[prompt]]


def test_openorca_parquet_system_prompt(tiny_tok):
    rows = raw("openorca-sample")
    r = recs("openorca-sample")
    for src, rec in zip(rows, r):
        roles = [m["role"] for m in rec["messages"]]
        assert roles == (["system", "user", "assistant"] if src["system_prompt"] else ["user", "assistant"])
        assert rec["messages"][-1]["content"] == src["response"]
    p = sft("openorca-sample", tiny_tok)
    assert p.stats.duplicates == 1
    with_system = [row for row in p.train if tiny_tok.decode(row["input_ids"]).startswith("<|system|>\n")]
    assert with_system
    for row in with_system[:10]:
        first, response = runs(tiny_tok, row["input_ids"], row["labels"])
        assert not first[1] and response[1] and "<|user|>" in first[0]  # the system prompt carries no loss


def test_ultrachat_named_splits_and_multi_turn_masks(tiny_tok):
    train_src, test_src = raw("ultrachat-sample", "train_sft"), raw("ultrachat-sample", "test_sft")
    assert "train_gen" in {p.name.split(".")[0] for p in (SAMPLES_DIR / "ultrachat").iterdir()}
    p = sft("ultrachat-sample", tiny_tok)
    assert p.stats.source_rows == len(train_src) + len(test_src)
    assert p.stats.eval_rows == 20 and p.stats.train_rows == 180
    test_firsts = {r["messages"][0]["content"] for r in test_src}
    train_firsts = {r["messages"][0]["content"] for r in train_src}
    eval_text = [tiny_tok.decode(r["input_ids"]) for r in p.eval]
    assert all(any(f"<|user|>\n{q}\n" in t for q in test_firsts) for t in eval_text)  # eval from test_sft
    convo = {r["messages"][0]["content"]: r["messages"] for r in train_src}
    multi = 0
    for row in p.train:
        pieces = runs(tiny_tok, row["input_ids"], row["labels"])
        first_q = pieces[0][0].split("\n")[1]
        assert first_q in train_firsts
        answers = [m["content"] + EOS for m in convo[first_q] if m["role"] == "assistant"]
        assert [t for t, k in pieces if k] == answers  # every assistant turn trained, nothing else
        multi += len(answers) > 1
    assert multi > 20
    with pytest.raises(DataError, match="no split 'nope'"):
        sources.load(CATALOG["ultrachat-sample"], "nope")


def test_oasst_rank0_path_through_each_tree(tiny_tok):
    rows = raw("oasst-sample")
    r = recs("oasst-sample")
    trees = {x["message_tree_id"] for x in rows}
    assert len(r) == len(trees) == 60
    deleted = {x["text"] for x in rows if x["deleted"]}
    for rec in r:
        m = rec["messages"]
        assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"]
        assert m[2]["content"] == "Can you give an example?"
        assert m[3]["content"] != "Sorry, I do not know one."       # the rank-1 reply is never taken
        assert m[1]["content"] not in deleted                       # deleted messages are skipped
    # where the best first reply was deleted, the rank-1 reply (and its subtree) is the path
    fallback = [rec for rec in r if rec["messages"][1]["content"].startswith("I think it has to do with")]
    assert len(fallback) == 6
    assert all("That does not sound right." not in json.dumps(rec) for rec in r)
    p = sft("oasst-sample", tiny_tok)
    row = p.train[0]
    assert len(trained(tiny_tok, row)) == 2  # both assistant turns carry loss


def test_lima_json_array_alternating_turns(tiny_tok):
    rows = raw("lima-sample")
    assert (SAMPLES_DIR / CATALOG["lima-sample"].source).read_text().lstrip().startswith("[")
    for src, rec in zip(rows, recs("lima-sample")):
        assert [m["content"] for m in rec["messages"]] == src["conversations"]
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"] * (len(src["conversations"]) // 2)
    p = sft("lima-sample", tiny_tok, train_on="last")
    for row in p.train.select(range(20)):
        assert len(trained(tiny_tok, row)) == 1  # train_on="last": only the final answer


def test_platypus_csv(tiny_tok):
    rows = raw("platypus-sample")
    assert CATALOG["platypus-sample"].source.endswith(".csv")
    for src, rec in zip(rows, recs("platypus-sample")):
        assert rec["messages"][0]["content"] == f"{src['instruction']}\n\n{src['input']}"
        assert rec["messages"][1]["content"] == src["output"]
    assert formats.detect(rows.column_names) == "platypus"
    p = sft("platypus-sample", tiny_tok, seq_len=224, truncation="drop")
    assert p.stats.dropped > 0 and p.stats.truncated == 0 and max(len(x) for x in p.train["input_ids"]) <= 224


def test_hc3_human_and_chatgpt_answers(tiny_tok):
    rows = raw("hc3-sample")
    human, gpt = recs("hc3-sample"), recs("hc3-sample", "hc3-chatgpt")
    good = [x for x in rows if x["human_answers"]]
    assert len(human) == len(good) == len(rows) - 4 and len(gpt) == len(rows)
    assert [h["messages"][1]["content"] for h in human] == [x["human_answers"][0] for x in good]
    assert [g["messages"][1]["content"] for g in gpt] == [x["chatgpt_answers"][0] for x in rows]
    p = sft("hc3-sample", tiny_tok)
    assert p.stats.invalid == 4
    q = prepare("hc3-sample:small", task="sft", tokenizer=tiny_tok, seq_len=256, format="hc3-chatgpt",
                use_cache=False)
    assert all(trained(tiny_tok, r)[0].startswith('The word "') for r in q.train)


def test_evol_instruct_sharegpt_roles(tiny_tok):
    rows = raw("evol-sample")
    for src, rec in zip(rows, recs("evol-sample")):
        assert rec["messages"] == [{"role": "user", "content": src["conversations"][0]["value"]},
                                   {"role": "assistant", "content": src["conversations"][1]["value"]}]
    p = sft("evol-sample", tiny_tok, template="chatml")
    assert p.template == "chatml"
    row = p.train[0]
    prompt, answer = runs(tiny_tok, row["input_ids"], row["labels"])
    assert prompt[0].startswith("<|im_start|>user\nDefine the word") and prompt[0].endswith("<|im_start|>assistant\n")
    assert answer[0].endswith("<|im_end|>" + EOS)


# ----------------------------------------------------------------------------- dpo adapters


def test_pairs_for_dpo(tiny_tok):
    rows = raw("pairs")
    r = recs("pairs")
    assert len(r) == len(rows) - 3  # chosen == rejected rows are rejected
    p = prepare("pairs:large", task="dpo", tokenizer=tiny_tok, seq_len=256, use_cache=False)
    assert p.train.column_names == ["prompt", "chosen", "rejected"] and p.collator is None
    assert (p.stats.invalid, p.stats.duplicates) == (3, 1)
    src = {f"<|user|>\n{x['prompt']}\n<|assistant|>\n": x for x in rows}
    for row in p.train:
        s = src[row["prompt"]]
        assert row["chosen"] == s["chosen"] + EOS and row["rejected"] == s["rejected"] + EOS
    assert p.stats.tokens > p.stats.loss_tokens > 0
    with pytest.raises(DataError, match="is dpo data, not sft"):
        prepare("pairs", task="sft", tokenizer=tiny_tok, seq_len=64, use_cache=False)


def test_orca_dpo_pairs_system_question(tiny_tok):
    rows = raw("orca-dpo-sample")
    for src, rec in zip(rows, recs("orca-dpo-sample")):
        assert rec["messages"] == [{"role": "system", "content": src["system"]},
                                   {"role": "user", "content": src["question"]}]
    p = prepare("orca-dpo-sample:small", task="dpo", tokenizer=tiny_tok, seq_len=256, template="alpaca",
                use_cache=False)
    row = p.train[0]
    assert row["prompt"].startswith("You are") and "### Instruction:\nWhich word is the opposite" in row["prompt"]
    assert row["prompt"].endswith("### Response:\n") and row["chosen"] != row["rejected"]


# ----------------------------------------------------------------------------- token classification


def entities(tok, text, row, names):
    """(label, text) entities read back from BIO labels on first sub-words."""
    enc = tok(text, return_offsets_mapping=True)
    words = {}
    for w, (a, b) in zip(enc.word_ids(), enc["offset_mapping"]):
        if w is not None:
            s, e = words.get(w, (a, b))
            words[w] = (min(s, a), max(e, b))
    out = []
    for w, lab in zip(enc.word_ids(), row["labels"]):
        if lab == IGNORE_INDEX or names[lab] == "O":
            continue
        s, e = words[w]
        tag = names[lab]
        if tag.startswith("B-"):
            out.append([tag[2:], s, e])
        else:
            assert out and out[-1][0] == tag[2:], "an I- tag must continue its entity"
            out[-1][2] = e
    return [(lab, text[s:e].strip()) for lab, s, e in out]


def test_pii_spans_to_bio_first_subword(tiny_tok):
    rows = raw("pii-sample")
    p = prepare("pii-sample:large", task="token-classification", tokenizer=tiny_tok, seq_len=128,
                model_kind="encoder", use_cache=False)
    names = p.label_names
    assert names[0] == "O" and "B-EMAIL" in names and "I-CITY" in names and len(names) == 17
    by_text = {r["source_text"]: r for r in rows}
    checked = 0
    for row in p.train:
        text = tiny_tok.decode(row["input_ids"])
        src = by_text[text]
        want = [(m["label"], m["value"]) for m in src["privacy_mask"]]
        assert entities(tiny_tok, text, row, names) == want
        # continuation sub-words are -100 under the default policy
        enc = tiny_tok(text)
        prev = None
        for w, lab in zip(enc.word_ids(), row["labels"]):
            if w == prev:
                assert lab == IGNORE_INDEX
            prev = w
        checked += bool(want)
    assert checked > 200
    # a two-word city: B then I
    row = next(r for r in p.train if "New Haven" in tiny_tok.decode(r["input_ids"]))
    tags = [names[x] for x in row["labels"] if x != IGNORE_INDEX and names[x].endswith("CITY")]
    assert tags == ["B-CITY", "I-CITY"]


def test_pii_label_policy_all(tiny_tok):
    p = prepare("pii-sample:small", task="token-classification", tokenizer=tiny_tok, seq_len=128,
                model_kind="encoder", label_policy="all", use_cache=False)
    names = p.label_names
    for row in p.train:
        enc = tiny_tok(tiny_tok.decode(row["input_ids"]))
        prev = None
        for w, lab in zip(enc.word_ids(), row["labels"]):
            assert lab != IGNORE_INDEX  # every token labelled (no specials in the tiny tokenizer)
            if w == prev:
                assert not names[lab].startswith("B-")  # continuations never open an entity
            prev = w


# ----------------------------------------------------------------------------- summarization


def test_cnn_dailymail_causal_keeps_the_summary(tiny_tok):
    rows = raw("cnn-sample")
    head, tail = "<|user|>\nSummarize the following text.\n\n", "\n<|assistant|>\n"
    p = prepare("cnn-sample:small", task="summarization", tokenizer=tiny_tok, seq_len=400, use_cache=False)
    # long articles are cut; a row is dropped only where the summary leaves < 32 document tokens
    assert p.stats.truncated > 5 and p.stats.train_rows + p.stats.dropped == 20 and p.stats.dropped <= 2
    assert len(p.eval_references) == p.stats.eval_rows == len(p.eval)
    for row in p.train:
        (prompt, masked), (summary, trained_on) = runs(tiny_tok, row["input_ids"], row["labels"])
        assert masked is False and trained_on is True
        assert prompt.startswith(head) and prompt.endswith(tail)
        doc = prompt[len(head):-len(tail)]
        src = [r for r in rows if r["article"].startswith(doc)]
        assert len(src) == 1 and len(doc) > 100
        assert summary == src[0]["highlights"] + EOS  # the document was cut, never the summary
        assert len(row["input_ids"]) <= 400


def test_xsum_arrow_seq2seq(tiny_tok):
    assert CATALOG["xsum-sample"].source.endswith(".arrow")
    rows = raw("xsum-sample")
    summaries = {r["document"]: r["summary"] for r in rows}
    p = prepare("xsum-sample:small", task="summarization", tokenizer=tiny_tok, seq_len=256, model_kind="seq2seq",
                target_len=64, use_cache=False)
    assert set(p.train.column_names) == {"input_ids", "attention_mask", "labels"}
    for row in p.train:
        doc = tiny_tok.decode(row["input_ids"])
        assert tiny_tok.decode(row["labels"]) == summaries[doc] + EOS
    assert p.eval_references == [summaries[d] for d in p.eval_prompts]
    batch = p.collator([p.train[0], p.train[1]])
    assert (batch["labels"] == IGNORE_INDEX).any() or batch["labels"].shape[1] == max(
        len(p.train[i]["labels"]) for i in (0, 1))


def test_peer_review_several_reviews_to_meta_review(tiny_tok):
    rows = raw("peer-review-sample")
    r = recs("peer-review-sample")
    for src, rec in zip(rows, r):
        assert rec["summary"] == src["meta_review"]
        assert rec["document"].startswith(f"Title: {src['paper_title']}\n\nReview 1:\n")
        assert all(f"Review {i + 1}:\n{t}" in rec["document"] for i, t in enumerate(src["review_contents"]))
    p = prepare("peer-review-sample:small", task="summarization", tokenizer=tiny_tok, seq_len=512,
                model_kind="seq2seq", use_cache=False)
    assert p.eval_references and all(ref.startswith("The reviewers rated") for ref in p.eval_references)


def test_samples_are_small_and_have_a_generator():
    total = sum(f.stat().st_size for f in SAMPLES_DIR.rglob("*") if f.is_file() and f.suffix != ".py")
    assert total < 2_000_000
    assert (SAMPLES_DIR / "make_format_samples.py").is_file()
    for name, e in CATALOG.items():
        if e.is_sample:
            assert e.task in formats.TASKS and e.tiers and list(e.tiers) == sorted(e.tiers, key=e.tiers.get)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                    reason="WordNet (apt-get install wordnet-base) not installed")
def test_format_samples_regenerate_identically(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(SAMPLES_DIR / "make_format_samples.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(made) == 17
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (SAMPLES_DIR / rel).read_bytes(), rel
