"""Format adapters: a source row -> one canonical record per task.

The canonical SFT record is `{"messages": [{"role": ..., "content": ...}, ...]}` ending with the
assistant turn the loss is computed on. Formats are detected from the columns (or named).
"""
from __future__ import annotations

from typing import Callable

from data_prep.catalog import DataError


def _alpaca(row: dict) -> dict:
    user = row["instruction"].strip()
    if (row.get("input") or "").strip():
        user = f"{user}\n\n{row['input'].strip()}"
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": row["output"].strip()}]}


def _messages(row: dict) -> dict:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}


# name -> (columns that identify it, adapter)
FORMATS: dict[str, tuple[frozenset, Callable[[dict], dict]]] = {
    "alpaca": (frozenset({"instruction", "output"}), _alpaca),
    "messages": (frozenset({"messages"}), _messages),
}


def detect(columns) -> str:
    columns = set(columns)
    for name, (needed, _) in FORMATS.items():
        if needed <= columns:
            return name
    expected = "; ".join(f"{n}: {', '.join(sorted(c))}" for n, (c, _) in FORMATS.items())
    raise DataError(f"no known format matches columns {', '.join(sorted(columns))}; expected {expected}")


def adapter(name: str, columns) -> Callable[[dict], dict]:
    if name == "auto":
        name = detect(columns)
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; valid: {', '.join(FORMATS)}")
    needed, fn = FORMATS[name]
    missing = needed - set(columns)
    if missing:
        raise DataError(f"format {name!r} needs columns {', '.join(sorted(missing))}; found "
                        f"{', '.join(sorted(columns))}")
    return fn
