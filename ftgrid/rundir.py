"""The run directory's file contract: status.json and metrics.json, written atomically.

Shared by the launcher (which marks cells submitted) and the entrypoint (running -> done/failed/oom).
Every write goes to a temp file in the same folder, is fsync'd, then renamed over the target, so a
reader (or a crash) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

STATES = ("pending", "submitted", "running", "done", "oom", "failed", "preempted", "predicted-oom")
TERMINAL = ("done", "oom", "failed")

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def read_status(run_dir: str | os.PathLike) -> dict:
    return read_json(Path(run_dir) / STATUS_FILE, default={"state": "pending"})


def write_status(run_dir: str | os.PathLike, state: str, **fields: Any) -> dict:
    """Merge `fields` into the cell's status.json and set its state (history kept in `history`)."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path, default={}) or {}
    now = time.time()
    status.update(fields)
    status["state"] = state
    status["updated"] = now
    status.setdefault("history", []).append({"state": state, "time": now, "host": socket.gethostname()})
    atomic_write_json(path, status)
    return status
