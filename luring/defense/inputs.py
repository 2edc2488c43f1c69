"""Reading the inputs of ``luring detect``: image files and arrays, as float32 NCHW in [0, 1].

Accepted inputs:

* PNG or JPEG files (``.png``, ``.jpg``, ``.jpeg``): one image each, converted with Pillow to
  the model's channel count (grey ``L`` for 1 channel, ``RGB`` for 3; 16-bit grey PNGs, modes
  ``I;16``/``I``, are scaled by 1/65535, not clipped to 8 bits). The size must be the model's
  exactly (no silent resizing): a wrong size is a LuringError naming the expected one.
* NumPy arrays (``.npy``, read with ``allow_pickle=False``; ``.npz`` with one array, or an
  array named ``x`` or ``images``): shape (N, C, H, W), or (N, H, W) for 1-channel models;
  dtype uint8 (0-255, divided by 255) or float (values in [0, 1]). An empty array (no
  images) is a LuringError naming the file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from luring.errors import LuringError
from luring.utils import check_images

__all__ = ["read_inputs", "array_to_images", "IMAGE_SUFFIXES", "ARRAY_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey (Pillow's modes)


def array_to_images(arr: np.ndarray, input_shape: tuple[int, int, int], source: str
                    ) -> torch.Tensor:
    """Convert an array (N, C, H, W) or (N, H, W), uint8 0-255 or float in [0, 1], into
    float32 (N, C, H, W) images; shape and range are checked against ``input_shape``."""
    c, h, w = input_shape
    if arr.size == 0:
        raise LuringError(f"{source} is empty (an array of shape {tuple(arr.shape)}): it holds "
                          "no images; pass a file with at least one image")
    if arr.dtype == np.uint8:
        data = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        data = arr.astype(np.float32)
    else:
        raise LuringError(f"{source} has dtype {arr.dtype}; use uint8 (0-255) or float "
                          "values in [0, 1]")
    if data.ndim == 3 and c == 1:
        data = data[:, None]
    if data.ndim != 4 or tuple(data.shape[1:]) != (c, h, w):
        want = f"(N, {c}, {h}, {w})" + (f" or (N, {h}, {w})" if c == 1 else "")
        raise LuringError(f"{source} has shape {tuple(arr.shape)}; this defense expects "
                          f"{want}")
    return check_images(torch.from_numpy(np.ascontiguousarray(data)), name=source)


def _read_array(p: Path) -> np.ndarray:
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise LuringError(f"{p} cannot be read without unpickling ({exc}); save a plain "
                          "numeric array") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise LuringError(f"{p} is not a readable NumPy file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = list(loaded.keys())
        key = keys[0] if len(keys) == 1 else next((k for k in ("x", "images") if k in keys),
                                                  None)
        if key is None:
            raise LuringError(f"{p} holds no arrays; save the images in it" if not keys else
                              f"{p} holds arrays {keys}; keep one, or name it 'x' or 'images'")
        try:
            return loaded[key]
        except ValueError as exc:
            raise LuringError(f"{p}: array {key!r} cannot be read without unpickling "
                              f"({exc})") from None


def _read_image(p: Path, input_shape: tuple[int, int, int]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_shape
    if c not in (1, 3):
        raise LuringError(f"image files need a 1- or 3-channel model, this one has {c}; "
                          "pass a .npy array instead")
    try:
        with Image.open(p) as img:
            img.load()
            size = img.size
            if img.mode in _WIDE_GREY:  # 16-bit grey: 0-65535 (convert("L") would clip)
                grey = np.clip(np.asarray(img, dtype=np.float64) / 65535.0, 0.0, 1.0)
                arr = grey.astype(np.float32)
                arr = arr if c == 1 else np.repeat(arr[..., None], 3, axis=2)
            else:
                arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LuringError(f"{p} is not a readable PNG/JPEG image ({exc})") from None
    if size != (w, h):
        raise LuringError(f"{p} is {size[0]}x{size[1]} pixels; this defense expects "
                          f"{w}x{h} (width x height) images: resize it first")
    arr = arr[None, None] if c == 1 else arr.transpose(2, 0, 1)[None]
    return array_to_images(arr, input_shape, str(p))


def read_inputs(paths: list[str | os.PathLike], input_shape: tuple[int, int, int]
                ) -> list[tuple[str, torch.Tensor]]:
    """Read every input; returns ``[(path as given, images float32 (n, C, H, W) in [0, 1])]``
    in order. Raises a one-line LuringError naming the file on any problem."""
    out: list[tuple[str, torch.Tensor]] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_file():
            raise LuringError(f"input {p} does not exist or is not a file")
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            out.append((str(raw), _read_image(p, input_shape)))
        elif suffix in ARRAY_SUFFIXES:
            out.append((str(raw), array_to_images(_read_array(p), input_shape, str(p))))
        else:
            raise LuringError(f"input {p} has an unknown type; give .png, .jpg, .jpeg, .npy or "
                              ".npz files")
    return out
