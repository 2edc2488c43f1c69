"""Loaders of the file-based data sets, on small generated files in every supported format."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from test_data_fixtures import (
    make_cifar_bin,
    make_cifar_py,
    make_distribution,
    make_idx_set,
    make_svhn,
    use_distribution,
    write_idx,
)

from luring.data import DATASETS, data_root, get_spec, load
from luring.data.files import CHECKSUMS, CONTENT_CHECKSUMS, md5sum, search_dirs
from luring.errors import LuringError


def _check(x: torch.Tensor, y: torch.Tensor, images: np.ndarray, labels: np.ndarray,
           shape: tuple[int, ...]) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == (len(labels), *shape)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = torch.from_numpy(images.reshape(len(labels), *shape).astype(np.float32) / 255)
    assert torch.equal(x, expected)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


# --- MNIST / Fashion-MNIST (IDX) ---------------------------------------------------------

def test_canonical_checksums_are_the_published_ones():
    assert CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert CHECKSUMS["fashion-mnist"]["t10k-labels-idx1-ubyte.gz"] == \
        "bb300cfdad3c16e7a12a480ee83cd310"
    assert CHECKSUMS["cifar10"]["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert CHECKSUMS["svhn"]["train_32x32.mat"] == "e26dedcc434d2e4c54c9b2d4a06d8373"


def test_mnist_gz_loads_and_is_checksum_verified(tmp_path, monkeypatch):
    made = make_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    monkeypatch.setitem(CHECKSUMS, "mnist", made["md5"])
    for split in ("train", "test"):
        x, y = load("mnist", split, tmp_path)
        _check(x, y, *made[split], (1, 28, 28))
    assert float(load("mnist", "train", tmp_path)[0][0, 0, 0, 1]) == 1.0


def test_mnist_gz_with_published_checksum_mismatch_is_refused(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", gz=True)  # generated files ≠ the real ones
    with pytest.raises(LuringError, match=r"fails its checksum .*luring data download mnist"):
        load("mnist", "train", tmp_path)


def test_raw_idx_loads_without_checksum(tmp_path):
    # MNIST's content checksums are not recorded: an uncompressed file is checked structurally
    made = make_idx_set(tmp_path / "MNIST" / "raw", gz=False, seed=5)
    x, y = load("mnist", "test", tmp_path)
    _check(x, y, *made["test"], (1, 28, 28))


def test_raw_fashion_idx_is_checked_against_the_content_checksum(tmp_path, monkeypatch):
    use_distribution(monkeypatch, None)
    made = make_idx_set(tmp_path / "FashionMNIST" / "raw", gz=False, seed=5)
    with pytest.raises(LuringError, match=r"t10k-\S+ fails its checksum \(md5 [0-9a-f]{32}, "
                                          r"expected (8181f547|15d48437).*luring data download"):
        load("fashion-mnist", "test", tmp_path)
    monkeypatch.setitem(CONTENT_CHECKSUMS, "fashion-mnist", made["md5"])
    x, y = load("fashion-mnist", "test", tmp_path)
    _check(x, y, *made["test"], (1, 28, 28))


def test_recompressed_gz_passes_by_its_content(tmp_path, monkeypatch):
    """A .gz whose bytes are not the published ones but whose content is (Debian's case)."""
    d = tmp_path / "FashionMNIST" / "raw"
    made = make_idx_set(d, gz=True, seed=6)
    use_distribution(monkeypatch, None)
    content = {n[:-3]: hashlib.md5(gzip.decompress((d / n).read_bytes())).hexdigest()
               for n in made["md5"]}
    monkeypatch.setitem(CONTENT_CHECKSUMS, "fashion-mnist", content)
    x, y = load("fashion-mnist", "train", tmp_path)  # the published .gz MD5s do not match
    _check(x, y, *made["train"], (1, 28, 28))
    p = d / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-1] + b"\x07", mtime=5))
    with pytest.raises(LuringError, match=r"fails its checksum \(md5 .*; decompressed content "
                                          r"md5 .*luring data download fashion-mnist"):
        load("fashion-mnist", "train", tmp_path)


