"""The data sets read from image folders: ``imagefolder`` (a user's images) and ``imagenet``
(ILSVRC2012, paper appendix H.1). Both are read with :mod:`luring.data.imagefolder`.

``imagefolder`` (family ``imagefolder``): the data root (``--data-dir``) holds ``train/`` and
``test/`` (or ``val/``), each either class sub-folders (``train/CLASS/*.png``) or a flat folder
of unlabelled images (label -1; enough to train P, whose training reads no label). Labels:
the sorted union of the class folders of both splits. The name states the size the images are
read at: ``imagefolder`` = 3×224×224, ``imagefolder-HxW`` (3 channels) or
``imagefolder-CxHxW`` (C = 1 or 3), e.g. ``imagefolder-1x28x28``; images are scaled to cover
that size and centre-cropped (``resize="cover"``).

``imagenet`` (family ``imagenet``): torchvision's ImageNet layout under the data root,
``imagenet/train/<wnid>/*.JPEG`` (for P) and ``imagenet/val/<wnid>/*.JPEG`` (the test split),
read at 3×224×224 by torchvision's evaluation recipe (shorter side 256, centre crop 224).
Labels: the 1,000 wnids sorted (torchvision's order), or the order of
``imagenet/classes.txt`` / ``imagenet/LOC_synset_mapping.txt`` (one wnid first on each line)
when present, which also lets a tree hold only some of the classes. ImageNet is not
downloadable here: get ILSVRC2012 from image-net.org and sort ``val`` into class folders.

Loading a split into memory refuses (LuringError saying how many GB) past the in-memory limit;
``spec.open(split, root)`` reads it lazily instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from luring.data.imagefolder import ImageFolderDataset, dataset_to_tensors, find_classes
from luring.data.registry import DatasetSpec
from luring.errors import LuringError

__all__ = ["IMAGENET_CLASSES", "IMAGENET_RESIZE", "CLASS_FILES", "imagefolder_spec",
           "imagefolder_name", "imagenet_spec", "imagenet_classes", "imagefolder_classes"]

IMAGENET_CLASSES = 1000
IMAGENET_RESIZE = 256
CLASS_FILES = ("classes.txt", "LOC_synset_mapping.txt")
_NAME = re.compile(r"imagefolder(?:-(?:([0-9]+)x)?([0-9]+)x([0-9]+))?")
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def _workers(n: int) -> int:
    import os

    return 0 if n < 512 else min(4, max(1, (os.cpu_count() or 2) - 1))


# --- imagefolder -----------------------------------------------------------------------


def imagefolder_name(shape: tuple[int, int, int]) -> str:
    """The data set name that reads image folders at ``shape`` (C, H, W)."""
    c, h, w = shape
    return f"imagefolder-{h}x{w}" if c == 3 else f"imagefolder-{c}x{h}x{w}"


def _split_dir(root: Path, split: str) -> Path:
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    want = " or ".join(f"{root / n}/" for n in _SPLIT_DIRS[split])
    raise LuringError(f"imagefolder {split} split not found: expected {want} (class "
                      "sub-folders of PNG/JPEG images, or a flat folder of unlabelled ones); "
                      "point --data-dir at the folder that holds train/ and test/")


def _is_labelled(directory: Path) -> bool:
    return bool(find_classes(directory))


def imagefolder_classes(root: Path) -> tuple[str, ...]:
    """The classes of the image folder at data root ``root``: the sorted union of the class
    sub-folders of its train and test splits (empty when both are flat)."""
    names: set[str] = set()
    for split in ("train", "test"):
        try:
            d = _split_dir(root, split)
        except LuringError:
            continue
        names.update(find_classes(d))
    return tuple(sorted(names))


def _imagefolder_open(shape: tuple[int, int, int]):
    def open_split(split: str, root: Path) -> ImageFolderDataset:
        d = _split_dir(root, split)
        labelled = _is_labelled(d)
        return ImageFolderDataset(d, shape[1:], shape[0], labelled,
                                  imagefolder_classes(root) if labelled else None, "cover")
    return open_split


def _imagefolder_load(shape: tuple[int, int, int], name: str):
    def load(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
        ds = _imagefolder_open(shape)(split, root)
        return dataset_to_tensors(ds, f"{name} {split} split ({ds.root})", _workers(len(ds)))
    return load


def _imagefolder_locate(split: str, root: Path) -> list[Path]:
    return [_split_dir(root, split)]


def imagefolder_spec(name: str) -> DatasetSpec | None:
    """The spec of ``imagefolder[-[C]xHxW]`` names (None for other names); a bad size is a
    LuringError."""
    m = _NAME.fullmatch(name)
    if not m:
        return None
    c = int(m.group(1)) if m.group(1) else 3
    h, w = (int(m.group(2)), int(m.group(3))) if m.group(2) else (224, 224)
    if c not in (1, 3) or h < 2 or w < 2:
        raise LuringError(f"data set {name!r}: image folders are read with 1 or 3 channels "
                          "and at least 2×2 pixels; use imagefolder-HxW or imagefolder-CxHxW")
    shape = (c, h, w)
    return DatasetSpec(
        name=name, family="imagefolder", shape=shape, classes=(),
        loader=_imagefolder_load(shape, name), locate=_imagefolder_locate,
        files=("train/[CLASS/]*.png|jpg", "test/[CLASS/]*.png|jpg"),
        classes_from=imagefolder_classes, open=_imagefolder_open(shape),
        description=f"your images, --data-dir ROOT with train/ and test/ (class folders or "
                    f"flat), read at {c}×{h}×{w}; imagefolder-[C]xHxW for another size")


# --- imagenet ----------------------------------------------------------------------------


def _imagenet_dir(root: Path, split: str) -> Path:
    sub = "train" if split == "train" else "val"
    d = root / "imagenet" / sub
    if not d.is_dir():
        raise LuringError(
            f"imagenet {split} split not found: expected {d}/<wnid>/*.JPEG (torchvision's "
            "ImageNet layout); ImageNet cannot be downloaded by luring: get ILSVRC2012 from "
            "image-net.org, sort val/ into one folder per class and pass --data-dir")
    return d


def _read_class_file(p: Path) -> tuple[str, ...]:
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LuringError(f"cannot read ImageNet class list {p} ({exc})") from None
    names = tuple(line.split()[0] for line in lines if line.strip())
    if len(names) != IMAGENET_CLASSES or len(set(names)) != len(names):
        raise LuringError(f"{p} lists {len(set(names))} distinct classes, ImageNet has "
                          f"{IMAGENET_CLASSES}: one wnid per line, first on the line")
    return names


def imagenet_classes(root: Path) -> tuple[str, ...]:
    """The 1,000 wnids in label order: from ``root/imagenet/classes.txt`` (or
    ``LOC_synset_mapping.txt``) when present, else the sorted class folders of the val (or
    train) split, which must then number 1,000."""
    base = root / "imagenet"
    for name in CLASS_FILES:
        if (base / name).is_file():
            return _read_class_file(base / name)
    for split in ("test", "train"):
        try:
            d = _imagenet_dir(root, split)
        except LuringError:
            continue
        found = find_classes(d)
        if len(found) != IMAGENET_CLASSES:
            raise LuringError(
                f"{d} has {len(found)} class folders, ImageNet has {IMAGENET_CLASSES}: add "
                f"the missing ones, or give the label order in {base / CLASS_FILES[0]} (one "
                "wnid per line, e.g. LOC_synset_mapping.txt)")
        return found
    _imagenet_dir(root, "test")  # raises the not-found error
    raise AssertionError("unreachable")  # pragma: no cover


def _imagenet_open(split: str, root: Path) -> ImageFolderDataset:
    d = _imagenet_dir(root, split)
    return ImageFolderDataset(d, (224, 224), 3, True, imagenet_classes(root), IMAGENET_RESIZE)


def _imagenet_load(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    ds = _imagenet_open(split, root)
    return dataset_to_tensors(ds, f"imagenet {split} split ({ds.root})", _workers(len(ds)))


def imagenet_spec() -> DatasetSpec:
    """The ``imagenet`` data set (see the module docstring)."""
    return DatasetSpec(
        name="imagenet", family="imagenet", shape=(3, 224, 224),
        classes=tuple(str(i) for i in range(IMAGENET_CLASSES)),
        loader=_imagenet_load, locate=lambda split, root: [_imagenet_dir(root, split)],
        files=("imagenet/train/<wnid>/*.JPEG", "imagenet/val/<wnid>/*.JPEG"),
        subdirs=("imagenet",), classes_from=imagenet_classes, open=_imagenet_open,
        description="ImageNet ILSVRC2012 (not downloadable): ROOT/imagenet/{train,val}/<wnid>/, "
                    "1,000 classes, read at 3×224×224 (resize 256, centre crop)")
