#!/usr/bin/env python3
"""Build the small, real instruction data set shipped in ``data_prep/samples/``.

Run once by a developer; the output is committed so that tests and the demo run
offline.  The source is WordNet 3.0 (Princeton University, "WordNet 3.0 license",
permissive), as packaged by Debian::

    apt-get install -y --no-install-recommends wordnet-base   # -> /usr/share/wordnet/
    python data_prep/samples/make_samples.py                  # rewrites wordnet_instruct.jsonl

Records are in the Alpaca layout, one JSON object per line::

    {"instruction": ..., "input": ..., "output": ...}

Three kinds of record are made, from common single-word lemmas (those with at
least one sense tagged in the SemCor corpus, per WordNet's index files):

* ``Define the word "X".`` -> the gloss definition of X's most frequent sense;
* ``Use the word "X" in a sentence.`` -> an example sentence from a gloss of X that
  actually contains (a form of) X;
* ``What part of speech is the word in the input?`` with input ``X`` -> ``noun``,
  ``verb``, ``adjective`` or ``adverb`` (only for lemmas that WordNet lists under
  exactly one part of speech, so the answer is unambiguous).

Each instruction/input pair occurs once, every output is at most 40 words and all
text is ASCII.  The output is deterministic: inputs are read in sorted order and
sampled with a fixed seed.

If WordNet is not installed, the script falls back to the Python standard
library's ``pydoc_data.topics`` (the text of the Python documentation topics,
PSF licence) and says so on stderr; that fallback yields far fewer records.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = HERE / "wordnet_instruct.jsonl"
DEFAULT_N = 4000
DEFAULT_SEED = 20240601
MAX_OUTPUT_WORDS = 40

# Share of each record kind in the output (define / use in a sentence / part of speech).
MIX = {"define": 0.50, "example": 0.30, "pos": 0.20}

POS_FILES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
SS_TYPE_NAME = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}

WORD_RE = re.compile(r"^[a-z]+(?:-[a-z]+)?$")  # single lower-case word, optional hyphen
QUOTED_RE = re.compile(r'"([^"]*)"')
ADJ_MARKER_RE = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers, e.g. "outback(a)"

Record = dict[str, str]


# ----------------------------------------------------------------------------- helpers


def is_ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)


def n_words(text: str) -> int:
    return len(text.split())


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop (unless already punctuated)."""
    text = " ".join(text.split()).strip()
    text = text.rstrip(";,: ")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text


def record(instruction: str, inp: str, output: str) -> Record:
    return {"instruction": instruction, "input": inp, "output": output}


def mentions(example: str, lemma: str) -> bool:
    """True when the example contains the lemma or an inflected form of it."""
    stem = lemma if len(lemma) <= 4 else lemma[:-2]
    return re.search(r"\b" + re.escape(stem), example, flags=re.IGNORECASE) is not None


# ----------------------------------------------------------------------------- WordNet


