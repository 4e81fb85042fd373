#!/usr/bin/env python3
"""Build the small per-format sample data sets shipped in ``data_prep/samples/``.

Run once by a developer; the outputs are committed so that the tests and the demo run offline.
Each file copies the *layout* of a public data set (column names, nesting, splits) with content made
here, from two offline sources:

* WordNet 3.0 (Princeton; permissive WordNet 3.0 licence, see README.md), as packaged by Debian::

      apt-get install -y --no-install-recommends wordnet-base     # -> /usr/share/wordnet/

* Python's own ``pydoc_data.topics`` (the Python reference documentation, PSF licence);

plus synthetic text from fixed word lists in this file (the PII sample's names, streets, e-mail
addresses and phone numbers are invented; the peer reviews are templated).

    python data_prep/samples/make_format_samples.py            # rewrites every file below
    python data_prep/samples/make_format_samples.py --out DIR  # somewhere else (the regeneration test)

The output is deterministic (sorted inputs, fixed seeds): rerunning gives byte-identical files.
A few rows are deliberately broken or repeated (an empty response, an exact duplicate) so that the
filter counts have something to count; README.md lists them.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_samples as ms  # noqa: E402  (WordNet readers shared with the Alpaca sample)

SEED = 20240602
WN = Path("/usr/share/wordnet")
POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
PFILE = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}


# ----------------------------------------------------------------------------- WordNet lexicon


def read_pointers(wn_dir: Path) -> dict[tuple[str, int], dict]:
    """(pos file, offset) -> {"hyper": [(file, offset)], "anto": [(file, offset, word index)]}."""
    out = {}
    for pos_file in sorted(ms.POS_FILES):
        with open(wn_dir / f"data.{pos_file}", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or "|" not in line:
                    continue
                f = line.split("|", 1)[0].split()
                offset, w_cnt = int(f[0]), int(f[3], 16)
                i = 4 + 2 * w_cnt
                p_cnt = int(f[i])
                hyper, anto = [], []
                for k in range(p_cnt):
                    sym, off, pos, st = f[i + 1 + 4 * k: i + 5 + 4 * k]
                    if sym == "@":
                        hyper.append((PFILE[pos], int(off)))
                    elif sym == "!":
                        anto.append((PFILE[pos], int(off), int(st[2:], 16)))
                out[(pos_file, offset)] = {"hyper": hyper, "anto": anto}
    return out


def lexicon(wn_dir: Path) -> list[dict]:
    """Common single words with their most frequent sense: definition, examples, synonyms, hypernym,
    antonym (where WordNet has them). Sorted by word."""
    synsets = ms.read_synsets(wn_dir)
    index = ms.read_index(wn_dir)
    pointers = read_pointers(wn_dir)
    out = []
    for lemma in sorted(index):
        by_pos = index[lemma]
        pos_file = next(p for p in ("noun", "verb", "adj", "adv") if p in by_pos)
        key = (pos_file, by_pos[pos_file][0])
        ss = synsets[key]
        word = ms.surface_form(lemma, by_pos, synsets)
        definition = ss["definition"]
        if not definition or ms.n_words(definition) > 30 or not ms.is_ascii(definition):
            continue
        examples = [e for e in ss["examples"] if ms.is_ascii(e) and 4 <= ms.n_words(e) <= 30
                    and ms.mentions(e, lemma)]
        synonyms = [w for w in ss["words"] if w.lower() != lemma and ms.is_ascii(w)]
        hyper = None
        for h in pointers[key]["hyper"][:1]:
            hs = synsets[h]
            hyper = {"word": hs["words"][0], "definition": hs["definition"]}
        anto = None
        for pf, off, wi in pointers[key]["anto"][:1]:
            words = synsets[(pf, off)]["words"]
            anto = words[wi - 1] if 0 < wi <= len(words) else words[0]
        out.append({"word": word, "pos": ss["pos"], "definition": ms.sentence(definition),
                    "examples": [ms.sentence(e) for e in examples], "synonyms": synonyms, "hyper": hyper,
                    "antonym": anto if anto and ms.is_ascii(anto) else None})
    return out


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def no_stop(text: str) -> str:
    return text.rstrip(".")


# ----------------------------------------------------------------------------- writers


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=True, sort_keys=False) + "\n" for r in rows).encode("ascii")


def json_array(rows: list[dict]) -> bytes:
    return (json.dumps(rows, ensure_ascii=True, indent=1) + "\n").encode("ascii")


def csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("ascii")


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, compression="zstd")
    return sink.getvalue()


def arrow_bytes(rows: list[dict]) -> bytes:
    """Arrow IPC stream: the format datasets' `arrow` builder (and its own cache files) read."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def stable_id(*parts) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- instruction / chat


