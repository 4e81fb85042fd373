"""Canonical records -> model inputs, one encoder per (task, model kind). Each encoder is a picklable
batched `datasets.map` function over a `record` column (JSON text, see formats.dump) that also emits
bookkeeping columns (`_truncated`, `_keep`) from which prepare() counts truncated and dropped rows.

- causal sft / summarization: `input_ids`, `attention_mask`, `labels` (-100 on everything that is not
  trained on: system/user turns, template markup). Pieces are encoded apart so the prompt/response
  boundary is exact. Truncation policy: `right` (cut the end; default), `left` (keep the end: the
  last response survives, early turns go), `drop` (leave out rows longer than seq_len).
  Summarization cuts the document, never the summary (a row whose document would keep fewer than
  MIN_DOCUMENT_TOKENS is dropped).
- seq2seq summarization: source ids, `labels` = target ids (eos-terminated).
- token classification: BIO labels aligned to tokens through the fast tokenizer's word ids;
  label policy `first` (the first sub-word of a word carries its tag, continuation sub-words -100)
  or `all` (continuations carry I-tags); -100 on special tokens.
- dpo: text columns `prompt` (rendered with the template's generation prompt), `chosen`,
  `rejected` (the responses as the template renders them, eos included) for trl's DPOTrainer.

`prompt` (the run config's `prompt:`) rewrites the user turn with named fields: summarization
"Summarize: {document}" (default SUMMARIZE_PROMPT), sft/dpo "Answer briefly. {instruction}".
`marked_text` shows a tokenized row with its trained tokens marked (what `python -m data_prep` prints).
"""
from __future__ import annotations

import json

from ftgrid.data_prep import templates
from ftgrid.data_prep.formats import SUMMARIZE_PROMPT

IGNORE_INDEX = -100
TRUNCATION = ("right", "left", "drop")
LABEL_POLICIES = ("first", "all")
MIN_DOCUMENT_TOKENS = 32  # summarization: drop a row rather than keep less of its document than this
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"  # around the tokens with a loss in a preview


def with_prompt(messages: list[dict], prompt: str) -> list[dict]:
    """Every user turn as `prompt` with {instruction} = the turn's text ("" prompt: unchanged)."""
    if not prompt:
        return messages
    return [{**m, "content": prompt.format(instruction=m["content"])} if m["role"] == "user" else m
            for m in messages]


def marked_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    """The decoded row, with each run of trained tokens (label != -100) between ⟦ and ⟧."""
    out, run, trained = [], [], None
    for token, label in zip(list(ids) + [None], list(labels) + [None]):
        state = None if token is None else label != IGNORE_INDEX
        if run and state != trained:
            text = tokenizer.decode(run)
            out.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
            run = []
        if token is not None:
            run.append(token)
        trained = state
    return "".join(out)


def _out(keys):
    return {k: [] for k in keys}


