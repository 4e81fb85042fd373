"""Where rows come from: a hub data set (the real `datasets.load_dataset` path, needs a network), or a
local json/jsonl/csv/parquet/arrow file, or a folder of such files (one split per file name stem:
`train_sft.parquet`, `test_sft-00000-of-00001.parquet`, ...) or a `save_to_disk` folder.

`identity(entry)` is what the cache key uses for the source: the hub id (and config/splits), or the
path, size and modification time of every local file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ftgrid.data_prep.catalog import LOCAL_SUFFIXES, DataError, DatasetEntry

if TYPE_CHECKING:  # `datasets` takes seconds to import: only the loaders import it (a name check must not)
    import datasets

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def _local(entry: DatasetEntry) -> Path | None:
    if entry.local_path is not None:
        return entry.local_path
    path = Path(entry.source)
    return path if path.exists() else None


def _split_files(folder: Path) -> dict[str, list[Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    out: dict[str, list[Path]] = {}
    for p in files:
        out.setdefault(p.name.split(".")[0].split("-")[0], []).append(p)
    return out


def identity(entry: DatasetEntry) -> dict:
    path = _local(entry)
    if path is None:
        return {"hub": entry.source, "config": entry.config, "split": entry.split, "eval_split": entry.eval_split,
                "revision": os.environ.get("FTGRID_DATA_REVISION")}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {"local": str(path.resolve()), "split": entry.split, "eval_split": entry.eval_split,
            "files": [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                      for p in files]}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load(entry: DatasetEntry, split: str | None = None, label: str | None = None) -> datasets.Dataset:
    """Rows of one split (`a+b` concatenates) as a datasets.Dataset, in source order."""
    import datasets

    split = split or entry.split
    label = label or entry.name
    path = _local(entry)
    try:
        if path is None:
            return _hub(entry, split, label)
        if path.is_file():
            if split not in ("train", entry.split):
                raise DataError(f"dataset {label} is one file ({path.name}); it has no split {split!r}")
            return datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train")
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return datasets.concatenate_datasets([loaded[s] for s in split.split("+")])
            return loaded
        by_split = _split_files(path)
        parts = []
        for name in split.split("+"):
            if name not in by_split:
                raise DataError(f"dataset {label}: no split {name!r} in {path} (found: "
                                f"{', '.join(sorted(by_split)) or 'no data files'})")
            files = by_split[name]
            builder = BUILDERS[files[0].suffix]
            parts.append(datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train"))
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
        raise DataError(f"cannot read dataset {label}: {_one_line(e)}") from None


def _hub(entry: DatasetEntry, split: str, label: str) -> datasets.Dataset:
    import datasets

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return datasets.load_dataset(entry.source, entry.config, split=split)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types; one line for the user
        why = "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set)" if offline else _one_line(e)
        raise DataError(f"cannot load hub dataset {entry.source} for {label}: {why}; use a shipped sample "
                        f"(python -m data_prep --list) or a local file") from None