def dolly(lex, rng):
    rows = []
    for e in rng.sample(lex, 300):
        kind = rng.choice(["open_qa", "closed_qa", "brainstorming", "classification"])
        if kind == "brainstorming" and len(e["synonyms"]) < 2:
            kind = "open_qa"
        if kind == "open_qa":
            rows.append({"instruction": f'What does the word "{e["word"]}" mean?', "context": "",
                         "response": e["definition"], "category": kind})
        elif kind == "closed_qa":
            rows.append({"instruction": "Which word does this dictionary definition describe?",
                         "context": e["definition"], "response": e["word"], "category": kind})
        elif kind == "brainstorming":
            rows.append({"instruction": f'Give some words that mean roughly the same as "{e["word"]}".',
                         "context": "", "response": ", ".join(e["synonyms"][:4]) + ".", "category": kind})
        else:
            rows.append({"instruction": f'Is "{e["word"]}" a noun, a verb, an adjective or an adverb?',
                         "context": "", "response": f'"{e["word"]}" is {article(e["pos"])} {e["pos"]}.',
                         "category": kind})
    rows[7]["response"] = ""           # invalid: empty response
    rows[19]["response"] = "   "       # invalid: whitespace only
    rows += [dict(rows[3]), dict(rows[11]), dict(rows[42])]  # exact duplicates
    return rows


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


SYSTEMS = ["", "You are a helpful assistant.",
           "You are an AI assistant. You will be given a task. You must generate a short and correct answer.",
           "You are a dictionary. Answer in one sentence."]


def openorca(lex, rng):
    pool = [e for e in lex if e["antonym"] or e["hyper"]]
    rows = []
    for i, e in enumerate(rng.sample(pool, 300)):
        if e["antonym"] and (not e["hyper"] or rng.random() < 0.5):
            q, a = (f'What is the opposite of "{e["word"]}"?',
                    f'The opposite of "{e["word"]}" is "{e["antonym"]}".')
        else:
            q, a = (f'What kind of thing is "{e["word"]}"?',
                    f'"{e["word"]}" is a kind of {e["hyper"]["word"].replace("_", " ")}: '
                    f'{lower_first(e["definition"])}')
        rows.append({"id": f"wn.{i}", "system_prompt": SYSTEMS[i % len(SYSTEMS)], "question": q, "response": a})
    rows.append(dict(rows[5]))  # an exact duplicate
    return rows


def conversation(e, rng, turns: int) -> list[dict]:
    msgs = [{"role": "user", "content": f'What does "{e["word"]}" mean?'},
            {"role": "assistant", "content": e["definition"]}]
    if turns >= 2 and e["examples"]:
        msgs += [{"role": "user", "content": "Can you use it in a sentence?"},
                 {"role": "assistant", "content": e["examples"][0]}]
    if turns >= 3:
        msgs += [{"role": "user", "content": "Which part of speech is it?"},
                 {"role": "assistant", "content": f"It is {article(e['pos'])} {e['pos']}."}]
    return msgs


def ultrachat(lex, rng):
    """One file per split, as in HuggingFaceH4/ultrachat_200k (train_sft, test_sft, train_gen, test_gen)."""
    chosen = rng.sample(lex, 270)
    out = {}
    for split, part in (("train_sft", chosen[:200]), ("test_sft", chosen[200:240]),
                        ("train_gen", chosen[240:260]), ("test_gen", chosen[260:])):
        rows = []
        for e in part:
            msgs = conversation(e, rng, rng.choice([1, 2, 3]))
            rows.append({"prompt": msgs[0]["content"], "prompt_id": hashlib.sha256(msgs[0]["content"].encode())
                         .hexdigest(), "messages": msgs})
        out[split] = rows
    return out


