"""MNIST and Fashion-MNIST from IDX files, parsed here (no torchvision).

Files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, gzipped (``.gz``) or not, in
torchvision's layout ``ROOT/MNIST/raw/`` and ``ROOT/FashionMNIST/raw/`` (Fashion-MNIST also in
``/usr/share/datasets/fashion-mnist/``, Debian's ``dataset-fashion-mnist``, searched after the
data root). In each directory the ``.gz`` file is preferred. Checks (see
:func:`luring.data.files.verify_checksum`): a Debian copy against Debian's digest list, any
other ``.gz`` file against its published MD5 or the MD5 of its decompressed content, an
uncompressed file against the content MD5 where it is known (Fashion-MNIST), else
structurally only.

IDX format: a big-endian header, magic ``2051`` (0x00000803: unsigned bytes, 3 dimensions)
then N, rows, cols for images; magic ``2049`` (unsigned bytes, 1 dimension) then N for labels;
then the values. The file length must match the header exactly, image and label counts must
agree, images must be 28×28 and labels in [0, 10).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from luring.data.files import (
    DISTRIBUTIONS,
    find_file,
    missing_error,
    search_dirs,
    verify_checksum,
)
from luring.data.registry import data_root
from luring.errors import LuringError

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "idx_names", "make_locator",
           "make_loader", "load_idx_pair"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_PREFIX = {"train": "train", "test": "t10k"}


def idx_names(split: str) -> tuple[str, str]:
    """Base names (without ``.gz``) of the image and label files of ``split``."""
    pre = _PREFIX[split]
    return f"{pre}-images-idx3-ubyte", f"{pre}-labels-idx1-ubyte"


def _read_bytes(path: Path) -> bytearray:
    """The (decompressed) bytes of ``path``, writable so that arrays over them are too."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return bytearray(fh.read())
        return bytearray(path.read_bytes())
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise LuringError(f"{path} is a truncated or corrupt gzip file ({exc}); delete it and "
                          "download it again") from None
    except OSError as exc:
        raise LuringError(f"cannot read {path} ({exc.strerror or exc})") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse the IDX file at ``path`` (gzipped if it ends in ``.gz``), whose magic number must
    be ``magic`` (2051 images, 2049 labels). Returns uint8 of shape (N, rows, cols) or (N,)."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise LuringError(f"{path} is truncated ({len(data)} bytes; no IDX header)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise LuringError(f"{path} is not an IDX {kind} file: magic number {got}, expected "
                          f"{magic}; check the file name or download it again")
    if len(data) < header:
        raise LuringError(f"{path} is truncated ({len(data)} bytes, header needs {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise LuringError(f"{path} is {what} ({len(data)} bytes, expected {expected} for "
                          f"dimensions {dims}); delete it and download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_pair(images_path: Path, labels_path: Path, num_classes: int = 10
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an image/label IDX pair. Returns images float32 (N, 1, 28, 28) in [0, 1] and
    labels int64 (N,) in [0, num_classes)."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise LuringError(f"{images_path} holds {images.shape[1]}×{images.shape[2]} images, "
                          "expected 28×28")
    if len(images) != len(labels):
        raise LuringError(f"{images_path} has {len(images)} images but {labels_path} has "
                          f"{len(labels)} labels; the files do not belong together")
    if len(labels) and int(labels.max()) >= num_classes:
        raise LuringError(f"{labels_path} has label {int(labels.max())}, outside "
                          f"[0, {num_classes}); the file is not a {num_classes}-class label file")
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels).to(torch.int64)
    return x, y


def make_locator(dataset: str):
    """``locate(split, root) -> [images_path, labels_path]`` for an IDX data set. Each file is
    looked for in the search directories in order, ``NAME.gz`` before ``NAME``; a checksum-listed
    file is verified."""

    def locate(split: str, root: Path) -> list[Path]:
        dirs = search_dirs(dataset, root)
        found: list[Path] = []
        missing: list[str] = []
        for base in idx_names(split):
            p = find_file(dirs, (base + ".gz", base))
            if p is None:
                missing.append(f"{base}[.gz]")
            else:
                found.append(p)
        if missing:
            packages = [d.package for d in DISTRIBUTIONS.get(dataset, ())]
            hint = f"or install the package {' or '.join(packages)}" if packages else ""
            raise missing_error(dataset, split, root, missing, dirs, hint)
        for p in found:
            verify_checksum(p, dataset, root)
        return found

    return locate


def make_loader(dataset: str):
    """``loader(split, root) -> (images, labels)`` for an IDX data set (see
    :func:`load_idx_pair` for shapes and ranges)."""
    locate = make_locator(dataset)

    def loader(split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
        images_path, labels_path = locate(split, data_root(root))
        return load_idx_pair(images_path, labels_path)

    return loader
