"""The committed sample data set and tiny tokenizer (both built offline, see their READMEs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_prep" / "samples"
DATA = SAMPLES / "wordnet_instruct.jsonl"
TOKENIZER_DIR = ROOT / "finetune" / "assets" / "tokenizer-tiny"
WORDNET = Path("/usr/share/wordnet/data.noun")

N_RECORDS = 4000
KEYS = {"instruction", "input", "output"}
EOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return DATA.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def records(lines) -> list[dict]:
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


# ----------------------------------------------------------------------------- data set


def test_sample_count_and_keys(records):
    assert len(records) == N_RECORDS
    for r in records:
        assert set(r) == KEYS
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["output"].strip()


def test_sample_is_ascii():
    raw = DATA.read_bytes()
    assert all(b < 128 for b in raw)
    assert raw.endswith(b"\n") and b"\r" not in raw


def test_sample_has_no_duplicates(lines, records):
    assert len(set(lines)) == len(lines)
    canonical = {json.dumps(r, sort_keys=True) for r in records}
    assert len(canonical) == len(records)
    # Each question is asked once, so it has a single answer.
    assert len({(r["instruction"], r["input"]) for r in records}) == len(records)


def test_sample_outputs_are_short(records):
    assert max(len(r["output"].split()) for r in records) <= 40


def test_sample_record_kinds(records):
    define = [r for r in records if r["instruction"].startswith("Define the word ")]
    use = [r for r in records if r["instruction"].startswith("Use the word ")]
    pos = [r for r in records if r["input"]]
    assert len(define) + len(use) + len(pos) == len(records)
    assert define and use and pos
    assert all(r["input"] == "" for r in define + use)
    assert {r["instruction"] for r in pos} == {"What part of speech is the word in the input?"}
    assert {r["output"] for r in pos} <= {"noun", "verb", "adjective", "adverb"}


def test_sample_readme_names_source_and_licence():
    text = (SAMPLES / "README.md").read_text(encoding="utf-8")
    assert "WordNet 3.0" in text and "Princeton" in text
    assert "make_samples.py" in text


@pytest.mark.skipif(not WORDNET.is_file(), reason="WordNet (apt-get install wordnet-base) not installed")
def test_sample_regenerates_identically(tmp_path):
    out = tmp_path / "regen.jsonl"
    subprocess.run(
        [sys.executable, str(SAMPLES / "make_samples.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == DATA.read_bytes()


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_special_tokens(tok):
    assert tok.eos_token == EOS and tok.bos_token == EOS
    assert tok.pad_token == PAD and tok.unk_token == UNK
    assert tok.pad_token_id != tok.eos_token_id
    assert len({tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 3


def test_tokenizer_sizes_and_settings(tok):
    # The special tokens are part of the trained 1024-entry vocabulary, so len() adds none.
    assert tok.vocab_size == 1024
    assert len(tok) == 1024
    assert tok.model_max_length == 2048
    assert tok.padding_side == "right"


def test_tokenizer_folder_is_small():
    size = sum(f.stat().st_size for f in TOKENIZER_DIR.iterdir() if f.is_file())
    assert size < 200_000


def test_tokenizer_round_trips(tok, records):
    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in records[:50]]
    texts += ["  leading spaces, tabs\tand\nnew lines  ", "Non-ASCII: caf\u00e9 \u2603 \u65e5\u672c"]
    for x in texts:
        ids = tok.encode(x, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == x


def test_tokenizer_adds_no_specials_and_pads_right(tok):
    ids = tok("Define the word").input_ids
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
    batch = tok(["a", "a much longer text"], padding=True)
    first = batch["input_ids"][0]
    assert first[-1] == tok.pad_token_id and batch["attention_mask"][0][-1] == 0


def test_chat_template_ends_assistant_turn_with_eos(tok):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": 'Define the word "flash".'},
        {"role": "assistant", "content": "A sudden intense burst of radiant energy."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.endswith("A sudden intense burst of radiant energy." + EOS)
    assert text.count(EOS) == 1
    assert "Answer briefly." in text and 'Define the word "flash".' in text
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[-1] == tok.eos_token_id

    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and EOS not in prompt


def test_chat_template_multi_turn(tok):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "goodbye"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.count(EOS) == 2 and text.endswith("goodbye" + EOS)


def test_tokenizer_regenerates_identically(tmp_path):
    pytest.importorskip("tokenizers")
    out = tmp_path / "tok"
    subprocess.run(
        [sys.executable, str(ROOT / "finetune" / "assets" / "make_tokenizer.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    committed = sorted(f.name for f in TOKENIZER_DIR.iterdir() if f.is_file())
    assert sorted(f.name for f in out.iterdir()) == committed
    for name in committed:
        assert (out / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
