"""The run directory: an exclusive lock, and a store of finished units and trained models.

A *unit* is a piece of work whose result is kept as soon as it ends: one safetensors file
``units/<kind>/<key>.safetensors`` holding its per-example tensors, with its scalar results
as JSON in the file's metadata. Files are written atomically, so a unit is either complete
or absent; a rerun skips the units present. Units are deterministic functions of the
settings and the seed, so a resumed run gives the results of an uninterrupted one.

A *trained model* (M, each defense, the attacker's model S, the appendix experiments' own
models) is stored the same way, as a directory ``models/<name>`` (:meth:`RunDir.model`):
built under a temporary name and renamed into place when complete, with ``identity.json``
recording what it was trained from; it is reused only for the same identity and refused
(never silently retrained or reused) for another.

Identity: a run directory holds one run. ``config.json`` records the run's *identity* (data
set, fingerprints of its splits, profile settings, seeds, target M); a rerun whose identity
differs is refused with a one-line error naming what differs, unless ``restart=True``
(``--restart``), which clears the directory first. Each unit also stores the fingerprint of
everything that determines it (images, models, seed, parameters): a stored unit whose
fingerprint differs from the one asked for is recomputed, never reused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from luring.errors import LuringError
from luring.utils import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    fingerprint,
    read_json,
    to_jsonable,
)

__all__ = ["RunDir", "Unit", "identity_differences", "IDENTITY"]

#: The file of a model directory that records what the model was trained from.
IDENTITY = "identity.json"

Unit = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


class RunDir:
    """A run directory held exclusively by this process (``flock`` on ``.lock``).

    Use as a context manager. A second process on the same directory gets a LuringError.
    """

    def __init__(self, path: str | os.PathLike, *, restart: bool = False,
                 lock: bool = True) -> None:
        self.path = ensure_dir(path)
        self.restart = bool(restart)
        self.lock = bool(lock)  # False: a helper process of a torchrun run (rank > 0)
        self._fh: Any = None
        self.ran: list[str] = []
        self.reused: list[str] = []
        self.recomputed: list[str] = []
        self.models_reused: list[str] = []  # trained by an earlier invocation

    def __enter__(self) -> RunDir:
        if not self.lock:
            return self
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
        for old in self.path.glob(".trash-*"):  # left by a killed --restart
            shutil.rmtree(old, ignore_errors=True)
        if self.restart:
            self.clear()
        return self

    def clear(self) -> None:
        """Remove everything in the directory but the lock. ``config.json`` goes first, so a
        run killed half-way leaves no identity behind, and what is left over is never reused
        (units and models carry their own fingerprints)."""
        trash = self.path / f".trash-{os.getpid()}"
        trash.mkdir(exist_ok=True)
        entries = sorted((p for p in self.path.iterdir() if p.name not in (".lock", trash.name)),
                         key=lambda p: p.name != "config.json")
        for p in entries:
            os.replace(p, trash / p.name)
        shutil.rmtree(trash, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def check_identity(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """Refuse to resume into a directory that holds another run: its ``config.json``
        identity must equal ``identity`` (JSON-compared). Returns the old config (None for a
        fresh directory)."""
        cfg = self.path / "config.json"
        if not cfg.exists():
            if (self.path / "units").exists() or (self.path / "models").exists():
                raise LuringError(
                    f"{self.path} holds units or models but no config.json (an interrupted "
                    "--restart, or files copied in); rerun with --restart to clear it, or use "
                    "another --out")
            return None
        old = read_json(cfg)
        diffs = identity_differences(old.get("identity"), to_jsonable(identity))
        if diffs:
            raise LuringError(
                f"{self.path} holds another run ({'; '.join(diffs)}); use another --out, or "
                "--restart to clear it and start over")
        return old

    def unit_path(self, kind: str, key: str) -> Path:
        return self.path / "units" / kind / f"{_safe(key)}.safetensors"

    def unit(self, kind: str, key: str, fn: Callable[[], Unit],
             identity: dict[str, Any] | None = None) -> Unit:
        """Return the stored unit ``kind/key``, or run ``fn`` and store its result.

        ``identity`` (JSON-able, tensors and modules allowed: see
        :func:`luring.utils.fingerprint`) describes everything the unit depends on; a stored
        unit made for another identity is recomputed and replaced."""
        path = self.unit_path(kind, key)
        ident = fingerprint(kind, key, identity)
        if path.exists():
            blob = path.read_bytes()
            n = int.from_bytes(blob[:8], "little")  # the metadata is in the JSON header
            stored = json.loads(blob[8:8 + n]).get("__metadata__", {})
            if stored.get("identity") == ident:
                meta: dict[str, Any] = json.loads(stored.get("json", "{}"))
                self.reused.append(f"{kind}/{key}")
                return st_load(blob), meta
            self.recomputed.append(f"{kind}/{key}")
        tensors, meta = fn()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        blob = st_save(tensors, metadata={"json": json.dumps(to_jsonable(meta), sort_keys=True),
                                          "identity": ident})
        atomic_write_bytes(path, blob)
        self.ran.append(f"{kind}/{key}")
        return tensors, meta


    def model(self, name: str, identity: dict[str, Any], build: Callable[[Path], None], *,
              marker: str, announce: Callable[[], None] | None = None) -> Path:
        """The trained model ``models/<name>``: reused when it holds ``marker`` (its
        sidecar: ``model.json``, ``defense.json``) and was trained from ``identity``;
        refused (one-line error) when trained from something else; else ``announce()``
        then ``build(tmp)`` into a fresh temporary directory, ``identity`` recorded in it,
        renamed into place. Returns the directory."""
        final = self.path / "models" / name
        if (final / marker).exists():
            old = read_json(final / IDENTITY) if (final / IDENTITY).exists() else None
            diffs = identity_differences(old, to_jsonable(identity))
            if diffs:
                raise LuringError(
                    f"{final.relative_to(self.path)} in {self.path} was trained from something "
                    f"else ({'; '.join(diffs)}); use another --out, or --restart to clear the "
                    "directory and retrain")
            self.models_reused.append(name)
            return final
        if announce is not None:
            announce()
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a killed run
        tmp.mkdir(parents=True)
        build(tmp)
        atomic_write_json(tmp / IDENTITY, identity)
        os.replace(tmp, final)
        return final


def identity_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two run identities (JSON values): ``"seed 0 →
    1"``, ``"settings.defend.n 50 → 20"``; at most 4, then ``"…"``. ``old`` None (a directory
    made before identities were recorded) is one difference."""
    if old is None:
        return ["it was made by an older luring without a run identity"]
    out: list[str] = []

    def walk(a: Any, b: Any, p: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{p}.{k}" if p else k)
        elif a != b:
            out.append(f"{p}: {_short(a)} → {_short(b)}")

    walk(old, new, path)
    return out[:4] + (["…"] if len(out) > 4 else [])


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
