"""Dataset catalogue: a dataset name (and size tier) resolves to a source, a format and row counts.

`NAME[:TIER]` where TIER is a named tier (small, medium, large, xlarge), a row count (`:500`) or a
fraction (`:0.25`). A path to a local json/jsonl/csv/parquet file works too (`path[:TIER]`).
Tiers are nested: the same shuffle (fixed data seed) is cut at increasing lengths, so
small ⊂ medium ⊂ large and sweeps over data size compare like with like. The eval rows are held out
before the tiers are cut, so every tier of a dataset is evaluated on the same rows.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
TIER_NAMES = ("small", "medium", "large", "xlarge")


class DataError(ValueError):
    """Bad dataset name, tier, file or layout: the message is one line meant for the user."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    source: str              # a shipped sample file name, a local path, or a hub id
    format: str              # adapter name in data_prep.formats
    tiers: dict = field(default_factory=dict)  # tier name -> row count
    eval_rows: int = 200

    @property
    def local_path(self) -> Path | None:
        path = SAMPLES_DIR / self.source
        return path if path.exists() else None


CATALOG = {
    # Shipped, real text (WordNet 3.0 glosses turned into instructions; see samples/README.md).
    "wordnet": DatasetEntry("wordnet", "wordnet_instruct.jsonl", "alpaca",
                            tiers={"small": 400, "medium": 1200, "large": 3600}, eval_rows=200),
    # Hub datasets (used when a network is there; the same adapters apply).
    "alpaca": DatasetEntry("alpaca", "tatsu-lab/alpaca", "alpaca",
                           tiers={"small": 520, "medium": 5200, "large": 52002}, eval_rows=500),
}


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
            return min(wanted, available)
        if isinstance(tier, float):
            return max(1, int(round(tier * available)))
        return min(tier, available)


def parse(spec: str) -> DatasetRequest:
    """`wordnet:small`, `alpaca`, `path/to/file.jsonl:500`, `file.json:0.5` -> DatasetRequest."""
    name, _, tier_text = str(spec).rpartition(":") if ":" in str(spec) else (str(spec), "", "")
    if not name:
        raise DataError(f"empty dataset name in {spec!r}")
    tier = _parse_tier(tier_text, spec) if tier_text else None
    if name in CATALOG:
        entry = CATALOG[name]
        if isinstance(tier, str) and entry.tiers and tier not in entry.tiers:
            raise DataError(f"dataset {name!r} has no tier {tier!r}; valid: {', '.join(entry.tiers)}")
        return DatasetRequest(entry, tier)
    path = Path(name)
    if path.suffix in (".json", ".jsonl", ".csv", ".parquet", ".arrow") or path.exists():
        if not path.is_file():
            raise DataError(f"data file not found: {name}")
        return DatasetRequest(DatasetEntry(path.stem, str(path.resolve()), "auto"), tier)
    close = difflib.get_close_matches(name, list(CATALOG), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown dataset {name!r}{hint}; valid: {', '.join(CATALOG)} or a local "
                    f".json/.jsonl/.csv/.parquet file")


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