def test_gz_is_preferred_over_raw(tmp_path, monkeypatch):
    d = tmp_path / "MNIST" / "raw"
    make_idx_set(d, gz=False, seed=1)
    gz = make_idx_set(d, gz=True, seed=2)
    monkeypatch.setitem(CHECKSUMS, "mnist", gz["md5"])
    x, y = load("mnist", "train", tmp_path)
    _check(x, y, *gz["train"], (1, 28, 28))


def test_fashion_mnist_found_in_debian_directory(tmp_path, monkeypatch):
    assert search_dirs("fashion-mnist", tmp_path) == [
        tmp_path / "FashionMNIST" / "raw", Path("/usr/share/datasets/fashion-mnist")]
    made = make_distribution(tmp_path / "sys", seed=4)
    use_distribution(monkeypatch, made["dist"])
    x, y = load("fashion-mnist", "train", tmp_path / "empty-root")  # by Debian's digest list
    _check(x, y, *made["train"], (1, 28, 28))


def test_truncated_raw_idx(tmp_path):
    d = tmp_path / "MNIST" / "raw"
    make_idx_set(d, gz=False)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(LuringError, match="truncated"):
        load("mnist", "train", tmp_path)


def test_truncated_gzip_without_checksum(tmp_path, monkeypatch):
    d = tmp_path / "MNIST" / "raw"
    make_idx_set(d, gz=True)
    monkeypatch.setitem(CHECKSUMS, "mnist", {})
    p = d / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(LuringError, match="truncated or corrupt gzip"):
        load("mnist", "test", tmp_path)


def test_gz_with_trailing_bytes_in_payload(tmp_path, monkeypatch):
    d = tmp_path / "MNIST" / "raw"
    made = make_idx_set(d, gz=True)
    p = d / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()) + b"\0\0"))
    monkeypatch.setitem(CHECKSUMS, "mnist", {**made["md5"], p.name: md5sum(p)})
    with pytest.raises(LuringError, match="longer than its header"):
        load("mnist", "train", tmp_path)


@pytest.mark.parametrize("name, array, magic, split, match", [
    ("train-images-idx3-ubyte", np.zeros((12, 28, 28), np.uint8), 2049, "train",
     "magic number 2049, expected 2051"),
    ("train-labels-idx1-ubyte", np.zeros(11, np.uint8), 2049, "train",
     "12 images but .* 11 labels"),
    ("t10k-labels-idx1-ubyte", np.full(6, 10, np.uint8), 2049, "test", "label 10, outside"),
    ("t10k-images-idx3-ubyte", np.zeros((6, 32, 32), np.uint8), 2051, "test",
     "32×32 images, expected 28×28"),
], ids=["wrong-magic", "count-mismatch", "label-out-of-range", "wrong-image-size"])
def test_bad_idx_file(tmp_path, name, array, magic, split, match):
    """One bad file in an otherwise valid IDX set: a one-line error naming the problem."""
    d = tmp_path / "MNIST" / "raw"
    make_idx_set(d, gz=False)
    write_idx(d / name, array, magic)
    with pytest.raises(LuringError, match=match):
        load("mnist", split, tmp_path)


# --- CIFAR-10 ---------------------------------------------------------------------------

def test_cifar_binary_batches(tmp_path):
    made = make_cifar_bin(tmp_path)
    for split, n in (("train", 20), ("test", 4)):
        x, y = load("cifar10", split, tmp_path)
        assert len(y) == n
        _check(x, y, *made[split], (3, 32, 32))
    # channel order: 1,024 red bytes, then 1,024 green, then 1,024 blue, each row-major
    x, _ = load("cifar10", "test", tmp_path)
    row = made["test"][0][0]
    assert float(x[0, 1, 0, 0]) == pytest.approx(row[1024] / 255)
    assert float(x[0, 2, 1, 3]) == pytest.approx(row[2048 + 32 + 3] / 255)


@pytest.mark.parametrize("bytes_keys,protocol", [(True, 2), (False, 4)])
def test_cifar_python_batches(tmp_path, monkeypatch, bytes_keys, protocol):
    made = make_cifar_py(tmp_path, bytes_keys=bytes_keys, protocol=protocol)
    monkeypatch.setitem(CHECKSUMS, "cifar10", made["md5"])
    for split in ("train", "test"):
        x, y = load("cifar10", split, tmp_path)
        _check(x, y, *made[split], (3, 32, 32))


