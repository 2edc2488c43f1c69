"""Finding data set files on disk and checking them against their published checksums.

Checksums: :data:`CHECKSUMS` maps a data set name to ``{file name: MD5}`` for the files whose
MD5 is published (torchvision's resource tables, the CIFAR-10 and SVHN download pages): the
MNIST / Fashion-MNIST ``.gz`` files, both CIFAR-10 tarballs, the six CIFAR-10 python batches
and the SVHN ``.mat`` files. A file in the table is hashed when it is loaded or downloaded;
the MD5 is cached per process, keyed by (path, size, mtime), so a file is hashed at most once
per process unless it changes. Files with no published checksum (uncompressed IDX files,
CIFAR-10 ``.bin`` batches) are validated structurally by their readers instead.
Tests (or users with mirrors) may pass their own table with ``checksums=`` or patch
:data:`CHECKSUMS`; the table is read at call time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from luring.data.registry import get_spec
from luring.errors import LuringError

__all__ = ["CHECKSUMS", "md5sum", "verify_checksum", "expected_md5", "search_dirs",
           "find_file", "missing_error", "download_command"]

_MNIST_GZ = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": dict(zip(_MNIST_GZ, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"), strict=True)),
    "fashion-mnist": dict(zip(_MNIST_GZ, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"), strict=True)),
    "cifar10": {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    },
}

_MD5_CACHE: dict[tuple[str, int, int, int, int], str] = {}


def md5sum(path: str | os.PathLike, *, cache: bool = True) -> str:
    """Hex MD5 of the file at ``path``; with ``cache``, remembered per process by (path,
    inode, size, mtime, ctime), so an unchanged file is hashed once."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if cache and key in _MD5_CACHE:
            return _MD5_CACHE[key]
        h = hashlib.md5(usedforsecurity=False)
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise LuringError(f"cannot read {p} ({exc.strerror or exc})") from None
    _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def expected_md5(dataset: str, filename: str,
                 checksums: Mapping[str, str] | None = None) -> str | None:
    """The published MD5 of ``filename`` (a base name) of ``dataset``, or None if unknown."""
    table = checksums if checksums is not None else CHECKSUMS.get(dataset, {})
    return table.get(filename)


def download_command(dataset: str, root: Path | None) -> str:
    """The command that fetches ``dataset`` into ``root``."""
    where = f" --data-dir {root}" if root is not None else ""
    return f"luring data download {dataset}{where}"


def verify_checksum(path: Path, dataset: str, root: Path | None = None,
                    checksums: Mapping[str, str] | None = None) -> bool:
    """Check ``path`` against its published MD5. Returns True if it was checked, False when no
    checksum is known for it; a mismatch is a LuringError naming the file and the fix."""
    expected = expected_md5(dataset, path.name, checksums)
    if expected is None:
        return False
    got = md5sum(path)
    if got != expected.lower():
        raise LuringError(
            f"{path} fails its checksum (md5 {got}, expected {expected}): it is corrupt, "
            f"truncated or not the published file; delete it and run "
            f"`{download_command(dataset, root)}`")
    return True


def search_dirs(dataset: str, root: Path) -> list[Path]:
    """The directories searched for ``dataset``'s files, in order: ``root/SUBDIR`` for each of
    the spec's ``subdirs`` (``""`` meaning ``root`` itself), then its ``extra_dirs``."""
    spec = get_spec(dataset)
    dirs = [root / s if s else root for s in spec.subdirs]
    return dirs + [Path(d) for d in spec.extra_dirs]


def find_file(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first existing regular file ``DIR/NAME``, trying every name in each directory in
    turn (directories first), or None."""
    for d in dirs:
        for n in names:
            p = d / n
            if p.is_file():
                return p
    return None


def missing_error(dataset: str, split: str, root: Path, expected: Sequence[str],
                  dirs: Sequence[Path], hint: str = "") -> LuringError:
    """A one-line error: what was expected, where it was searched, the command that gets it."""
    searched = ", ".join(str(d) for d in dirs)
    extra = f" ({hint})" if hint else ""
    return LuringError(
        f"{dataset} {split} split not found: expected {', '.join(expected)} in one of: "
        f"{searched}; get it with `{download_command(dataset, root)}`{extra}")
