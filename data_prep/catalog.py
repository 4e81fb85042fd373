"""Dataset catalogue: a dataset name (and size tier) resolves to a source, a format and row counts.

`NAME[:TIER]` where TIER is a named tier (small, medium, large, xlarge), a row count (`:500`) or a
fraction (`:0.25`). A local json/jsonl/csv/parquet/arrow file or folder works too (`path[:TIER]`),
and so does any hub data set by id (`hf:owner/name[:TIER]`, needs a network). `@SPLIT` picks the split
of a hub data set or of a local folder of split files (`hf:HuggingFaceH4/ultrachat_200k@train_gen:small`,
`data/ultrachat@train_sft`; `a+b` concatenates); without it, `train` is read.
Named tiers of hub entries are decades of the full set (pii 2.1K/21K/209K); shipped samples have
their own small tiers. `python -m data_prep --list` prints the catalogue.
Tiers are nested: the same shuffle (fixed data seed) is cut at increasing lengths, so
small ⊂ medium ⊂ large and sweeps over data size compare like with like. The eval rows are held out
before the tiers are cut, so every tier of a dataset is evaluated on the same rows.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ftgrid.validate import NAME_MAX

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
TIER_NAMES = ("small", "medium", "large", "xlarge")


class DataError(ValueError):
    """Bad dataset name, tier, file or layout: the message is one line meant for the user."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    source: str              # a shipped sample (file or folder under samples/), a local path, or a hub id
    format: str              # adapter name in data_prep.formats ("auto": detect from the columns)
    tiers: dict = field(default_factory=dict)  # tier name -> train rows (int) or fraction of them (float)
    eval_rows: int = 200     # default hold-out (capped at a tenth of the rows)
    task: str = "sft"        # sft | dpo | token-classification | summarization
    split: str = "train"     # split(s) read from the source; `a+b` concatenates (datasets' syntax)
    eval_split: str | None = None  # take eval rows from this split instead of holding them out
    config: str | None = None      # hub config name (e.g. cnn_dailymail "3.0.0")
    full_rows: int | None = None   # rows of the full set, as published (documentation)
    note: str = ""

    @property
    def local_path(self) -> Path | None:
        path = SAMPLES_DIR / self.source
        if path.exists():
            return path
        path = Path(self.source)
        return path if path.is_absolute() and path.exists() else None

    @property
    def is_sample(self) -> bool:
        return (SAMPLES_DIR / self.source).exists()


def _decades(full: int, top: str = "large") -> dict:
    """Named tiers as decades of the full set, the largest named `top` (e.g. pii 2.1K/21K/209K)."""
    names = TIER_NAMES[: TIER_NAMES.index(top) + 1]
    return {name: max(1, round(full / 10 ** (len(names) - 1 - i))) for i, name in enumerate(names)}


def _sample(name, source, fmt, task, tiers, eval_rows, **kw):
    return DatasetEntry(name, source, fmt, tiers=tiers, eval_rows=eval_rows, task=task, **kw)


def _hub(name, hub_id, fmt, task, full, top="large", eval_rows=500, **kw):
    return DatasetEntry(name, hub_id, fmt, tiers=_decades(full, top), eval_rows=eval_rows, task=task,
                        full_rows=full, **kw)