def test_cifar_python_batch_checksum_mismatch(tmp_path):
    make_cifar_py(tmp_path)  # generated batches do not match torchvision's published MD5s
    with pytest.raises(LuringError, match="test_batch fails its checksum"):
        load("cifar10", "test", tmp_path)


def test_cifar_binary_preferred_over_python(tmp_path):
    made = make_cifar_bin(tmp_path)
    make_cifar_py(tmp_path)  # would fail its checksum if it were read
    x, y = load("cifar10", "test", tmp_path)
    _check(x, y, *made["test"], (3, 32, 32))


def test_cifar_binary_truncated(tmp_path):
    make_cifar_bin(tmp_path)
    p = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(LuringError, match="data_batch_3.bin is truncated"):
        load("cifar10", "train", tmp_path)


def test_cifar_binary_label_out_of_range(tmp_path):
    make_cifar_bin(tmp_path)
    p = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(p.read_bytes())
    raw[0] = 57
    p.write_bytes(bytes(raw))
    with pytest.raises(LuringError, match="label 57"):
        load("cifar10", "test", tmp_path)


def test_cifar_python_wrong_structure(tmp_path, monkeypatch):
    made = make_cifar_py(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]},
                               protocol=2))
    monkeypatch.setitem(CHECKSUMS, "cifar10", {**made["md5"], "test_batch": md5sum(p)})
    with pytest.raises(LuringError, match="not a CIFAR-10 python batch"):
        load("cifar10", "test", tmp_path)


def test_cifar_python_truncated_pickle(tmp_path, monkeypatch):
    make_cifar_py(tmp_path)
    monkeypatch.setitem(CHECKSUMS, "cifar10", {})
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(LuringError, match="not a readable pickle"):
        load("cifar10", "test", tmp_path)


# --- SVHN -------------------------------------------------------------------------------

@pytest.mark.parametrize("subdir", ["svhn", "SVHN", ""])
def test_svhn(tmp_path, monkeypatch, subdir):
    made = make_svhn(tmp_path / subdir if subdir else tmp_path)
    monkeypatch.setitem(CHECKSUMS, "svhn", made["md5"])
    for split in ("train", "test"):
        x, y = load("svhn", split, tmp_path)
        xs, ys = made[split]
        _check(x, y, xs.transpose(3, 2, 0, 1), ys.reshape(-1) % 10, (3, 32, 32))
    _, y = load("svhn", "train", tmp_path)
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_svhn_label_ten_is_digit_zero(tmp_path, monkeypatch):
    d = tmp_path / "svhn"
    d.mkdir()
    scipy.io.savemat(str(d / "test_32x32.mat"),
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[10], [3]])})
    monkeypatch.setitem(CHECKSUMS, "svhn", {})
    assert load("svhn", "test", tmp_path)[1].tolist() == [0, 3]


def test_svhn_checksum_mismatch(tmp_path):
    make_svhn(tmp_path / "svhn")
    with pytest.raises(LuringError, match="train_32x32.mat fails its checksum"):
        load("svhn", "train", tmp_path)


def test_svhn_truncated(tmp_path, monkeypatch):
    make_svhn(tmp_path / "svhn")
    monkeypatch.setitem(CHECKSUMS, "svhn", {})
    p = tmp_path / "svhn" / "test_32x32.mat"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(LuringError, match="truncated or not a MATLAB file"):
        load("svhn", "test", tmp_path)


# --- common -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn"])
def test_missing_names_files_dirs_and_command(tmp_path, monkeypatch, name):
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(get_spec(name), extra_dirs=()))
    use_distribution(monkeypatch, None)
    with pytest.raises(LuringError) as info:
        load(name, "test", tmp_path)
    msg = str(info.value)
    assert "not found" in msg and str(tmp_path) in msg
    assert f"luring data download {name} --data-dir {tmp_path}" in msg
    expected = {"mnist": "t10k-images-idx3-ubyte", "fashion-mnist": "t10k-labels-idx1-ubyte",
                "cifar10": "test_batch", "svhn": "test_32x32.mat"}[name]
    assert expected in msg


def test_unknown_split_and_name():
    with pytest.raises(LuringError, match="unknown split"):
        load("mnist-5k", "valid")
    with pytest.raises(LuringError, match="unknown data set 'no-such-set'"):
        load("no-such-set", "train")


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LURING_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("LURING_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "luring" / "data"
