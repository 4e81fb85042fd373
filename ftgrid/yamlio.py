"""The one YAML loader of the kit: safe, C-accelerated where libyaml is installed."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ftgrid.errors import ConfigError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_text(text: str, source: str = "<text>"):
    """Parse YAML text with the safe loader (libyaml's where installed)."""
    return yaml.load(text, Loader=_LOADER)


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file that must hold a mapping; unreadable or malformed files are one ConfigError line."""
    try:
        data = load_yaml_text(Path(path).read_text(), str(path)) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} keys")
    return data
