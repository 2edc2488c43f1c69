"""Folders of PNG/JPEG images, read lazily (torchvision's ``ImageFolder`` layout).

Layout: ``ROOT/CLASS/**/*.png|jpg|jpeg`` (any case, e.g. ImageNet's ``.JPEG``): the class
sub-folders sorted by name are labels 0..K-1 (torchvision's rule; folders whose name starts
with ``.`` are ignored, and so are files of other types). A flat folder ``ROOT/*.png`` read
with ``labelled=False`` gives unlabelled images (label -1; sub-folders are read too).

Decoding (Pillow): the image is converted to ``L`` (1 channel) or ``RGB`` (3; alpha is
dropped, 16-bit grey is scaled by 1/65535), then brought to the stated size H×W by
``resize``:

* ``"cover"`` (default): scaled (bilinear) by the smallest factor that makes it cover H×W,
  then centre-cropped; an image already H×W is left untouched;
* an integer S: the shorter side scaled to S (the longer one to ``int(S·long/short)``), then
  centre-cropped to H×W — torchvision's ``Resize(S)`` + ``CenterCrop``, e.g. S = 256 for
  ImageNet's 224×224 evaluation;
* ``None``: no resampling; an image of another size is a LuringError naming the file.

Items are float32 (C, H, W) in [0, 1] and an int label. An unreadable or corrupt file is a
LuringError naming it, also when a multi-worker :func:`make_loader` reads it (the worker
reports the index and the main process raises the error).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from luring.errors import LuringError
from luring.utils import make_generator

__all__ = ["IMAGE_SUFFIXES", "ImageFolderDataset", "ImageLoader", "decode_image",
           "find_classes", "make_loader", "load_imagefolder", "dataset_to_tensors",
           "check_memory", "MEMORY_ENV"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MEMORY_ENV = "LURING_MAX_IN_MEMORY_GB"
DEFAULT_MEMORY_GB = 4.0


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _short(paths: Sequence[Any], n: int = 3) -> str:
    names = ", ".join(str(p) for p in paths[:n])
    return names + (f" and {len(paths) - n} more" if len(paths) > n else "")


def find_classes(directory: str | os.PathLike) -> tuple[str, ...]:
    """The class sub-folders of ``directory``, sorted by name (hidden ones skipped)."""
    d = Path(directory)
    try:
        return tuple(sorted(e.name for e in os.scandir(d)
                            if e.is_dir() and not e.name.startswith(".")))
    except OSError as exc:
        raise LuringError(f"cannot list image folder {d} ({exc.strerror or exc}); check the "
                          "path (--data-dir)") from None


def _walk_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursively), sorted by path."""
    out: list[Path] = []
    for base, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(base) / f for f in sorted(files) if _is_image(f)]
    return out


def _scan(root: Path, labelled: bool, classes: Sequence[str] | None
          ) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """(samples [(path, label)], classes) of folder ``root``; malformed trees raise."""
    if not root.is_dir():
        raise LuringError(f"image folder {root} does not exist or is not a directory; check "
                          "--data-dir and the layout (ROOT/CLASS/*.png)")
    if not labelled:
        files = _walk_images(root)
        if not files:
            raise LuringError(f"image folder {root} holds no PNG/JPEG images")
        return [(p, -1) for p in files], tuple(classes or ())
    present = find_classes(root)
    loose = sorted(e.name for e in os.scandir(root) if e.is_file() and _is_image(e.name))
    if not present:
        what = "images but no class sub-folders" if loose else "no class sub-folders"
        raise LuringError(f"image folder {root} holds {what}; put each class's images in "
                          "its own folder (ROOT/CLASS/*.png), or read a flat folder as "
                          "unlabelled")
    if loose:
        raise LuringError(f"image folder {root} has images outside the class folders "
                          f"({_short(loose)}); move them into a class folder")
    names = tuple(classes) if classes is not None else present
    index = {c: i for i, c in enumerate(names)}
    unknown = [c for c in present if c not in index]
    if unknown:
        raise LuringError(f"image folder {root} has class folders that are not among the "
                          f"{len(names)} known classes: {_short(unknown)}; remove them")
    samples: list[tuple[Path, int]] = []
    for c in present:
        files = _walk_images(root / c)
        if not files:
            raise LuringError(f"class folder {root / c} holds no PNG/JPEG images; add some "
                              "or remove the folder")
        samples += [(p, index[c]) for p in files]
    return samples, names


