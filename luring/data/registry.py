"""The data set registry: what each data set is, where its files live, how to load it.

Every loader returns ``(images, labels)``: float32 NCHW in [0, 1] and int64 in [0, classes)
(-1 for the unlabelled images of a flat image folder).

Besides the names in :data:`DATASETS`, :func:`get_spec` asks each function registered with
:func:`register_pattern` to make a spec for a name (e.g. ``imagefolder-64x48``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from luring.errors import lookup

__all__ = ["DatasetSpec", "DATASETS", "register", "register_pattern", "get_spec", "data_root",
           "SPLITS"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: ``name``; ``family`` (``mnist``, ``svhn``, ``cifar10``, ``imagenet``:
    picks the paper's architectures and settings; ``imagefolder``: a user's images, for which
    the shape picks them); ``shape`` (C, H, W); ``classes`` (names; empty when only the files
    tell, see ``classes_from``); ``loader(split, root) -> (images, labels)``; ``embedded`` (no
    files needed); ``files`` (what must be on disk, for error messages); ``subdirs``
    (directories searched under the root, in order); ``extra_dirs`` (absolute directories
    searched after them, e.g. a distribution package's); ``locate(split, root) -> [paths]``
    (the files a split is read from; a missing file is a LuringError naming what was
    expected, where it was searched and how to get it); ``classes_from(root) -> names`` (the
    classes as the files on disk define them); ``open(split, root) -> Dataset`` (the split
    read lazily, items (float32 (C, H, W) in [0, 1], int label), for data too big for
    memory)."""

    name: str
    family: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    loader: Callable[[str, Path | None], tuple[torch.Tensor, torch.Tensor]]
    embedded: bool = False
    files: tuple[str, ...] = ()
    subdirs: tuple[str, ...] = ()
    description: str = ""
    extra_dirs: tuple[str, ...] = field(default_factory=tuple)
    locate: Callable[[str, Path], list[Path]] | None = None
    classes_from: Callable[[Path], tuple[str, ...]] | None = None
    open: Callable[[str, Path], Dataset] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {}
_PATTERNS: list[Callable[[str], DatasetSpec | None]] = []


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS`."""
    DATASETS[spec.name] = spec
    return spec


def register_pattern(make: Callable[[str], DatasetSpec | None]) -> None:
    """Let ``make(name)`` supply the spec of names not in :data:`DATASETS` (it returns None
    for names it does not know, and raises a LuringError for a malformed one of its own)."""
    _PATTERNS.append(make)


def get_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; an unknown name is a LuringError listing the known ones."""
    if name not in DATASETS:
        for make in _PATTERNS:
            spec = make(name)
            if spec is not None:
                return spec
    return lookup(DATASETS, name, "data set")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given (``--data-dir``), else ``$LURING_DATA``, else the
    per-user cache directory (``$XDG_CACHE_HOME/luring/data`` or ``~/.cache/luring/data``)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("LURING_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "luring" / "data"
