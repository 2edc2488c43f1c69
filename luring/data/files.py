"""Finding data set files on disk and checking them against their published checksums.

Checksums: :data:`CHECKSUMS` maps a data set name to ``{file name: MD5}`` for the files whose
MD5 is published (torchvision's resource tables, the CIFAR-10 and SVHN download pages): the
MNIST / Fashion-MNIST ``.gz`` files, both CIFAR-10 tarballs, the six CIFAR-10 python batches
and the SVHN ``.mat`` files. :data:`CONTENT_CHECKSUMS` maps a data set name to ``{IDX file
name without .gz: MD5 of the decompressed content}`` where that content is known (the four
Fashion-MNIST files, hashed from the published data): a ``.gz`` file whose own bytes differ
from the published ones (a re-compressed copy) is accepted when its content matches, and an
uncompressed IDX file is checked against it. MNIST's content digests are not recorded (no
copy of the files was at hand to hash them), so its uncompressed files are validated
structurally only, like the other files with no known checksum (CIFAR-10 ``.bin`` batches).

Distribution copies: :data:`DISTRIBUTIONS` lists, per data set, where an operating-system
package installs its files (Debian's ``dataset-fashion-mnist``: ``/usr/share/datasets/
fashion-mnist/``) and the package manager's digest list (``/var/lib/dpkg/info/PACKAGE.md5sums``:
lines ``MD5  PATH``, PATH relative to ``/``). Those directories are searched after the data
root's, and a file found there is checked against the digest list when the list names it
(else, like any other file, against the published or the content checksum). Debian
re-compresses the ``.gz`` files, so their MD5 is not the published one while their content is.

A file is hashed when it is loaded or downloaded; MD5s are cached per process, keyed by (path,
inode, size, mtime, ctime), so a file is hashed at most once per process unless it changes.
Tests (or users with mirrors) may pass their own table with ``checksums=`` or patch
:data:`CHECKSUMS`, :data:`CONTENT_CHECKSUMS` or :data:`DISTRIBUTIONS`; they are read at call
time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from luring.data.registry import get_spec
from luring.errors import LuringError

__all__ = ["CHECKSUMS", "CONTENT_CHECKSUMS", "Distribution", "DISTRIBUTIONS", "md5sum",
           "content_md5", "verify_checksum", "expected_md5", "search_dirs", "find_file",
           "missing_error", "download_command", "distribution_of", "read_digest_list"]

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

#: MD5 of the decompressed IDX content, by file name without ``.gz`` (Fashion-MNIST: hashed
#: from the real files, 47,040,016 / 60,008 / 7,840,016 / 10,008 bytes).
CONTENT_CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


@dataclass(frozen=True)
class Distribution:
    """Where an operating-system package installs a data set: ``directory`` and ``digests``
    (the package manager's list of ``MD5  PATH`` lines, PATH relative to ``root``) are paths
    relative to ``root`` (``/`` on a real system; a temporary directory laid out the same way
    in tests); ``package`` and ``reinstall`` name the package and the command that repairs it."""

    package: str
    directory: str
    digests: str
    reinstall: str
    root: Path = Path("/")

    @property
    def path(self) -> Path:
        """The absolute directory holding the files."""
        return self.root / self.directory

    @property
    def digests_path(self) -> Path:
        """The absolute path of the digest list."""
        return self.root / self.digests


DEBIAN_FASHION_MNIST = Distribution(
    package="dataset-fashion-mnist", directory="usr/share/datasets/fashion-mnist",
    digests="var/lib/dpkg/info/dataset-fashion-mnist.md5sums",
    reinstall="apt-get install --reinstall dataset-fashion-mnist")

#: Per data set, the distribution packages whose installed copies are searched (in order,
#: after the data root's directories) and verified against their digest lists.
DISTRIBUTIONS: dict[str, tuple[Distribution, ...]] = {
    "fashion-mnist": (DEBIAN_FASHION_MNIST,),
}

_MD5_CACHE: dict[tuple[str, str, int, int, int, int], str] = {}


def _stat_key(p: Path, kind: str) -> tuple[str, str, int, int, int, int]:
    st = p.stat()
    return (kind, str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def md5sum(path: str | os.PathLike, *, cache: bool = True) -> str:
    """Hex MD5 of the file at ``path``; with ``cache``, remembered per process by (path,
    inode, size, mtime, ctime), so an unchanged file is hashed once."""
    p = Path(path)
    try:
        key = _stat_key(p, "file")
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


def content_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of the decompressed content of a ``.gz`` file (of the file itself otherwise),
    cached like :func:`md5sum`. A damaged gzip stream is a LuringError."""
    p = Path(path)
    if p.suffix != ".gz":
        return md5sum(p)
    try:
        key = _stat_key(p, "content")
        if key in _MD5_CACHE:
            return _MD5_CACHE[key]
        h = hashlib.md5(usedforsecurity=False)
        with gzip.open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise LuringError(f"{p} is a truncated or corrupt gzip file ({exc}); delete it and "
                          "download it again") from None
    except OSError as exc:
        raise LuringError(f"cannot read {p} ({exc.strerror or exc})") from None
    _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def expected_md5(dataset: str, filename: str,
                 checksums: Mapping[str, str] | None = None) -> str | None:
    """The published MD5 of ``filename`` (a base name) of ``dataset``, or None if unknown."""
    table = checksums if checksums is not None else CHECKSUMS.get(dataset, {})
    return table.get(filename)


def _expected_content_md5(dataset: str, filename: str) -> str | None:
    base = filename[:-3] if filename.endswith(".gz") else filename
    return CONTENT_CHECKSUMS.get(dataset, {}).get(base)


def download_command(dataset: str, root: Path | None) -> str:
    """The command that fetches ``dataset`` into ``root``."""
    where = f" --data-dir {root}" if root is not None else ""
    return f"luring data download {dataset}{where}"


def distribution_of(path: Path, dataset: str) -> Distribution | None:
    """The distribution package of :data:`DISTRIBUTIONS` whose directory holds ``path``, or
    None (a user's copy)."""
    for dist in DISTRIBUTIONS.get(dataset, ()):
        if path.parent == dist.path or path.parent.resolve() == dist.path.resolve():
            return dist
    return None


def read_digest_list(dist: Distribution) -> dict[str, str] | None:
    """``{PATH relative to the distribution root: MD5}`` from ``dist``'s digest list, or None
    when the list does not exist. An unreadable list is a LuringError."""
    p = dist.digests_path
    if not p.is_file():
        return None
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LuringError(f"cannot read {p} ({exc.strerror or exc})") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, rel = line.strip().partition(" ")
        rel = rel.strip().lstrip("*")  # md5sum's binary-mode marker
        if len(digest) == 32 and rel:
            out[str(PurePosixPath(rel.lstrip("/")))] = digest.lower()
    return out


def verify_checksum(path: Path, dataset: str, root: Path | None = None,
                    checksums: Mapping[str, str] | None = None) -> bool:
    """Check ``path``. A file in a distribution's directory whose digest list names it is
    checked against that list; any other file against its published MD5, a ``.gz`` or IDX
    file with a known content checksum (:data:`CONTENT_CHECKSUMS`) also passing when its
    decompressed content matches. Returns True if it was checked, False when no checksum is
    known for it; a mismatch is a one-line LuringError naming the file and the fix."""
    dist = distribution_of(path, dataset)
    if dist is not None:
        listed = read_digest_list(dist)
        rel = str(PurePosixPath(dist.directory.strip("/"), path.name))
        if listed is not None and rel in listed:
            got = md5sum(path)
            if got != listed[rel]:
                raise LuringError(
                    f"{path} fails the checksum in {dist.digests_path} (md5 {got}, expected "
                    f"{listed[rel]}): the installed copy of {dist.package} is corrupt; "
                    f"reinstall it with `{dist.reinstall}`")
            return True
    expected = expected_md5(dataset, path.name, checksums)
    content = _expected_content_md5(dataset, path.name)
    if expected is None and content is None:
        return False
    got = md5sum(path)
    if expected is not None and got == expected.lower():
        return True
    parts = [f"md5 {got}, expected {expected}"] if expected is not None else []
    if content is not None:
        kind = "decompressed content md5" if path.suffix == ".gz" else "md5"
        try:
            got_content = content_md5(path)
        except LuringError:
            parts.append("the content does not decompress")
        else:
            if got_content == content:
                return True
            parts.append(f"{kind} {got_content}, expected {content}")
    fix = (f"reinstall it with `{dist.reinstall}`" if dist is not None else
           f"delete it and run `{download_command(dataset, root)}`")
    raise LuringError(f"{path} fails its checksum ({'; '.join(parts)}): it is corrupt, "
                      f"truncated or not the published file; {fix}")


def search_dirs(dataset: str, root: Path) -> list[Path]:
    """The directories searched for ``dataset``'s files, in order: ``root/SUBDIR`` for each of
    the spec's ``subdirs`` (``""`` meaning ``root`` itself), then the directories of its
    :data:`DISTRIBUTIONS` packages, then the spec's ``extra_dirs`` (each directory once)."""
    spec = get_spec(dataset)
    dirs = [root / s if s else root for s in spec.subdirs]
    for d in [dist.path for dist in DISTRIBUTIONS.get(dataset, ())] + \
            [Path(e) for e in spec.extra_dirs]:
        if d not in dirs:
            dirs.append(d)
    return dirs


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
