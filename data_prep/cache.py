"""On-disk cache of prepared data, built once and shared by every process of a run.

Layout: `<cache dir>/<key>/` holds `train/` and `eval/` (datasets.save_to_disk) and `meta.json`. The
folder is built under a temporary name and renamed into place, so its existence is the "done"
marker. Cache dir: `cache_dir=` argument, else $FTGRID_DATA_CACHE, else ~/.cache/ftgrid/data.

Multi-process runs (torchrun, srun, deepspeed): the local rank 0 builds, under a file lock (two
jobs on the same data never build twice, on a shared file system too); the other ranks do not join
any collective — they poll for the done marker, so no NCCL/gloo timeout can fire while rank 0
tokenizes. If rank 0 fails it writes `<key>.failed` with the error and the waiters raise it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from ftgrid.data_prep.catalog import DataError

DEFAULT_DIR = Path.home() / ".cache" / "ftgrid" / "data"
POLL_SECONDS = 0.5
DEFAULT_WAIT = float(os.environ.get("FTGRID_DATA_WAIT", 6 * 3600))


def cache_dir(path=None) -> Path:
    return Path(path or os.environ.get("FTGRID_DATA_CACHE") or DEFAULT_DIR).expanduser()


def key(parts: dict) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def local_rank() -> int:
    """This process's rank on its node (the builder is local rank 0 on every node)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID", "RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def tokenizer_fingerprint(tokenizer) -> str:
    """What changes the token ids: the vocabulary/merges/normalizers, special and added tokens, template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map,
             "added": sorted((str(k), v) for k, v in tokenizer.get_added_vocab().items()),
             "chat_template": getattr(tokenizer, "chat_template", None),
             "padding_side": getattr(tokenizer, "padding_side", None),
             "truncation_side": getattr(tokenizer, "truncation_side", None)}
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def process_start() -> float:
    """When this process started (epoch seconds; Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path))


def get_or_build(root: Path, k: str, build: Callable[[Path], None], *, rank: int | None = None,
                 timeout: float | None = None, label: str = "",
                 check: Callable[[], None] | None = None) -> tuple[Path, bool]:
    """(folder of entry `k`, built_here). `build(tmp_folder)` writes the entry's files. `check()` runs on
    every rank before anything is locked or waited for when the entry is not built yet: bad input (an
    empty or broken data file) then fails every rank at once with the same error and leaves no files."""
    final, failed = root / k, root / f"{k}.failed"
    rank = local_rank() if rank is None else rank
    if final.is_dir():
        return final, False
    if check is not None:
        check()
    root.mkdir(parents=True, exist_ok=True)
    if rank != 0:
        return wait_for(root, k, timeout=timeout, label=label), False
    with _lock(root / f"{k}.lock"):
        if final.is_dir():  # another job built it while we waited for the lock
            return final, False
        failed.unlink(missing_ok=True)
        tmp = root / f"{k}.tmp-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            build(tmp)
            os.replace(tmp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            failed.write_text(f"{type(e).__name__}: {e}"[:2000])
            raise
    return final, True


def wait_for(root: Path, k: str, *, timeout: float | None = None, label: str = "") -> Path:
    """Poll (no collective) until rank 0 has built entry `k`; raise its error if it failed."""
    final, failed = root / k, root / f"{k}.failed"
    started = time.time()
    limit = DEFAULT_WAIT if timeout is None else timeout
    # A failure written before this run's processes started is an earlier run's (rank 0 retries it); one
    # written since, even before this rank got here, is this run's.
    stale = failed.stat().st_mtime if failed.exists() and failed.stat().st_mtime < process_start() - 60 else None
    while not final.is_dir():
        if failed.exists() and failed.stat().st_mtime != stale:
            raise DataError(f"rank 0 failed to prepare {label or k}: {failed.read_text().strip()}")
        if time.time() - started > limit:
            raise DataError(f"waited {limit:.0f}s for rank 0 to prepare {label or k} in {root}; is the cache "
                            f"dir shared by the ranks of a node? (set FTGRID_DATA_CACHE)")
        time.sleep(POLL_SECONDS)
    return final
