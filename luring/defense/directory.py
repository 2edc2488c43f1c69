"""What every defense directory (format ``luring-defense/1``) has, whatever its method: telling
whether a folder is one and which method it holds, opening its ``defense.json`` (one-line
errors for a missing or foreign directory), and writing the records each one keeps
(``config.json``, ``results.json``, ``report.md``, ``defense.json``).

The methods' own files: :mod:`luring.defense.deploy` (M∘P: luring, ce, auto, stack) and
:mod:`luring.defense.trapdoor_store` (trapdoor); writing a directory as a whole:
:mod:`luring.defense.publish`; loading any of them: :func:`luring.defense.load`
(:mod:`luring.defense.loader`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from luring.errors import LuringError
from luring.utils import atomic_write_json, atomic_write_text, read_json

__all__ = ["FORMAT", "META", "is_defense_dir", "read_defense", "defense_method",
           "write_records"]

FORMAT = "luring-defense/1"
#: The file naming a folder a defense directory (its format, method and settings).
META = "defense.json"


def is_defense_dir(directory: Path) -> bool:
    """True when ``directory`` holds a ``defense.json`` of format ``luring-defense/1``."""
    try:
        meta = read_json(directory / META)
    except LuringError:
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def read_defense(directory: str | os.PathLike, hint: str = "`luring train-defense`"
                 ) -> tuple[Path, dict[str, Any]]:
    """(the directory, its ``defense.json``) of a defense directory. One-line LuringErrors: a
    missing directory (naming ``hint``, the command that trains one), an unreadable
    ``defense.json``, or one of another format (or none)."""
    d = Path(directory)
    if not d.is_dir():
        raise LuringError(f"defense directory {d} does not exist; train one with {hint}")
    meta = read_json(d / META) if (d / META).exists() else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LuringError(f"{d} is not a defense directory (defense.json with format "
                          f"{FORMAT!r} expected)")
    return d, meta


def defense_method(directory: str | os.PathLike) -> str | None:
    """The method of the defense in ``directory`` (``luring``, ``ce``, ``auto``, ``stack`` or
    ``trapdoor``), or None when it has no ``defense.json`` (it is not meant as a defense
    directory: e.g. a target directory, or a missing path) or one that names no method. A
    ``defense.json`` that cannot be read or is of another format is the one-line LuringError
    of :func:`read_defense`."""
    if not (Path(directory) / META).is_file():
        return None
    method = read_defense(directory)[1].get("method")
    return None if method is None else str(method)


def write_records(d: Path, meta: dict[str, Any], results: dict[str, Any],
                  config: dict[str, Any], report: str) -> None:
    """Write the records of a defense directory being staged in ``d``: ``config.json`` (how
    the run was asked for), ``results.json``, ``report.md`` and, last, ``defense.json``
    (``meta``)."""
    atomic_write_json(d / "config.json", config)
    atomic_write_json(d / "results.json", results)
    atomic_write_text(d / "report.md", report)
    atomic_write_json(d / META, meta)