CATALOG = {e.name: e for e in [
    # --- shipped samples (made by samples/make_samples.py and samples/make_format_samples.py; offline)
    DatasetEntry("wordnet", "wordnet_instruct.jsonl", "alpaca",
                 tiers={"small": 400, "medium": 1200, "large": 3600}, eval_rows=200, full_rows=4000,
                 note="WordNet 3.0 glosses as Alpaca instructions"),
    _sample("dolly-sample", "dolly.jsonl", "dolly", "sft", {"small": 40, "medium": 120, "large": 280}, 20),
    _sample("openorca-sample", "openorca.parquet", "openorca", "sft",
            {"small": 40, "medium": 120, "large": 280}, 20),
    _sample("ultrachat-sample", "ultrachat", "messages", "sft", {"small": 30, "medium": 90, "large": 180}, 20,
            split="train_sft", eval_split="test_sft"),
    _sample("oasst-sample", "oasst1.jsonl", "oasst1", "sft", {"small": 10, "medium": 30, "large": 54}, 6),
    _sample("lima-sample", "lima.json", "lima", "sft", {"small": 20, "medium": 60, "large": 110}, 10),
    _sample("platypus-sample", "platypus.csv", "platypus", "sft", {"small": 30, "medium": 90, "large": 180},
            20),
    _sample("hc3-sample", "hc3.jsonl", "hc3", "sft", {"small": 30, "medium": 90, "large": 180}, 20),
    _sample("evol-sample", "evol_instruct.jsonl", "evol-instruct", "sft",
            {"small": 30, "medium": 90, "large": 180}, 20),
    _sample("pairs", "pairs.jsonl", "pairs", "dpo", {"small": 40, "medium": 120, "large": 270}, 30),
    _sample("orca-dpo-sample", "orca_dpo_pairs.jsonl", "orca-dpo", "dpo",
            {"small": 30, "medium": 90, "large": 180}, 20),
    _sample("pii-sample", "pii.jsonl", "pii", "token-classification",
            {"small": 50, "medium": 150, "large": 270}, 30),
    _sample("cnn-sample", "cnn_dailymail.csv", "cnn_dailymail", "summarization",
            {"small": 20, "medium": 60, "large": 110}, 12),
    _sample("xsum-sample", "xsum.arrow", "xsum", "summarization", {"small": 40, "medium": 120, "large": 270},
            30),
    _sample("peer-review-sample", "peer_review.jsonl", "peer-review", "summarization",
            {"small": 15, "medium": 40, "large": 72}, 8),
    # --- hub datasets (need a network; the same adapters apply). Tiers: decades of the full set.
    _hub("alpaca", "tatsu-lab/alpaca", "alpaca", "sft", 52_002),
    _hub("alpaca-cleaned", "yahma/alpaca-cleaned", "alpaca", "sft", 51_760),
    _hub("dolly", "databricks/databricks-dolly-15k", "dolly", "sft", 15_011),
    _hub("openorca", "Open-Orca/OpenOrca", "openorca", "sft", 2_914_896, top="xlarge", eval_rows=2000),
    _hub("ultrachat", "HuggingFaceH4/ultrachat_200k", "messages", "sft", 207_865, split="train_sft",
         eval_split="test_sft", eval_rows=1000),
    _hub("oasst1", "OpenAssistant/oasst1", "oasst1", "sft", 9_846, split="train", eval_split="validation",
         note="tiers count conversations (one per message tree), not messages"),
    _hub("lima", "GAIR/lima", "lima", "sft", 1_030, eval_rows=50),
    _hub("platypus", "garage-bAInd/Open-Platypus", "platypus", "sft", 24_926),
    _hub("hc3", "Hello-SimpleAI/HC3", "hc3", "sft", 24_322, config="all"),
    _hub("evol-instruct", "WizardLMTeam/WizardLM_evol_instruct_V2_196k", "evol-instruct", "sft", 143_000),
    _hub("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized", "pairs", "dpo", 61_135,
         split="train_prefs", eval_split="test_prefs"),
    _hub("orca-dpo", "Intel/orca_dpo_pairs", "orca-dpo", "dpo", 12_859),
    _hub("pii", "ai4privacy/pii-masking-200k", "pii", "token-classification", 209_261),
    _hub("cnn_dailymail", "abisee/cnn_dailymail", "cnn_dailymail", "summarization", 311_971, config="3.0.0",
         split="train+validation+test"),
    _hub("xsum", "EdinburghNLP/xsum", "xsum", "summarization", 226_711, split="train+validation+test"),
    _hub("peersum", "oaimli/PeerSum", "peer-review", "summarization", 14_993),
]}


