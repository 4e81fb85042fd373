"""The kit's one error type for bad input, and the did-you-mean hint every message shares."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A bad run config or sweep spec: the message is one line meant for the user."""


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid: {', '.join(str(c) for c in choices)}"