def parse_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split ``definition; "example"; "example"`` into the definition and the examples."""
    examples = [e.strip() for e in QUOTED_RE.findall(gloss)]
    first_quote = gloss.find('"')
    definition = gloss if first_quote < 0 else gloss[:first_quote]
    definition = definition.strip().rstrip(";").strip()
    return definition, [e for e in examples if e]


def read_synsets(wn_dir: Path) -> dict[tuple[str, int], dict]:
    """Map (pos file, byte offset) -> {"pos", "words", "definition", "examples"}."""
    synsets: dict[tuple[str, int], dict] = {}
    for pos_file in sorted(POS_FILES):
        with open(wn_dir / f"data.{pos_file}", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or "|" not in line:  # licence header
                    continue
                head, gloss = line.split("|", 1)
                fields = head.split()
                offset, ss_type, w_cnt = int(fields[0]), fields[2], int(fields[3], 16)
                words = [
                    ADJ_MARKER_RE.sub("", fields[4 + 2 * i]).replace("_", " ")
                    for i in range(w_cnt)
                ]
                definition, examples = parse_gloss(gloss.strip())
                synsets[(pos_file, offset)] = {
                    "pos": SS_TYPE_NAME[ss_type],
                    "words": words,
                    "definition": definition,
                    "examples": examples,
                }
    return synsets


def read_index(wn_dir: Path) -> dict[str, dict[str, list[int]]]:
    """Map lemma -> {pos file: [synset offsets, most frequent sense first]}.

    Only common lemmas are kept: single lower-case words with at least one
    sense tagged in SemCor (``tagsense_cnt > 0``).
    """
    index: dict[str, dict[str, list[int]]] = {}
    for pos_file in sorted(POS_FILES):
        with open(wn_dir / f"index.{pos_file}", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(" "):
                    continue
                fields = line.split()
                lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
                rest = fields[4 + p_cnt :]
                tagsense_cnt = int(rest[1])
                offsets = [int(x) for x in rest[2 : 2 + synset_cnt]]
                if tagsense_cnt == 0 or not WORD_RE.match(lemma):
                    continue
                index.setdefault(lemma, {})[pos_file] = offsets
    return index


def surface_form(lemma: str, by_pos: dict[str, list[int]], synsets: dict) -> str:
    """The lemma as written in its most frequent synset (index files are lower-cased)."""
    for pos_file in ("noun", "verb", "adj", "adv"):
        for offset in by_pos.get(pos_file, [])[:1]:
            for w in synsets[(pos_file, offset)]["words"]:
                if w.lower() == lemma:
                    return w
    return lemma


def wordnet_candidates(wn_dir: Path) -> dict[str, list[Record]]:
    synsets = read_synsets(wn_dir)
    index = read_index(wn_dir)
    define: list[Record] = []
    example: list[Record] = []
    pos: list[Record] = []

    for lemma in sorted(index):
        by_pos = index[lemma]
        word = surface_form(lemma, by_pos, synsets)

        # Definition of the most frequent sense (first noun sense, else verb, ...).
        for pos_file in ("noun", "verb", "adj", "adv"):
            if pos_file not in by_pos:
                continue
            ss = synsets[(pos_file, by_pos[pos_file][0])]
            definition = ss["definition"]
            if definition and n_words(definition) <= MAX_OUTPUT_WORDS:
                define.append(record(f'Define the word "{word}".', "", sentence(definition)))
            break

        # First example sentence, over the senses in frequency order, that uses the word.
        found = None
        for pos_file in ("noun", "verb", "adj", "adv"):
            for offset in by_pos.get(pos_file, []):
                for ex in synsets[(pos_file, offset)]["examples"]:
                    if 4 <= n_words(ex) <= MAX_OUTPUT_WORDS and mentions(ex, lemma):
                        found = ex
                        break
                if found:
                    break
            if found:
                break
        if found:
            example.append(record(f'Use the word "{word}" in a sentence.', "", sentence(found)))

        # Part of speech, only where it is unambiguous.
        if len(by_pos) == 1:
            (pos_file,) = by_pos
            pos.append(
                record("What part of speech is the word in the input?", word, POS_FILES[pos_file])
            )

    return {"define": define, "example": example, "pos": pos}


# ----------------------------------------------------------------------------- fallback


def pydoc_candidates() -> dict[str, list[Record]]:
    """Fallback source: the Python documentation topics shipped with the interpreter."""
    from pydoc_data.topics import topics

    summaries: list[Record] = []
    for name in sorted(topics):
        paragraphs = [" ".join(p.split()) for p in topics[name].split("\n\n")]
        paragraphs = [p for p in paragraphs if p and not p.startswith(("*", "::"))]
        for i, para in enumerate(paragraphs[:40]):
            first = re.split(r"(?<=[.!?])\s", para, maxsplit=1)[0]
            if 6 <= n_words(first) <= MAX_OUTPUT_WORDS and first[-1:] in ".!?":
                summaries.append(
                    record(
                        f'Summarise point {i + 1} of the Python documentation topic "{name}".',
                        "",
                        sentence(first),
                    )
                )
    return {"define": summaries, "example": [], "pos": []}


# ----------------------------------------------------------------------------- assembly


def clean(records: list[Record]) -> list[Record]:
    """Drop non-ASCII, over-long and duplicate records (exact and by instruction+input)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in records:
        key = (r["instruction"], r["input"])
        if key in seen:
            continue
        if not all(is_ascii(v) for v in r.values()):
            continue
        if not r["output"] or n_words(r["output"]) > MAX_OUTPUT_WORDS:
            continue
        seen.add(key)
        out.append(r)
    return out


def build(candidates: dict[str, list[Record]], n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    pools = {kind: clean(recs) for kind, recs in candidates.items()}
    want = {kind: int(round(n * share)) for kind, share in MIX.items()}
    want["define"] += n - sum(want.values())  # rounding remainder

    chosen: list[Record] = []
    for kind in ("pos", "example", "define"):  # "define" (the largest pool) takes up any shortfall
        k = min(len(pools[kind]), want[kind] if kind != "define" else n - len(chosen))
        chosen.extend(rng.sample(pools[kind], k))
    rng.shuffle(chosen)
    return clean(chosen)[:n]


def write_jsonl(records: list[Record], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records)
    path.write_text(text, encoding="ascii", newline="\n")
    return len(text.encode("ascii"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("-n", "--num-records", type=int, default=DEFAULT_N)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)

    if (args.wordnet_dir / "data.noun").is_file():
        candidates = wordnet_candidates(args.wordnet_dir)
        source = f"WordNet 3.0 ({args.wordnet_dir})"
    else:
        print(
            f"WARNING: WordNet not found in {args.wordnet_dir} "
            "(apt-get install wordnet-base); falling back to pydoc_data.topics",
            file=sys.stderr,
        )
        candidates = pydoc_candidates()
        source = "pydoc_data.topics (fallback)"

    records = build(candidates, args.num_records, args.seed)
    size = write_jsonl(records, args.out)
    pools = ", ".join(f"{k}={len(v)}" for k, v in candidates.items())
    kinds: dict[str, int] = {}
    for r in records:
        kind = r["instruction"].split()[0].lower() + ("+input" if r["input"] else "")
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"source: {source}; candidate pools: {pools}")
    print(f"wrote {len(records)} records ({size} bytes) to {args.out}; by kind: {kinds}")
    if len(records) < args.num_records:
        print(f"WARNING: only {len(records)} of {args.num_records} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