@dataclass(frozen=True)
class DatasetRequest:
    entry: DatasetEntry
    tier: str | int | float | None  # None = all rows

    @property
    def label(self) -> str:
        return self.entry.name if self.tier is None else f"{self.entry.name}:{self.tier}"

    def tier_rows(self, available: int) -> int:
        """Rows of the train tier given `available` rows after the eval hold-out."""
        tier = self.tier
        if tier is None:
            return available
        if isinstance(tier, str):
            wanted = self.entry.tiers.get(tier)
            if wanted is None:  # a file without named tiers: decades down from the full set
                wanted = max(1, available // 10 ** (TIER_NAMES[::-1].index(tier)))
            elif isinstance(wanted, float):
                wanted = max(1, int(round(wanted * available)))
            return min(wanted, available)
        # A tier the user typed is taken at its word: too many rows, or a fraction that selects none,
        # is an error, not a silently different data set (named tiers are approximate sizes: capped).
        if isinstance(tier, float):
            rows = int(round(tier * available))
            if rows < 1:
                raise DataError(f"dataset {self.label}: a fraction of {tier:g} selects 0 of the {available} "
                                f"training rows")
            return rows
        if tier > available:
            raise DataError(f"dataset {self.label} asks for {tier} training rows; it has at most {available} (after "
                            f"the eval hold-out)")
        return tier


LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")


def parse(spec: str) -> DatasetRequest:
    """`wordnet:small`, `alpaca`, `path/to/file.jsonl:500`, `dir/:0.5`, `hf:owner/name:small` -> request."""
    spec = str(spec)
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in Path(spec).parts):
        # pathlib raises OSError (not False) when asked whether such a name exists
        raise DataError(f"dataset {spec[:60]!r}... holds a name longer than a filesystem takes ({NAME_MAX} bytes)")
    name, tier_text = spec, ""
    if ":" in spec:
        head, _, tail = spec.rpartition(":")
        known = head in CATALOG or Path(head).exists() or (head.startswith("hf:") and len(head) > 3)
        if head and head != "hf" and (known or tail in TIER_NAMES or _numeric(tail)):
            name, tier_text = head, tail
    if not name:
        raise DataError(f"empty dataset name in {spec!r}")
    tier = _parse_tier(tier_text, spec) if tier_text else None
    name, split = _split_suffix(name, spec)
    if name in CATALOG:
        entry = CATALOG[name]
        if isinstance(tier, str) and entry.tiers and tier not in entry.tiers:
            raise DataError(f"dataset {name!r} has no tier {tier!r}; valid: {', '.join(entry.tiers)}, a row "
                            f"count or a fraction")
        if split:  # e.g. ultrachat@train_gen: the catalogue's source, another split (same eval split)
            entry = replace(entry, name=f"{entry.name}@{split}", split=split)
        return DatasetRequest(entry, tier)
    if name.startswith("hf:"):  # any hub data set by id (format detected from its columns)
        hub_id = name[3:]
        return DatasetRequest(DatasetEntry(hub_id, hub_id, "auto", eval_rows=500, task="", split=split or "train"),
                              tier)
    path = Path(name)
    if split and not path.is_dir():
        raise DataError(f"dataset {spec!r}: @{split} picks a split of a hub data set (hf:OWNER/NAME@SPLIT) or of "
                        f"a folder of split files; {name} is not a folder")
    if split:
        return DatasetRequest(DatasetEntry(f"{path.name}@{split}", str(path.resolve()), "auto", task="",
                                           split=split), tier)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.exists():
            raise DataError(f"data file not found: {name}")
        return DatasetRequest(DatasetEntry(path.name if path.is_dir() else path.stem, str(path.resolve()),
                                           "auto", task=""), tier)
    close = difflib.get_close_matches(name, list(CATALOG), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown dataset {name!r}{hint}; valid: {', '.join(CATALOG)}, hf:OWNER/NAME, or a local "
                    f".json/.jsonl/.csv/.parquet/.arrow file or folder")


SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+(\+[A-Za-z0-9_.-]+)*")


def _split_suffix(name: str, spec: str) -> tuple[str, str | None]:
    """`hf:owner/name@train_gen` -> (`hf:owner/name`, `train_gen`); a path that exists as typed keeps its @."""
    if "@" not in name or Path(name).exists():
        return name, None
    head, _, split = name.rpartition("@")
    if not head or not SPLIT_NAME.fullmatch(split):
        raise DataError(f"bad split {split!r} in {spec!r}: NAME@SPLIT with a split name like train_gen or "
                        f"train+validation")
    return head, split


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_tier(text: str, spec: str) -> str | int | float:
    if text in TIER_NAMES:
        return text
    try:
        number = float(text)
    except ValueError:
        raise DataError(f"bad size tier {text!r} in {spec!r}; use {', '.join(TIER_NAMES)}, a row count "
                        f"or a fraction") from None
    if 0 < number < 1:
        return number
    if number >= 1 and number.is_integer():
        return int(number)
    raise DataError(f"bad size tier {text!r} in {spec!r}: a row count must be a positive integer, "
                    f"a fraction must be in (0, 1)")


def held_out_rows(label: str, rows: int, eval_rows: int | None, entry_eval_rows: int) -> int:
    """Evaluation rows held out of a set without an eval split: the user's eval_rows, else a tenth, capped at
    the entry's count (at least one). A DataError when that leaves no row to train on."""
    n_eval = eval_rows or min(entry_eval_rows, max(1, rows // 10))
    if n_eval >= rows:
        raise DataError(f"dataset {label} has {rows} usable rows, too few for {n_eval} eval rows")
    return n_eval
