"""The one user-facing error type.

A :class:`LuringError` carries a one-line message that names the problem and the fix. The CLI
prints it on stderr and exits with code 2, without a traceback.
"""

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")


class LuringError(Exception):
    """A user error (bad input, missing file, bad option). Its message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def lookup(table: Mapping[str, V], name: str, kind: str) -> V:
    """``table[name]``; an unknown name is a LuringError that lists the known ones
    (``kind`` names what is looked up, e.g. ``"data set"``)."""
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise LuringError(f"unknown {kind} {name!r}; choose one of: {known}") from None
