"""SVHN (cropped digits) from the official MATLAB files.

Files: ``{train,test}_32x32.mat`` in ``ROOT/svhn/``, ``ROOT/SVHN/`` or ``ROOT`` itself (first
found wins), each checked against its published MD5 (hashed once per process), then read with
:func:`scipy.io.loadmat`. ``X`` is uint8 32 × 32 × 3 × N (height, width, channel, index),
``y`` is N × 1 with values 1-10 where 10 means the digit 0. ``extra_32x32.mat`` is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from luring.data.files import find_file, missing_error, search_dirs, verify_checksum
from luring.data.registry import data_root
from luring.errors import LuringError

__all__ = ["mat_name", "read_svhn_mat", "locate_svhn", "load_svhn"]


def mat_name(split: str) -> str:
    """The ``.mat`` file name of ``split``."""
    return f"{split}_32x32.mat"


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN ``.mat`` file. Returns uint8 images (N, 3, 32, 32) and int64 labels (N,)
    in [0, 10) (label 10 mapped to 0)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error; scipy's own OSErrors have no errno
            raise LuringError(f"cannot read {path} ({exc.strerror or exc})") from None
        raise LuringError(f"{path} is truncated or not a MATLAB file ({exc}); delete it and "
                          "download it again") from None
    except Exception as exc:  # scipy raises many types for damaged files
        raise LuringError(f"{path} is truncated or not a MATLAB file ({type(exc).__name__}: "
                          f"{exc}); delete it and download it again") from None
    if "X" not in mat or "y" not in mat:
        raise LuringError(f"{path} lacks the variables X and y; it is not an SVHN 32x32 file")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise LuringError(f"{path}: X has shape {x.shape}, expected 32×32×3×N")
    if x.shape[3] != len(y):
        raise LuringError(f"{path} has {x.shape[3]} images but {len(y)} labels")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255:
            raise LuringError(f"{path}: X has dtype {x.dtype}, expected uint8 pixels in 0-255")
        x = x.astype(np.uint8)
    bad_labels = not np.issubdtype(y.dtype, np.number) or (len(y) > 0 and bool(
        y.min() < 0 or y.max() > 10 or np.any(y != np.round(y))))
    if bad_labels:
        raise LuringError(f"{path}: y must hold integer labels 1-10 (10 meaning digit 0)")
    labels = y.astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def locate_svhn(split: str, root: Path) -> list[Path]:
    """``[ROOT/.../{split}_32x32.mat]``, verified against its MD5; else a LuringError."""
    dirs = search_dirs("svhn", root)
    p = find_file(dirs, (mat_name(split),))
    if p is None:
        raise missing_error("svhn", split, root, [mat_name(split)], dirs)
    verify_checksum(p, "svhn", root)
    return [p]


def load_svhn(split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load SVHN ``split``. Returns images float32 (N, 3, 32, 32) in [0, 1] and labels int64
    (N,) in [0, 10)."""
    (path,) = locate_svhn(split, data_root(root))
    images, labels = read_svhn_mat(path)
    return torch.from_numpy(images.astype(np.float32)).div_(255.0), torch.from_numpy(labels)