def oasst(lex, rng):
    """Flat message table as in OpenAssistant/oasst1: each tree a prompt, ranked replies, follow-ups."""
    rows = []
    ns = uuid.UUID("6f1c3a52-2d5e-4c57-9a0e-0d3b9f3f7a10")

    def msg(tree, parent, role, text, rank=None, deleted=False, n=[0]):
        n[0] += 1
        mid = str(uuid.uuid5(ns, f"{tree}/{n[0]}"))
        rows.append({"message_id": mid, "parent_id": parent, "message_tree_id": tree, "text": text,
                     "role": role, "lang": "en", "rank": rank, "deleted": deleted, "review_result": True,
                     "synthetic": False, "created_date": f"2023-02-{1 + n[0] % 28:02d}T12:00:00Z"})
        return mid

    pool = [e for e in lex if e["examples"] and e["hyper"]]
    for t, e in enumerate(rng.sample(pool, 60)):
        tree = str(uuid.uuid5(ns, f"tree-{t}"))
        root = msg(tree, None, "prompter", f'What does "{e["word"]}" mean?')
        deleted_best = t % 10 == 3  # the best reply was deleted: the rank-1 reply takes its place
        best = msg(tree, root, "assistant", e["definition"], rank=0, deleted=deleted_best)
        second = msg(tree, root, "assistant",
                     f'I think it has to do with {e["hyper"]["word"].replace("_", " ")}.', rank=1)
        if deleted_best:
            best = second
        follow = msg(tree, best, "prompter", "Can you give an example?")
        msg(tree, follow, "assistant", "Sorry, I do not know one.", rank=1)
        msg(tree, follow, "assistant", e["examples"][0], rank=0)
        if t % 4 == 0:  # a branch under the losing reply: never on the rank-0 path
            side = second if not deleted_best else root
            msg(tree, side, "prompter", "That does not sound right.")
    rows.sort(key=lambda r: (r["created_date"], r["message_id"]))  # stored order is not tree order
    return rows


def lima(lex, rng):
    rows = []
    for e in rng.sample([e for e in lex if e["examples"]], 130):
        msgs = conversation(e, rng, rng.choice([1, 1, 2]))
        rows.append({"conversations": [m["content"] for m in msgs], "source": "wordnet"})
    return rows


