"""The data set registry: what each data set is, where its files live, how to load it.

Every loader returns ``(images, labels)``: float32 NCHW in [0, 1] and int64 in [0, classes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from luring.errors import lookup

__all__ = ["DatasetSpec", "DATASETS", "register", "get_spec", "data_root", "SPLITS"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: ``name``; ``family`` (``mnist``, ``svhn`` or ``cifar10``: picks the paper's
    architectures and settings); ``shape`` (C, H, W); ``classes`` (names); ``loader(split,
    root) -> (images, labels)``; ``embedded`` (no files needed); ``files`` (what must be on
    disk, for error messages); ``subdirs`` (directories searched under the root, in order);
    ``extra_dirs`` (absolute directories searched after them, e.g. a distribution package's);
    ``locate(split, root) -> [paths]`` (the files a split is read from; a missing file is a
    LuringError naming what was expected, where it was searched and how to get it)."""

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS`."""
    DATASETS[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; an unknown name is a LuringError listing the known ones."""
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
