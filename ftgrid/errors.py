"""The kit's one error type for bad input, and the did-you-mean hint every message shares."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A bad run config or sweep spec: the message is one line meant for the user (a control character
    from a typed value, such as a newline or carriage return, is shown escaped, never breaks the line)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """`text` with control characters escaped (`\\n`, `\\r`, `\\x1b`): safe to print as one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid: {', '.join(str(c) for c in choices)}"