def _crop_box(w0: int, h0: int, w: int, h: int) -> tuple[int, int, int, int]:
    top, left = int(round((h0 - h) / 2.0)), int(round((w0 - w) / 2.0))
    return left, top, left + w, top + h


def _fit(img: Any, path: Path, size: tuple[int, int], resize: int | str | None) -> Any:
    from PIL import Image

    h, w = size
    w0, h0 = img.size
    if (w0, h0) == (w, h):
        return img
    if resize is None:
        raise LuringError(f"{path} is {w0}×{h0} pixels (W×H), not the {w}×{h} this image "
                          "folder is read at; resize the file, or read the folder with "
                          "resize='cover'")
    if resize == "cover":
        scale = max(h / h0, w / w0)
        new = (max(w, round(w0 * scale)), max(h, round(h0 * scale)))
    else:
        s = int(resize)
        new = (s, int(s * h0 / w0)) if w0 <= h0 else (int(s * w0 / h0), s)
    if new != (w0, h0):
        img = img.resize(new, Image.BILINEAR)
    return img.crop(_crop_box(*img.size, w, h))


def decode_image(path: str | os.PathLike, size: tuple[int, int], channels: int = 3,
                 resize: int | str | None = "cover") -> torch.Tensor:
    """Read image file ``path`` as float32 (channels, H, W) in [0, 1] at ``size`` = (H, W)
    (see the module docstring for ``resize``). Unreadable, corrupt or (with ``resize=None``)
    wrongly sized files are a LuringError naming the file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0, mode="F")
            elif img.mode != ("L" if channels == 1 else "RGB"):
                img = img.convert("L" if channels == 1 else "RGB")
            img = _fit(img, p, size, resize)
            arr = np.asarray(img, dtype=np.float32)
    except LuringError:
        raise
    except FileNotFoundError:
        raise LuringError(f"image {p} does not exist (was it removed after the folder was "
                          "listed?)") from None
    except PermissionError:
        raise LuringError(f"image {p} cannot be opened (permission denied); fix its "
                          "permissions") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LuringError(f"cannot read image {p} ({why}); it is corrupt or not a PNG/JPEG: "
                          "replace or delete it") from None
    if img.mode != "F":
        arr = arr / 255.0
    arr = np.clip(arr, 0.0, 1.0)
    if arr.ndim == 2:
        arr = arr[None] if channels == 1 else np.repeat(arr[None], channels, axis=0)
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _check_resize(resize: int | str | None, size: tuple[int, int]) -> int | str | None:
    if resize is None or resize == "cover":
        return resize
    if isinstance(resize, str) and resize in ("none", "exact"):
        return None
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < max(size):
        raise LuringError(f"resize must be 'cover', None or a shorter side ≥ {max(size)} "
                          f"pixels for {size[0]}×{size[1]} images, got {resize!r}")
    return resize


class ImageFolderDataset(Dataset):
    """A folder of images read lazily. ``root``: the folder; ``size``: (H, W) of the items;
    ``channels``: 1 or 3; ``labelled``: class sub-folders (True) or a flat folder of
    unlabelled images (False, label -1); ``classes``: the label order (default: the sorted
    sub-folders; every folder must be in it); ``resize``: see the module docstring.
    Attributes: ``samples`` [(path, label)], ``classes``, ``shape`` (C, H, W).
    ``dataset[i]`` = (float32 (C, H, W) in [0, 1], int label)."""

    def __init__(self, root: str | os.PathLike, size: tuple[int, int] = (224, 224),
                 channels: int = 3, labelled: bool = True, classes: Sequence[str] | None = None,
                 resize: int | str | None = "cover") -> None:
        if channels not in (1, 3):
            raise LuringError(f"image folders are read with 1 or 3 channels, not {channels}")
        h, w = (int(v) for v in size)
        if h < 1 or w < 1:
            raise LuringError(f"image size must be at least 1×1, got {h}×{w}")
        self.root, self.size, self.channels = Path(root), (h, w), channels
        self.labelled = labelled
        self.resize = _check_resize(resize, self.size)
        self.samples, self.classes = _scan(self.root, labelled, classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return decode_image(path, self.size, self.channels, self.resize), label


class _Guarded(Dataset):
    """``dataset[i]`` as (image, label, i, ok): a LuringError (an unreadable file) becomes
    ok = False with a blank image, so that a worker never has to pickle it."""

    def __init__(self, dataset: Dataset, shape: tuple[int, ...]) -> None:
        self.dataset, self.shape = dataset, shape

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, bool]:
        try:
            x, y = self.dataset[index]
        except LuringError:
            return torch.zeros(self.shape), -1, index, False
        return x, int(y), index, True


class ImageLoader:
    """Batches ``(images float32 (B, C, H, W) in [0, 1], labels int64 (B,))`` of a data set,
    from :func:`make_loader`. ``len()`` is the number of batches; ``dataset`` the source."""

    def __init__(self, dataset: Dataset, loader: DataLoader) -> None:
        self.dataset, self.loader = dataset, loader
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, index, ok in self.loader:
            if not bool(ok.all()):
                bad = int(index[~ok][0])
                self.dataset[bad]  # raises the file's LuringError here, in the main process
                raise LuringError(f"item {bad} of the data set could not be read in a loader "
                                  "worker; rerun with workers=0 to see why")
            yield x, y.long()


def make_loader(dataset: Dataset, batch_size: int = 64, workers: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> ImageLoader:
    """A :class:`ImageLoader` over ``dataset`` (items (image (C, H, W), label)), read by
    ``workers`` processes (0: in this process). With ``shuffle`` every pass is a fresh order
    drawn from a generator seeded with ``seed`` (also the workers' seeds), so the sequence of
    batches is the same run to run."""
    if batch_size < 1 or workers < 0:
        raise LuringError(f"batch size must be ≥ 1 and workers ≥ 0, got {batch_size} and "
                          f"{workers}")
    first = dataset[0][0] if len(dataset) else torch.zeros(0)  # type: ignore[arg-type]
    shape = tuple(getattr(dataset, "shape", None) or first.shape)
    loader = DataLoader(_Guarded(dataset, shape), batch_size=batch_size, shuffle=shuffle,
                        num_workers=workers, generator=make_generator(seed),
                        drop_last=drop_last, pin_memory=pin_memory,
                        persistent_workers=False)
    return ImageLoader(dataset, loader)


def check_memory(n: int, shape: Sequence[int], what: str) -> None:
    """Raise a LuringError when ``n`` float32 images of ``shape`` exceed the in-memory limit
    (``$LURING_MAX_IN_MEMORY_GB``, default 4 GB), saying how big they are."""
    try:
        limit = float(os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_GB)
    except ValueError:
        raise LuringError(f"${MEMORY_ENV} must be a number of GB, got "
                          f"{os.environ.get(MEMORY_ENV)!r}") from None
    need = n * int(np.prod(shape)) * 4 / 1e9
    if need > limit:
        dims = "×".join(str(int(v)) for v in shape)
        raise LuringError(f"{what}: {n:,} images of {dims} need {need:.3g} GB as float32, more "
                          f"than the {limit:g} GB allowed in memory; read it lazily with "
                          "luring.data.open_dataset and luring.data.imagefolder.make_loader, "
                          f"or raise ${MEMORY_ENV}")


def load_imagefolder(root: str | os.PathLike, size: tuple[int, int] = (224, 224),
                     channels: int = 3, labelled: bool = True,
                     classes: Sequence[str] | None = None, resize: int | str | None = "cover",
                     workers: int = 0, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """An image folder in memory: images float32 (N, C, H, W) in [0, 1] and labels int64
    (N,) (-1 when unlabelled), in the folder's sorted order. Refuses (LuringError) when the
    images would exceed the in-memory limit (see :func:`check_memory`)."""
    ds = ImageFolderDataset(root, size, channels, labelled, classes, resize)
    return dataset_to_tensors(ds, f"image folder {ds.root}", workers, batch_size)


def dataset_to_tensors(ds: ImageFolderDataset, what: str, workers: int = 0,
                       batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of ``ds`` in memory (see :func:`load_imagefolder`)."""
    check_memory(len(ds), ds.shape, what)
    x = torch.empty((len(ds), *ds.shape), dtype=torch.float32)
    y = torch.empty(len(ds), dtype=torch.long)
    i = 0
    for xb, yb in make_loader(ds, batch_size, workers):
        x[i:i + len(xb)], y[i:i + len(xb)] = xb, yb
        i += len(xb)
    return x, y
