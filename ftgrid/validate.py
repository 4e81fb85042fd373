"""Checks shared by every command and the run-config schema: finite numbers within bounds, integers within
range, one-line names matched whole (never `re.match` with `$`, which passes a trailing newline), and output
folders that can be written, all checked before anything is written.

Each check raises `ConfigError` (one line naming the value); `arg_*` wrap them as argparse `type=`
converters, so a flag's bad value is the parser's one `error:` line too.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from ftgrid.errors import ConfigError

SEED_MAX = 2**32 - 1      # numpy's RandomState accepts seeds in [0, 2**32 - 1]
NAME_MAX = 255            # bytes in one path component on common filesystems (ext4, xfs, NFS)
# Kernel-made trees: writes there fail or do something else than writing a file.
VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"in [{_num(lo)}, {_num(hi)}]"
    return f">= {_num(lo)}" if lo is not None else f"<= {_num(hi)}"


def finite(key: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """`value` as a finite float within [lo, hi]; nan, inf and 1e400 (which parses as inf) are refused."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: {value!r} is not a valid float") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(f"{key} must be {_bounds_text(lo, hi)}, got {value!r}")
    return number


def integer(key: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int within [lo, hi] (a float counts when it is whole: YAML's 1e3)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
        elif isinstance(value, str) and not re.fullmatch(r"\s*[-+]?\d+\s*", value):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: {value!r} is not a valid int") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(f"{key} must be an integer {_bounds_text(lo, hi)}, got {value!r}")
    return number


def matches(pattern: re.Pattern, text) -> re.Match | None:
    """The whole of `text` matches: a trailing newline is not ignored (unlike `$`)."""
    return pattern.fullmatch(text) if isinstance(text, str) else None


def _arg_type(check, name: str, lo, hi):
    """An argparse `type=` running one of the checks above: its message without the placeholder key."""
    def convert(text):
        try:
            return check("value", text, lo, hi)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value: ").removeprefix("value ")) from None
    convert.__name__ = name  # argparse names the type in its message
    return convert


def arg_float(lo: float | None = None, hi: float | None = None):
    """An argparse `type=` for a finite float in [lo, hi]."""
    return _arg_type(finite, "float", lo, hi)


def arg_int(lo: int | None = None, hi: int | None = None):
    """An argparse `type=` for an integer in [lo, hi]."""
    return _arg_type(integer, "int", lo, hi)


def _first_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_dir(path, what: str = "output directory", *, extra_name_bytes: int = 0) -> Path:
    """A folder that exists and is writable, or can be created: not a file (nor under one), not read-only,
    not in a virtual tree (/proc), no component longer than the filesystem takes. Nothing is created.
    `extra_name_bytes`: the longest name that will be written inside it (checked against NAME_MAX too)."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    for root in VIRTUAL_ROOTS:
        if str(absolute) == root or str(absolute).startswith(root + "/"):
            raise ConfigError(f"{what} {path} is under {root}, a virtual filesystem: pick a real folder")
    for part in absolute.parts[1:]:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"{what} {path} has a name of {len(os.fsencode(part))} bytes; the filesystem "
                              f"takes at most {NAME_MAX}")
    if extra_name_bytes > NAME_MAX:
        raise ConfigError(f"{what} {path} would hold a name of {extra_name_bytes} bytes; the filesystem takes "
                          f"at most {NAME_MAX}")
    existing = _first_existing(absolute)
    if not existing.is_dir():
        where = "is a file" if existing == absolute else f"is under a file ({existing})"
        raise ConfigError(f"{what} {path} {where}")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise ConfigError(f"{what} {path} is on a read-only filesystem ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable" if existing == absolute else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"{what} {path} {where}")
    return path


def executable(path, what: str = "--python") -> str:
    """A program that exists and can be run (a name on PATH, or a file with the executable bit)."""
    import shutil
    text = str(path)
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ConfigError(f"{what} {text!r} has a control character (a newline?)")
    if not shutil.which(text):
        raise ConfigError(f"{what} {text!r} is not an executable program")
    return text
