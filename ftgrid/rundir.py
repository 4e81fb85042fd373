"""The run directory's file contract: status.json and metrics.json, written atomically.

Shared by the launcher (which marks cells submitted) and the entrypoint (running -> done/failed/oom).
Every write goes to a temp file in the same folder, is fsync'd, then renamed over the target, so a
reader (or a crash) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

STATES = ("pending", "submitted", "running", "done", "oom", "failed", "preempted", "predicted-oom", "damaged")
TERMINAL = ("done", "oom", "failed")
# status.json fields readers rely on, with their types: a value of another type is dropped on reading
# (a hand-edited or damaged file must not crash --status, --rerun or the report).
FIELD_TYPES = {"error": str, "log_tail": str, "job_id": str, "slurm_job_id": str, "host": str, "executor": str,
               "pid": int, "exit_code": int, "step": int, "started": float, "ended": float, "updated": float}

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """fsync=False: for files any re-run re-makes (a sweep's rendered cell files), where flushing each
    to disk would cost more than the file is worth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any, fsync: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", fsync)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return default


def read_metrics(run_dir: str | os.PathLike) -> dict | None:
    """The cell's metrics.json when it is a finished run's record (an object with a numeric eval_loss), else None."""
    metrics = read_json(Path(run_dir) / METRICS_FILE, default=None)
    if not isinstance(metrics, dict):
        return None
    loss = metrics.get("eval_loss")
    return metrics if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None


def _typed(key: str, value: Any) -> bool:
    kind = FIELD_TYPES.get(key)
    if kind is None or value is None:
        return True
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is str:
        return isinstance(value, (str, int))  # a job id written as a number is still a job id
    return isinstance(value, kind)


def _parse_status(path: Path) -> tuple[dict | None, str | None]:
    """(status, None) for a usable file, (None, why) for a damaged one, (None, None) when there is none."""
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"status.json unreadable: {e.strerror}"
    except (ValueError, RecursionError):
        return None, "status.json is not valid JSON (truncated?)"
    if not isinstance(status, dict):
        return None, f"status.json holds a {type(status).__name__}, not an object"
    if status.get("state") not in STATES:
        return None, f"status.json names no known state ({str(status.get('state'))[:40]!r})"
    return {k: (str(v) if FIELD_TYPES.get(k) is str and isinstance(v, int) else v)
            for k, v in status.items() if _typed(k, v)}, None


def read_status(run_dir: str | os.PathLike) -> dict:
    """The cell's status, always a dict whose `state` is one of STATES, never raising.

    Results are evidence: a cell whose metrics.json is a finished run's record is `done` when its
    status.json is missing, damaged or still pending (a truncated status.json must not get the cell
    retrained over its results). A status.json that is not a JSON object or names no known state makes
    the cell `damaged`: reported, and re-run only when asked (`--rerun damaged`). Wrong-typed fields
    are dropped."""
    status, damage = _parse_status(Path(run_dir) / STATUS_FILE)
    if status is not None and status["state"] not in ("pending", "predicted-oom"):
        return status
    if read_metrics(run_dir) is not None:
        return {"state": "done", "recovered": "from metrics.json" + (f" ({damage})" if damage else "")}
    if damage:
        return {"state": "damaged", "error": damage}
    return status or {"state": "pending"}


def write_status(run_dir: str | os.PathLike, state: str, *, fsync: bool = True, **fields: Any) -> dict:
    """Merge `fields` into the cell's status.json and set its state (history kept in `history`)."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path, default={})
    status = status if isinstance(status, dict) else {}  # a damaged file is replaced, not merged
    now = time.time()
    status.update(fields)
    status["state"] = state
    status["updated"] = now
    if not isinstance(status.get("history"), list):
        status["history"] = []
    status["history"].append({"state": state, "time": now, "host": socket.gethostname()})
    atomic_write_json(path, status, fsync)
    return status


@contextlib.contextmanager
def locked(path: str | os.PathLike, on_wait=None):
    """Hold an exclusive lock on `path` (created when missing; flock, which NFS clients forward) for the
    block. When another process holds it, `on_wait(holder)` is called once (holder: what it wrote into
    the file, its pid and host) before this one waits its turn."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