class CausalEncoder:
    """sft and causal summarization."""

    def __init__(self, tokenizer, jinja: str, seq_len: int, *, bos: bool, truncation: str = "right",
                 train_on: str = "responses", summarize: bool = False, prompt: str = ""):
        self.tok, self.jinja, self.seq_len, self.bos = tokenizer, jinja, seq_len, bos
        self.truncation, self.train_on, self.summarize, self.prompt = truncation, train_on, summarize, prompt

    def _messages(self, rec: dict) -> list[dict]:
        if not self.summarize:
            return with_prompt(rec["messages"], self.prompt)
        return [{"role": "user", "content": (self.prompt or SUMMARIZE_PROMPT).format(document=rec["document"])},
                {"role": "assistant", "content": rec["summary"]}]

    def _encode_many(self, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
        """(ids, labels) per conversation; every piece of the batch goes through one tokenizer call."""
        pieces = [templates.segments(self.tok, self.jinja, m, self.train_on) for m in conversations]
        flat = [t for p in pieces for t, _ in p]
        enc = iter(self.tok(flat, add_special_tokens=False)["input_ids"] if flat else [])
        out = []
        for p in pieces:
            ids = [self.tok.bos_token_id] if self.bos else []
            labels = [IGNORE_INDEX] * len(ids)
            for _, trainable in p:
                piece = next(enc)
                ids += piece
                labels += piece if trainable else [IGNORE_INDEX] * len(piece)
            out.append((ids, labels))
        return out

    def prompt_ids(self, rec: dict) -> list[int]:
        """Generation prompt ids of a record without its response, tokenized exactly as training tokenizes
        (same pieces, bos, template, prompt): the record with an empty final response, cut where it starts."""
        rec = {**rec, "summary": ""} if self.summarize else \
            {**rec, "messages": rec["messages"] + [{"role": "assistant", "content": ""}]}
        ids, labels = self._encode_many([self._messages(rec)])[0]
        start = len(labels)
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        return ids[:start]

    def _fit_document(self, rec: dict, over: int) -> dict | None:
        """Shorten the document by `over` tokens (plus a margin for re-tokenization at the cut); None
        when too little of it would be left (the row is then dropped)."""
        doc = self.tok(rec["document"], add_special_tokens=False)["input_ids"]
        keep = len(doc) - over - 8
        if keep < min(len(doc), MIN_DOCUMENT_TOKENS):
            return None
        return {"document": self.tok.decode(doc[:keep]).rstrip(), "summary": rec["summary"]}

    def __call__(self, batch):
        recs = [json.loads(t) for t in batch["record"]]
        encoded = self._encode_many([self._messages(r) for r in recs])
        full_lens = [len(ids) for ids, _ in encoded]
        keep = [True] * len(recs)
        if self.summarize and self.truncation != "drop":  # cut long documents, then encode those again
            over = [i for i, n in enumerate(full_lens) if n > self.seq_len]
            fitted = {i: self._fit_document(recs[i], full_lens[i] - self.seq_len) for i in over}
            redo = [i for i in over if fitted[i] is not None]
            for i in over:
                keep[i] = fitted[i] is not None
            for i, enc in zip(redo, self._encode_many([self._messages(fitted[i]) for i in redo])):
                encoded[i] = enc
        out = _out(("input_ids", "attention_mask", "labels", "_truncated", "_keep"))
        for i, (ids, labels) in enumerate(encoded):
            if len(ids) > self.seq_len:
                if self.truncation == "drop":
                    keep[i], ids, labels = False, ids[: self.seq_len], labels[: self.seq_len]
                elif self.truncation == "left":
                    ids, labels = ids[-self.seq_len:], labels[-self.seq_len:]
                else:
                    ids, labels = ids[: self.seq_len], labels[: self.seq_len]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out["_truncated"].append(full_lens[i] > self.seq_len)
            out["_keep"].append(keep[i] and any(t != IGNORE_INDEX for t in labels))
        return out


class Seq2SeqEncoder:
    def __init__(self, tokenizer, seq_len: int, target_len: int, prefix: str = "", prompt: str = ""):
        self.tok, self.seq_len, self.target_len, self.prefix = tokenizer, seq_len, target_len, prefix
        self.prompt = prompt or "{document}"  # a prompt with {document} replaces the bare source text

    def __call__(self, batch):
        recs = [json.loads(t) for t in batch["record"]]
        src = self.tok([self.prefix + self.prompt.format(document=r["document"]) for r in recs])["input_ids"]
        tgt = self.tok(text_target=[r["summary"] for r in recs])["input_ids"]
        eos = self.tok.eos_token_id
        out = _out(("input_ids", "attention_mask", "labels", "_truncated", "_keep"))
        for s, t in zip(src, tgt):
            if eos is not None and (not t or t[-1] != eos):
                t = t + [eos]  # a tokenizer that adds no specials (the project's tiny one)
            over_s, over_t = len(s) > self.seq_len, len(t) > self.target_len
            s = s[: self.seq_len - 1] + [s[-1]] if over_s and s[-1] == eos else s[: self.seq_len]
            t = t[: self.target_len - 1] + [t[-1]] if over_t else t
            out["input_ids"].append(s)
            out["attention_mask"].append([1] * len(s))
            out["labels"].append(t)
            out["_truncated"].append(over_s or over_t)
            out["_keep"].append(bool(s) and bool(t))
        return out


def bio_names(span_labels) -> list[str]:
    """["O", "B-X", "I-X", ...] over the sorted entity types."""
    names = ["O"]
    for label in sorted(set(span_labels)):
        names += [f"B-{label}", f"I-{label}"]
    return names


class TokenClassEncoder:
    def __init__(self, tokenizer, seq_len: int, label_names: list[str], policy: str = "first"):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("token classification needs a fast tokenizer (offsets and word ids)")
        self.tok, self.seq_len, self.policy = tokenizer, seq_len, policy
        self.label2id = {n: i for i, n in enumerate(label_names)}

    @staticmethod
    def word_tags(text: str, spans: list[dict], word_spans: dict[int, tuple[int, int]]) -> dict[int, str]:
        """word id -> BIO tag from character spans (a word touching a span's start is its B)."""
        tags = {}
        for w, (ws, we) in word_spans.items():
            while ws < we and text[ws].isspace():
                ws += 1
            tag = "O"
            for s in spans:
                if ws < s["end"] and s["start"] < we:
                    tag = ("B-" if ws <= s["start"] else "I-") + s["label"]
                    break
            tags[w] = tag
        return tags

    def __call__(self, batch):
        recs = [json.loads(t) for t in batch["record"]]
        texts = [r["text"] for r in recs]
        enc = self.tok(texts, return_offsets_mapping=True, truncation=True, max_length=self.seq_len)
        full = self.tok(texts)["input_ids"]
        out = _out(("input_ids", "attention_mask", "labels", "_truncated", "_keep"))
        for i, rec in enumerate(recs):
            word_ids = enc.word_ids(i)
            offsets = enc["offset_mapping"][i]
            word_spans: dict[int, tuple[int, int]] = {}
            for w, (a, b) in zip(word_ids, offsets):
                if w is not None:
                    s, e = word_spans.get(w, (a, b))
                    word_spans[w] = (min(s, a), max(e, b))
            tags = self.word_tags(rec["text"], rec["spans"], word_spans)
            labels, prev = [], None
            for w in word_ids:
                if w is None:
                    labels.append(IGNORE_INDEX)
                elif w != prev:
                    labels.append(self.label2id[tags[w]])
                elif self.policy == "all":
                    tag = tags[w]
                    labels.append(self.label2id["I-" + tag[2:] if tag.startswith("B-") else tag])
                else:
                    labels.append(IGNORE_INDEX)
                prev = w
            ids = enc["input_ids"][i]
            out["input_ids"].append(ids)
            out["attention_mask"].append(enc["attention_mask"][i])
            out["labels"].append(labels)
            out["_truncated"].append(len(full[i]) > len(ids))
            out["_keep"].append(any(x != IGNORE_INDEX for x in labels))
        return out


class DPOEncoder:
    """Text columns for trl's DPOTrainer, which tokenizes `prompt` with the tokenizer's special tokens
    (bos where it adds one): a bos the template wrote as text is removed so it is not doubled."""

    def __init__(self, tokenizer, jinja: str, seq_len: int, *, adds_bos: bool, prompt: str = ""):
        self.tok, self.jinja, self.seq_len, self.adds_bos = tokenizer, jinja, seq_len, adds_bos
        self.prompt = prompt

    def __call__(self, batch):
        out = _out(("prompt", "chosen", "rejected", "_tokens", "_loss", "_truncated", "_keep"))
        texts = []
        for text in batch["record"]:
            rec = json.loads(text)
            turns = with_prompt(rec["messages"], self.prompt)
            prompt, chosen = templates.prompt_and_response(self.tok, self.jinja, turns, rec["chosen"])
            _, rejected = templates.prompt_and_response(self.tok, self.jinja, turns, rec["rejected"])
            bos = self.tok.bos_token
            if self.adds_bos and bos and prompt.startswith(bos):
                prompt = prompt[len(bos):]
            texts.append((prompt, chosen, rejected))
        flat = [t for triple in texts for t in triple]
        lens = [len(x) for x in self.tok(flat, add_special_tokens=False)["input_ids"]] if flat else []
        for i, (prompt, chosen, rejected) in enumerate(texts):
            n_p, n_c, n_r = lens[3 * i: 3 * i + 3]
            n_p += int(self.adds_bos)
            out["prompt"].append(prompt)
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
            out["_tokens"].append(n_p + n_c + n_r)
            out["_loss"].append(n_c + n_r)
            out["_truncated"].append(n_p + max(n_c, n_r) > self.seq_len)
            out["_keep"].append(True)
        return out
