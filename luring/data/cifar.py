"""CIFAR-10 from the binary batches or the python batches.

Layouts (the two official tarballs, extracted under the data root):

- ``ROOT/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``: records of 1 label byte then
  3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue, rows top to bottom). No per-file
  checksum is published, so each file is validated structurally: non-empty, a whole number
  of 3,073-byte records, labels in [0, 10). Preferred when complete: nothing is unpickled.
- ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}``: Python 2 pickles of a dict with
  ``data`` (uint8, N × 3,072, same pixel order) and ``labels`` (N ints), keys ``bytes`` or
  ``str``. Each is checked against torchvision's MD5 and read with
  :class:`~luring.data.safe_pickle.RestrictedUnpickler`, never plain ``pickle``.

``train`` is the five data batches concatenated in order (50,000 images), ``test`` the test
batch (10,000).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from luring.data.files import missing_error, verify_checksum
from luring.data.registry import data_root
from luring.data.safe_pickle import safe_load
from luring.errors import LuringError

__all__ = ["BIN_DIR", "PY_DIR", "CLASSES", "batch_names", "read_bin_batch", "read_py_batch",
           "locate_cifar10", "load_cifar10"]

BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
RECORD = 1 + 3 * 32 * 32


def batch_names(split: str) -> tuple[str, ...]:
    """Base names of ``split``'s python batches (the binary ones add ``.bin``)."""
    return tuple(f"data_batch_{i}" for i in range(1, 6)) if split == "train" else ("test_batch",)


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASSES)):
        bad = int(labels.max()) if int(labels.max()) >= len(CLASSES) else int(labels.min())
        raise LuringError(f"{path} has label {bad}, outside [0, 10); the file is not a CIFAR-10 "
                          "batch (CIFAR-100?) or is corrupt")


def read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary batch. Returns uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise LuringError(f"cannot read {path} ({exc.strerror or exc})") from None
    if raw.size == 0 or raw.size % RECORD:
        raise LuringError(f"{path} is truncated or not a CIFAR-10 binary batch ({raw.size} bytes, "
                          f"not a whole number of {RECORD}-byte records); delete it and download "
                          "it again")
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    _check_labels(labels, path)
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _get(d: dict, key: str) -> object:
    for k in (key, key.encode("latin1")):
        if k in d:
            return d[k]
    raise KeyError(key)


def read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a python batch with the restricted unpickler. Returns uint8 images (N, 3, 32, 32)
    and int64 labels (N,)."""
    try:
        with open(path, "rb") as fh:
            obj = safe_load(fh, source=str(path))
    except OSError as exc:
        raise LuringError(f"cannot read {path} ({exc.strerror or exc})") from None
    try:
        if not isinstance(obj, dict):
            raise TypeError(f"a {type(obj).__name__}, not a dict")
        data, labels_obj = _get(obj, "data"), _get(obj, "labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == RECORD - 1):
            raise TypeError("'data' is not a uint8 N×3072 array")
        labels = np.asarray(labels_obj)
        if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"'labels' does not hold {len(data)} integers")
    except (KeyError, TypeError) as exc:
        raise LuringError(f"{path} is not a CIFAR-10 python batch ({exc}); delete it and "
                          "download it again") from None
    labels = labels.astype(np.int64)
    _check_labels(labels, path)
    return data.reshape(-1, 3, 32, 32), labels


def locate_cifar10(split: str, root: Path) -> list[Path]:
    """The batch files of ``split`` under ``root``: the binary batches if all are present,
    else the python batches (verified against their MD5s); else a LuringError."""
    names = batch_names(split)
    bin_files = [root / BIN_DIR / f"{n}.bin" for n in names]
    if all(p.is_file() for p in bin_files):
        return bin_files
    py_files = [root / PY_DIR / n for n in names]
    if all(p.is_file() for p in py_files):
        for p in py_files:
            verify_checksum(p, "cifar10", root)
        return py_files
    stem = "data_batch_{1..5}" if split == "train" else "test_batch"
    expected = [f"{BIN_DIR}/{stem}.bin", f"or {PY_DIR}/{stem}"]
    raise missing_error("cifar10", split, root, expected, [root])


def load_cifar10(split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 ``split``. Returns images float32 (N, 3, 32, 32) in [0, 1] and labels
    int64 (N,) in [0, 10)."""
    files = locate_cifar10(split, data_root(root))
    reader = read_bin_batch if files[0].suffix == ".bin" else read_py_batch
    parts = [reader(p) for p in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return x, torch.from_numpy(labels)
