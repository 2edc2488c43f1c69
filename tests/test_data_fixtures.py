"""Writers of small data set files in the official formats, shared by the ``test_data_*``
modules (imported as ``from test_data_fixtures import ...``; this module has no tests).

Every writer returns the arrays it wrote so that tests can compare pixel values, and the MD5
of each written file so that tests can install it in the checksum table.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import scipy.io

from luring.data.cifar import BIN_DIR, PY_DIR
from luring.data.files import DEBIAN_FASHION_MNIST, DISTRIBUTIONS, Distribution

__all__ = ["md5", "write_idx", "make_idx_set", "make_cifar_bin", "make_cifar_py", "make_svhn",
           "make_tar", "single_line_error", "write_digest_list", "use_distribution",
           "make_distribution"]


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """Write uint8 ``array`` as an IDX file with ``magic`` (gzipped if ``path`` ends in .gz)."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def make_idx_set(directory: Path, *, gz: bool = True, n_train: int = 12, n_test: int = 6,
                 seed: int = 0) -> dict:
    """Write the four MNIST-style IDX files into ``directory``. Returns ``{"train": (images
    uint8 (N, 28, 28), labels), "test": ..., "md5": {file name: md5}}``."""
    rng = np.random.default_rng(seed)
    out: dict = {"md5": {}}
    ext = ".gz" if gz else ""
    for split, pre, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, arr, magic in ((f"{pre}-images-idx3-ubyte{ext}", images, 2051),
                                 (f"{pre}-labels-idx1-ubyte{ext}", labels, 2049)):
            out["md5"][name] = md5(write_idx(directory / name, arr, magic))
        out[split] = (images, labels)
    return out


def _cifar_arrays(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.int64))


def _batches() -> list[tuple[str, str]]:
    return [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]


def make_cifar_bin(root: Path, *, n: int = 4, seed: int = 1) -> dict:
    """Write the six binary batches (``n`` records each) under ``root/cifar-10-batches-bin``.
    Returns ``{"train": (uint8 (5n, 3072), int64 labels), "test": ..., "files": [...]}``."""
    rng = np.random.default_rng(seed)
    d = root / BIN_DIR
    d.mkdir(parents=True, exist_ok=True)
    parts: dict = {"train": [], "test": [], "files": []}
    for split, name in _batches():
        data, labels = _cifar_arrays(rng, n)
        rec = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (d / f"{name}.bin").write_bytes(rec.tobytes())
        parts[split].append((data, labels))
        parts["files"].append(d / f"{name}.bin")
    for split in ("train", "test"):
        parts[split] = (np.concatenate([p[0] for p in parts[split]]),
                        np.concatenate([p[1] for p in parts[split]]))
    return parts


def make_cifar_py(root: Path, *, n: int = 4, seed: int = 2, bytes_keys: bool = True,
                  protocol: int = 2) -> dict:
    """Write the six python batches under ``root/cifar-10-batches-py`` with the real structure
    (dict with ``b"data"`` uint8 N×3072 and ``b"labels"`` list, pickle protocol 2). Returns
    arrays as :func:`make_cifar_bin` plus ``"md5"``: {batch name: md5}."""
    rng = np.random.default_rng(seed)
    d = root / PY_DIR
    d.mkdir(parents=True, exist_ok=True)
    out: dict = {"train": [], "test": [], "md5": {}}
    for split, name in _batches():
        data, labels = _cifar_arrays(rng, n)
        k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
        obj = {k("batch_label"): k(f"{name} of 6"), k("labels"): labels.tolist(),
               k("data"): data, k("filenames"): [k(f"img{i}.png") for i in range(n)]}
        (d / name).write_bytes(pickle.dumps(obj, protocol=protocol))
        out["md5"][name] = md5(d / name)
        out[split].append((data, labels))
    for split in ("train", "test"):
        out[split] = (np.concatenate([p[0] for p in out[split]]),
                      np.concatenate([p[1] for p in out[split]]))
    return out


def make_svhn(directory: Path, *, n_train: int = 7, n_test: int = 5, seed: int = 3) -> dict:
    """Write ``{train,test}_32x32.mat`` (X uint8 32×32×3×N, y N×1 in 1-10) in ``directory``.
    Returns ``{"train": (X, y), "test": ..., "md5": {file name: md5}}``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict = {"md5": {}}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = ((np.arange(n) % 10) + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
        path = directory / f"{split}_32x32.mat"
        scipy.io.savemat(str(path), {"X": x, "y": y})
        out[split] = (x, y)
        out["md5"][path.name] = md5(path)
    return out


def make_tar(members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    """A tar.gz holding regular files ``{name: content}`` and ``{name: target}`` symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def write_digest_list(dist: Distribution, names: list[str] | None = None) -> Path:
    """Write ``dist``'s digest list the way dpkg does (``MD5  PATH``, PATH relative to the
    distribution root) for ``names`` (default: every file in its directory)."""
    names = sorted(q.name for q in dist.path.iterdir()) if names is None else names
    lines = [f"{md5(dist.path / n)}  {dist.directory}/{n}\n" for n in names]
    dist.digests_path.parent.mkdir(parents=True, exist_ok=True)
    dist.digests_path.write_text("".join(lines))
    return dist.digests_path


def use_distribution(monkeypatch, dist: Distribution | None) -> None:
    """Make ``dist`` the only place besides the data root where Fashion-MNIST is searched
    (``None``: nowhere), whatever is installed on the machine."""
    from luring.data import DATASETS, get_spec

    monkeypatch.setitem(DISTRIBUTIONS, "fashion-mnist", (dist,) if dist else ())
    monkeypatch.setitem(DATASETS, "fashion-mnist",
                        dataclasses.replace(get_spec("fashion-mnist"), extra_dirs=()))


def make_distribution(sysroot: Path, *, seed: int = 4, digests: bool = True) -> dict:
    """Generated Fashion-MNIST files laid out like Debian's package under ``sysroot`` (files in
    ``sysroot/usr/share/datasets/fashion-mnist``, digest list in ``sysroot/var/lib/dpkg/info``
    unless ``digests`` is False). Returns :func:`make_idx_set`'s dict plus ``"dist"``."""
    dist = dataclasses.replace(DEBIAN_FASHION_MNIST, root=sysroot)
    made = make_idx_set(dist.path, gz=True, seed=seed)
    if digests:
        write_digest_list(dist)
    made["dist"] = dist
    return made


def single_line_error(err: str) -> str:
    """Assert ``err`` (captured stderr) is exactly one ``luring: error:`` line; return it."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("luring: error: "), err
    return lines[0]