def pydoc_paragraphs() -> list[tuple[str, str]]:
    """(topic, paragraph) pairs of plain prose from the Python reference (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    out, seen = [], set()
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            p = " ".join(para.split())
            if p in seen:  # some topics repeat paragraphs of others
                continue
            seen.add(p)
            if (p and ms.is_ascii(p) and not p.startswith(("*", "::", ">>>", "-", "+", "|", "="))
                    and 25 <= ms.n_words(p) <= 120 and p[-1] in ".:" and "\n   " not in para):
                out.append((name, p))
    return out


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]


def platypus(rng):
    paras = rng.sample(pydoc_paragraphs(), 200)
    return [{"input": p, "output": first_sentence(p),
             "instruction": "Summarize this passage from the Python language reference in one sentence.",
             "data_source": f"pydoc_data.topics/{name}"} for name, p in paras]


def hc3(lex, rng):
    rows = []
    for i, e in enumerate(rng.sample(lex, 200)):
        gpt = f'The word "{e["word"]}" refers to {lower_first(no_stop(e["definition"]))}.'
        if e["examples"]:
            gpt += f' For example: "{e["examples"][0]}"'
        human = [e["definition"]] if i % 50 != 7 else []  # invalid: no human answer
        rows.append({"id": str(i), "question": f'What does "{e["word"]}" mean?', "human_answers": human,
                     "chatgpt_answers": [gpt], "source": "wordnet"})
    return rows


def evol(lex, rng):
    rows = []
    for i, e in enumerate(rng.sample([e for e in lex if e["examples"]], 200)):
        q = (f'Define the word "{e["word"]}", give one example sentence that uses it, and say which part of '
             f'speech it is.')
        a = f'"{e["word"]}" ({e["pos"]}) means: {e["definition"]} Example: {e["examples"][0]}'
        rows.append({"idx": f"evol_{i}", "conversations": [{"from": "human", "value": q},
                                                            {"from": "gpt", "value": a}]})
    return rows


# ----------------------------------------------------------------------------- preference pairs


def pairs(lex, rng):
    rows = []
    chosen = rng.sample(lex, 300)
    for i, e in enumerate(chosen):
        other = chosen[(i * 7 + 13) % len(chosen)]
        rejected = other["definition"] if other["definition"] != e["definition"] else "I do not know."
        if i % 100 == 9:
            rejected = e["definition"]  # invalid: chosen == rejected
        rows.append({"prompt": f'Define the word "{e["word"]}".', "chosen": e["definition"], "rejected": rejected})
    rows.append(dict(rows[2]))  # an exact duplicate
    return rows


def orca_dpo(lex, rng):
    pool = [e for e in lex if e["antonym"]]
    rows = []
    for i, e in enumerate(rng.sample(pool, 200)):
        wrong = e["synonyms"][0] if e["synonyms"] else pool[(i * 11 + 5) % len(pool)]["word"]
        rows.append({"system": SYSTEMS[1 + i % 3], "question": f'Which word is the opposite of "{e["word"]}"?',
                     "chosen": f'The opposite of "{e["word"]}" is "{e["antonym"]}".',
                     "rejected": f'The opposite of "{e["word"]}" is "{wrong}".'})
    return rows


# ----------------------------------------------------------------------------- token classification

FIRST = ["Anna", "Ben", "Clara", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
         "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tove"]
LAST = ["Abbott", "Brandt", "Castillo", "Dvorak", "Eklund", "Fischer", "Garcia", "Haddad", "Ivanova", "Jensen",
        "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov"]
CITY = ["Springfield", "Riverton", "New Haven", "Port Elise", "Lakewood", "Ashford", "Bay Harbor", "Millbrook"]
STREET = ["Oak Street", "Elm Avenue", "Harbor Road", "Mill Lane", "Station Square", "Birch Way"]
MONTH = ["January", "March", "April", "June", "August", "October", "December"]
TEMPLATES = [
    "My name is {FIRSTNAME} {LASTNAME} and you can reach me at {EMAIL}.",
    "Please send the invoice to {FIRSTNAME} {LASTNAME}, {BUILDINGNUMBER} {STREET}, {CITY}.",
    "Call {FIRSTNAME} on {PHONENUMBER} before {DATE} to confirm the booking.",
    "The parcel for {LASTNAME} will arrive in {CITY} on {DATE}.",
    "Hi {FIRSTNAME}, your new password was sent to {EMAIL} this morning.",
    "Patient {FIRSTNAME} {LASTNAME}, born {DATE}, lives at {BUILDINGNUMBER} {STREET}.",
    "Our office in {CITY} is closed today; questions go to {EMAIL} or {PHONENUMBER}.",
    "The meeting with the {TEAM} team is moved to next week.",  # no PII at all
]


def pii(rng):
    rows = []
    for i in range(300):
        tmpl = TEMPLATES[i % len(TEMPLATES)]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        values = {"FIRSTNAME": first, "LASTNAME": last,
                  "EMAIL": f"{first.lower()}.{last.lower()}@example.org",
                  "PHONENUMBER": f"+1-555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
                  "CITY": rng.choice(CITY), "STREET": rng.choice(STREET),
                  "BUILDINGNUMBER": str(rng.randrange(1, 250)),
                  "TEAM": rng.choice(["design", "sales", "support", "data", "legal", "build"]) + f" {i}",
                  "DATE": f"{rng.randrange(1, 28)} {rng.choice(MONTH)} {rng.randrange(1950, 2024)}"}
        text, target, mask, pos = "", "", [], 0
        for literal, field in re.findall(r"([^{]*)(?:\{(\w+)\})?", tmpl):
            text += literal
            target += literal
            if field == "TEAM":  # not personal data: plain text
                text += values[field]
                target += values[field]
            elif field:
                start = len(text)
                text += values[field]
                target += f"[{field}]"
                mask.append({"value": values[field], "start": start, "end": len(text), "label": field,
                             "label_index": sum(1 for m in mask if m["label"] == field) + 1})
        rows.append({"source_text": text, "target_text": target, "privacy_mask": mask,
                     "span_labels": json.dumps([[m["start"], m["end"], m["label"]] for m in mask]),
                     "language": "en", "set": "synthetic", "id": i})
    return rows


# ----------------------------------------------------------------------------- summarization


def cnn(rng):
    """cnn_dailymail layout: an article (several paragraphs of one Python reference topic) and
    highlights (the lead sentence of each of its first three paragraphs, one per line)."""
    by_topic: dict[str, list[str]] = {}
    for name, p in pydoc_paragraphs():
        by_topic.setdefault(name, []).append(p)
    rows = []
    for name in sorted(by_topic):
        paras = by_topic[name]
        for k in range(0, len(paras) - 1, 2):
            chunk = paras[k:k + 3]
            words, article = 0, []
            for p in chunk:
                if words + ms.n_words(p) > 260 and article:
                    break
                article.append(p)
                words += ms.n_words(p)
            if len(article) < 2:
                continue
            rows.append({"article": "\n\n".join(article),
                         "highlights": "\n".join(first_sentence(p) for p in article[:3]),
                         "id": stable_id("cnn", name, k)})
    rng.shuffle(rows)
    return rows[:130]


def xsum(lex, rng):
    """xsum layout: a short document about a word and a one-sentence summary of it."""
    pool = [e for e in lex if e["hyper"] and e["examples"]]
    rows = []
    for e in rng.sample(pool, 300):
        h = e["hyper"]["word"].replace("_", " ")
        doc = [f'The word "{e["word"]}" is {article(e["pos"])} {e["pos"]}.', e["definition"],
               f'For example: "{e["examples"][0]}"']
        if e["synonyms"]:
            doc.append("Words with a similar meaning include " + ", ".join(e["synonyms"][:3]) + ".")
        doc.append(f'It is a kind of {h}, that is, {lower_first(ms.sentence(e["hyper"]["definition"]))}')
        rows.append({"document": " ".join(doc),
                     "summary": f'"{e["word"]}" is a kind of {h}: {lower_first(e["definition"])}',
                     "id": stable_id("xsum", e["word"])})
    return rows


STRENGTHS = ["the method is simple and clearly explained", "the experiments cover several data sets",
             "the theoretical analysis is sound", "the code is released and easy to run",
             "the problem is important and well motivated"]
WEAKNESSES = ["the baselines are weak", "the improvements are small", "the writing is hard to follow in places",
              "the ablations are missing", "the method does not scale to large inputs"]


def peer_review(lex, rng):
    """PeerSum layout (oaimli/PeerSum): a paper's reviews and the area chair's meta-review."""
    nouns = [e["word"] for e in lex if e["pos"] == "noun" and e["word"].isalpha()]
    rows = []
    for i in range(80):
        a, b = rng.sample(nouns, 2)
        title = f"On the {a} of {b}s"
        ratings, reviews, pros, cons = [], [], [], []
        for _ in range(3):
            r = rng.randrange(3, 9)
            s, w = rng.choice(STRENGTHS), rng.choice(WEAKNESSES)
            ratings.append(r)
            pros.append(s)
            cons.append(w)
            reviews.append(f"Summary: the paper studies the {a} of {b}s. Strengths: {s}. Weaknesses: {w}. "
                           f"Rating: {r}.")
        accept = sum(ratings) / 3 >= 5.5
        common_pro = max(set(pros), key=lambda x: (pros.count(x), x))
        common_con = max(set(cons), key=lambda x: (cons.count(x), x))
        meta = (f"The reviewers rated this paper {ratings[0]}, {ratings[1]} and {ratings[2]}. They note that "
                f"{common_pro}, but also that {common_con}. "
                + ("The paper is accepted." if accept else "The paper is rejected in its current form."))
        rows.append({"paper_id": f"paper-{i:03d}", "paper_title": title,
                     "paper_abstract": f"We study the {a} of {b}s and propose a simple method for it.",
                     "paper_acceptance": "accept" if accept else "reject", "review_ratings": ratings,
                     "review_contents": reviews, "meta_review": meta})
    return rows


# ----------------------------------------------------------------------------- main


def build_all(wn_dir: Path) -> dict[str, bytes]:
    lex = lexicon(wn_dir)

    def rng(name):
        return random.Random(f"{SEED}-{name}")

    files = {
        "dolly.jsonl": jsonl(dolly(lex, rng("dolly"))),
        "openorca.parquet": parquet_bytes(openorca(lex, rng("openorca"))),
        "oasst1.jsonl": jsonl(oasst(lex, rng("oasst"))),
        "lima.json": json_array(lima(lex, rng("lima"))),
        "platypus.csv": csv_bytes(platypus(rng("platypus"))),
        "hc3.jsonl": jsonl(hc3(lex, rng("hc3"))),
        "evol_instruct.jsonl": jsonl(evol(lex, rng("evol"))),
        "pairs.jsonl": jsonl(pairs(lex, rng("pairs"))),
        "orca_dpo_pairs.jsonl": jsonl(orca_dpo(lex, rng("orca_dpo"))),
        "pii.jsonl": jsonl(pii(rng("pii"))),
        "cnn_dailymail.csv": csv_bytes(cnn(rng("cnn"))),
        "xsum.arrow": arrow_bytes(xsum(lex, rng("xsum"))),
        "peer_review.jsonl": jsonl(peer_review(lex, rng("peer_review"))),
    }
    for split, rows in ultrachat(lex, rng("ultrachat")).items():
        files[f"ultrachat/{split}.parquet"] = parquet_bytes(rows)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet-dir", type=Path, default=WN)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    if not (args.wordnet_dir / "data.noun").is_file():
        print(f"error: WordNet not found in {args.wordnet_dir} (apt-get install -y --no-install-recommends "
              "wordnet-base)", file=sys.stderr)
        return 2
    total = 0
    for name, data in sorted(build_all(args.wordnet_dir).items()):
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
        print(f"{name:28s} {len(data):8d} bytes")
    print(f"{'total':28s} {total:8d} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
