"""Images that stay on disk until a batch of them is needed: a tensor-like view of a data set
read through its ``Dataset`` (image folders, ImageNet), for the defense trainer and the clean
evaluation, which only ever take chunks (``x[i:j]``), index batches (``x[idx]``) and subsets
(``x.take(idx)``) of their images.

``LazyImages(dataset)`` has ``len()``, ``shape`` (N, C, H, W), ``dtype`` (float32),
``device`` (CPU) and ``dim()`` like a tensor; indexing with a slice or an int64 tensor decodes
those images (float32 in [0, 1], by the data set's decoder) and returns a real tensor, read by
``workers`` loader processes when the chunk is large enough. ``labels()`` reads the labels
from the file list without decoding; ``fingerprint()`` names the view by its files (relative
paths and sizes), not by decoding every image. Nothing is cached: memory stays at one chunk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from luring.errors import LuringError

__all__ = ["LazyImages", "is_lazy", "subset"]


def is_lazy(x: Any) -> bool:
    """True for a :class:`LazyImages` view (images decoded when indexed)."""
    return isinstance(x, LazyImages)


def subset(images: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of ``images``: a lazy sub-view of a :class:`LazyImages`, else
    ``images[index]`` (a tensor)."""
    return images.take(index) if is_lazy(images) else images[index]


class LazyImages:
    """A view of ``dataset``'s images (items (float32 (C, H, W) in [0, 1], label), with a
    ``shape`` (C, H, W) attribute), restricted to ``index`` (int64, default all) in that order.
    ``workers``: loader processes used for chunks of at least 64 images (0: this process)."""

    lazy = True  # luring.utils.check_images: the decoder guarantees float32 in [0, 1]
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, dataset: Dataset, index: torch.Tensor | None = None,
                 workers: int = 0) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        shape = getattr(dataset, "shape", None)
        if shape is None:
            if not n:
                raise LuringError("an empty data set without a shape cannot be read lazily")
            shape = tuple(dataset[0][0].shape)
        self.dataset, self.workers = dataset, int(workers)
        self.index = torch.arange(n) if index is None else torch.as_tensor(index).long()
        if len(self.index) and (int(self.index.min()) < 0 or int(self.index.max()) >= n):
            raise LuringError(f"indices outside the data set's {n} images")
        self.item_shape = tuple(int(v) for v in shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.item_shape))

    def __len__(self) -> int:
        return len(self.index)

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def take(self, index: torch.Tensor) -> LazyImages:
        """The sub-view of rows ``index`` (int64 tensor of positions in this view)."""
        return LazyImages(self.dataset, self.index[torch.as_tensor(index).long()], self.workers)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            rows = self.index[key]
        elif isinstance(key, torch.Tensor) and key.dim() == 1:
            rows = self.index[key.long()]
        elif isinstance(key, int):
            return self._read(self.index[key:key + 1] if key >= 0 else
                              self.index[len(self) + key:len(self) + key + 1])[0]
        else:
            raise LuringError(f"lazy images are indexed by a slice, an int or a 1-D index "
                              f"tensor, not {type(key).__name__}")
        return self._read(rows)

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(rows), *self.item_shape), dtype=torch.float32)
        if self.workers and len(rows) >= 64:
            from luring.data.imagefolder import make_loader

            i = 0
            sub = Subset(self.dataset, rows.tolist())
            sub.shape = self.item_shape  # type: ignore[attr-defined]
            for xb, _ in make_loader(sub, 64, self.workers):
                out[i:i + len(xb)] = xb
                i += len(xb)
            return out
        for j, r in enumerate(rows.tolist()):
            out[j] = self.dataset[r][0]
        return out

    def labels(self) -> torch.Tensor:
        """The labels of the view, int64 (N,), from the data set's file list (``samples``)
        when it has one, else by reading the items."""
        samples = getattr(self.dataset, "samples", None)
        if samples is not None:
            return torch.tensor([int(samples[i][1]) for i in self.index.tolist()],
                                dtype=torch.long)
        return torch.tensor([int(self.dataset[i][1]) for i in self.index.tolist()],
                            dtype=torch.long)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the view's shape and, per image, its file's path relative to the
        data set's root and its size in bytes (the data set's items for one without files)."""
        h = hashlib.sha256(repr(tuple(self.shape)).encode())
        samples = getattr(self.dataset, "samples", None)
        root = Path(getattr(self.dataset, "root", "") or "")
        for i in self.index.tolist():
            if samples is None:
                h.update(self.dataset[i][0].numpy().tobytes())
                continue
            p = Path(samples[i][0])
            try:
                rel = os.path.relpath(p, root) if root != Path("") else p.name
                h.update(f"{rel}\0{p.stat().st_size}\0{samples[i][1]}\n".encode())
            except OSError as exc:
                raise LuringError(f"{p} cannot be read ({exc.strerror or exc})") from None
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images of {'×'.join(map(str, self.item_shape))})"
