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


def short(name: str, limit: int = 64) -> str:
    """A file or dataset name for a one-line message (a 240-character file name would fill the line)."""
    name = str(name)
    return name if len(name) <= limit else f"{name[:limit - 20]}...{name[-17:]}"


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first line of a JSON-lines file that is not a JSON object;
    None when the file is one JSON document or every line is an object."""
    import json
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
            return None
        except ValueError:
            pass  # not one document: JSON lines
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip(b"\r\n"))
            except ValueError as e:
                return number, f"not valid JSON ({getattr(e, 'msg', e)}, column {getattr(e, 'colno', '?')})"
            if not isinstance(row, dict):
                return number, f"a JSON {type(row).__name__}, not an object of columns"
    return None


def check_files(files: list[Path], label: str) -> None:
    """Empty files, and the first JSON line that is not an object, as one DataError naming the file."""
    for path in files:
        if path.stat().st_size == 0 or (path.stat().st_size < 4096 and not path.read_bytes().strip()):
            raise DataError(f"dataset {short(label)}: {short(path.name)} is empty")
        if path.suffix in (".json", ".jsonl"):
            bad = first_bad_json_line(path)
            if bad:
                raise DataError(f"dataset {short(label)}: {short(path.name)} line {bad[0]}: {bad[1]}")


TEXT_SUFFIXES = (".json", ".jsonl", ".csv")


def check_utf8(files: list[Path], label: str) -> None:
    """Text data files must be UTF-8: Arrow's readers take other bytes in and fail only when that row is
    read, without naming the file. Checked in 16 MiB chunks at decoder speed; names the first bad line."""
    import codecs
    for path in (p for p in files if p.suffix in TEXT_SUFFIXES):
        decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 24)
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as e:
                    line += chunk.count(b"\n", 0, max(e.start, 0))
                    raise DataError(f"dataset {short(label)}: {short(path.name)} line {line}: not UTF-8 text "
                                    f"({e.reason}); save it as UTF-8") from None
                if not chunk:
                    break
                line += chunk.count(b"\n")


def local_files(entry: DatasetEntry, split: str | None = None) -> list[Path]:
    """The data files a local entry reads for `split` (all splits when None); [] for hub and saved datasets."""
    path = _local(entry)
    if path is None or (path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())):
        return []
    if path.is_file():
        return [path]
    by_split = _split_files(path)
    names = split.split("+") if split else list(by_split)
    return [f for name in names for f in by_split.get(name, [])]


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
            if path.stat().st_size == 0:  # datasets' json reader dies on it with a bare StopIteration
                raise DataError(f"dataset {short(label)}: {short(path.name)} is empty")
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
    except Exception as e:  # noqa: BLE001 - datasets fails in many types (DatasetGenerationError, StopIteration)
        files = local_files(entry, split)
        check_files(files, label)  # names the empty file or the bad line when that is the cause
        where = f" ({short(files[0].name)})" if len(files) == 1 else ""
        raise DataError(f"cannot read dataset {short(label)}{where}: {_one_line(e)}") from None


def _hub(entry: DatasetEntry, split: str, label: str) -> datasets.Dataset:
    import datasets

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return datasets.load_dataset(entry.source, entry.config, split=split)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types; one line for the user
        why = "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set)" if offline else _one_line(e)
        raise DataError(f"cannot load hub dataset {entry.source} for {label}: {why}; use a shipped sample "
                        f"(python -m data_prep --list) or a local file") from None
