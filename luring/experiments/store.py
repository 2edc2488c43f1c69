"""The run directory: an exclusive lock, and a store of finished units.

A *unit* is a piece of work whose result is kept as soon as it ends: one safetensors file
``units/<kind>/<key>.safetensors`` holding its per-example tensors, with its scalar results
as JSON in the file's metadata. Files are written atomically, so a unit is either complete
or absent; a rerun skips the units present. Units are deterministic functions of the
settings and the seed, so a resumed run gives the results of an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from luring.errors import LuringError
from luring.utils import atomic_write_bytes, ensure_dir, read_json, to_jsonable

__all__ = ["RunDir", "Unit"]

Unit = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


class RunDir:
    """A run directory held exclusively by this process (``flock`` on ``.lock``).

    Use as a context manager. A second process on the same directory gets a LuringError.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = ensure_dir(path)
        self._fh: Any = None
        self.ran: list[str] = []
        self.reused: list[str] = []

    def __enter__(self) -> RunDir:
        fh = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the run's duration
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise LuringError(
                f"{self.path} is in use by {owner}; wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"luring process {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to resume into a directory made with different settings."""
        cfg = self.path / "config.json"
        if cfg.exists():
            old = read_json(cfg).get("settings")
            if old is not None and old != to_jsonable(settings):
                raise LuringError(
                    f"{self.path} holds a run with different settings (see its config.json); "
                    "use another --out or delete it to start over")

    def unit_path(self, kind: str, key: str) -> Path:
        return self.path / "units" / kind / f"{_safe(key)}.safetensors"

    def unit(self, kind: str, key: str, fn: Callable[[], Unit]) -> Unit:
        """Return the stored unit ``kind/key``, or run ``fn`` and store its result."""
        path = self.unit_path(kind, key)
        if path.exists():
            blob = path.read_bytes()
            data = st_load(blob)
            n = int.from_bytes(blob[:8], "little")  # the metadata is in the JSON header
            header = json.loads(blob[8:8 + n])
            meta: dict[str, Any] = json.loads(header.get("__metadata__", {}).get("json", "{}"))
            self.reused.append(f"{kind}/{key}")
            return data, meta
        tensors, meta = fn()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        blob = st_save(tensors, metadata={"json": json.dumps(to_jsonable(meta), sort_keys=True)})
        atomic_write_bytes(path, blob)
        self.ran.append(f"{kind}/{key}")
        return tensors, meta
