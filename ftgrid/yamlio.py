"""The one YAML loader of the kit: safe, C-accelerated where libyaml is installed."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ftgrid.errors import ConfigError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_text(text: str, source: str = "<text>", aliases: bool = False):
    """Parse YAML text with the safe loader (libyaml's where installed). Anchors and aliases are refused
    unless `aliases` (the kit's own data files): no user config needs them, and a few hundred bytes of
    nested aliases expand to billions of nodes."""
    if not aliases and ("&" in text or "*" in text):  # only then can there be an anchor or alias: scan the events (linear)
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                raise ConfigError(f"{source} line {mark.line + 1}: YAML anchors and aliases (&, *) are not "
                                  f"accepted; write the values out")
    return yaml.load(text, Loader=_LOADER)


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file that must hold a mapping; unreadable or malformed files are one ConfigError line."""
    try:
        data = load_yaml_text(Path(path).read_text(encoding="utf-8"), str(path)) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} keys")
    return data
