"""Fashion-MNIST from a distribution's package (Debian's ``dataset-fashion-mnist``): the copy is
checked against the package manager's digest list, a user's copy against the published or the
content checksum, and a corrupted copy is refused in one line.

The first tests lay out generated files like the package under a temporary root; the last ones
read the real package and skip (saying why) only when it is not installed (``.ci/run``
installs it)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import time

import pytest
import torch
from test_data_fixtures import make_distribution, make_idx_set, use_distribution, write_digest_list

from luring.data import load
from luring.data.files import (
    CHECKSUMS,
    CONTENT_CHECKSUMS,
    DEBIAN_FASHION_MNIST,
    md5sum,
    verify_checksum,
)
from luring.data.info import dataset_info
from luring.errors import LuringError

REAL = DEBIAN_FASHION_MNIST
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
ALL_FILES = TEST_FILES + ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def _installed() -> bool:
    return REAL.digests_path.is_file() and all((REAL.path / n).is_file() for n in ALL_FILES)


needs_package = pytest.mark.skipif(
    not _installed(), reason=f"Debian package {REAL.package} is not installed (no "
                             f"{REAL.path} or {REAL.digests_path}); `apt-get install -y "
                             f"{REAL.package}` (done by .ci/run) runs these tests")


def _flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- generated files in the package's layout ---------------------------------------------

def test_distribution_copy_is_checked_against_its_digest_list(tmp_path, monkeypatch):
    made = make_distribution(tmp_path / "sys", seed=7)
    use_distribution(monkeypatch, made["dist"])
    p = made["dist"].path / "t10k-labels-idx1-ubyte.gz"
    # neither the published MD5 nor the content MD5 matches: only the digest list vouches
    assert md5sum(p) != CHECKSUMS["fashion-mnist"][p.name]
    assert verify_checksum(p, "fashion-mnist") is True
    x, y = load("fashion-mnist", "test", tmp_path / "root")
    assert tuple(x.shape) == (6, 1, 28, 28) and y.tolist() == list(range(6))
    # the same files as a user's copy under the data root must match the published digests
    user = tmp_path / "root" / "FashionMNIST" / "raw"
    make_idx_set(user, gz=True, seed=7)
    with pytest.raises(LuringError, match="fails its checksum") as exc:
        load("fashion-mnist", "test", tmp_path / "root")
    assert f"luring data download fashion-mnist --data-dir {tmp_path / 'root'}" in _one_line(exc)


def test_corrupted_distribution_copy_is_refused(tmp_path, monkeypatch):
    made = make_distribution(tmp_path / "sys", seed=8)
    use_distribution(monkeypatch, made["dist"])
    p = made["dist"].path / "t10k-images-idx3-ubyte.gz"
    _flip_byte(p, p.stat().st_size // 2)
    with pytest.raises(LuringError) as exc:
        load("fashion-mnist", "test", tmp_path / "root")
    msg = _one_line(exc)
    assert f"{p} fails the checksum in {made['dist'].digests_path}" in msg
    assert f"expected {made['md5'][p.name]}" in msg
    assert "apt-get install --reinstall dataset-fashion-mnist" in msg
    load("fashion-mnist", "train", tmp_path / "root")  # the untouched split still loads


def test_distribution_without_digest_list_falls_back_to_the_content(tmp_path, monkeypatch):
    made = make_distribution(tmp_path / "sys", seed=9, digests=False)
    dist = made["dist"]
    use_distribution(monkeypatch, dist)
    with pytest.raises(LuringError, match="decompressed content md5") as exc:
        load("fashion-mnist", "test", tmp_path / "root")
    assert "apt-get install --reinstall dataset-fashion-mnist" in _one_line(exc)
    content = {}
    for n in made["md5"]:
        with gzip.open(dist.path / n) as fh:
            content[n[:-3]] = hashlib.md5(fh.read()).hexdigest()
    monkeypatch.setitem(CONTENT_CHECKSUMS, "fashion-mnist", content)
    x, _ = load("fashion-mnist", "test", tmp_path / "root")
    assert len(x) == 6
    # a digest list that does not name a file leaves that file to the content check
    write_digest_list(dist, ["train-images-idx3-ubyte.gz"])
    _flip_byte(dist.path / "t10k-labels-idx1-ubyte.gz", 20)
    with pytest.raises(LuringError, match="t10k-labels-idx1-ubyte.gz fails its checksum"):
        load("fashion-mnist", "test", tmp_path / "root")


# --- the real package ---------------------------------------------------------------------

@needs_package
def test_debian_fashion_mnist_loads(tmp_path, monkeypatch):
    use_distribution(monkeypatch, REAL)  # the real location, nothing else
    t0 = time.perf_counter()
    x_tr, y_tr = load("fashion-mnist", "train", tmp_path / "empty-root")
    x_te, y_te = load("fashion-mnist", "test", tmp_path / "empty-root")
    seconds = time.perf_counter() - t0
    assert tuple(x_tr.shape) == (60000, 1, 28, 28) and tuple(x_te.shape) == (10000, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    assert torch.bincount(y_tr, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(y_te, minlength=10).tolist() == [1000] * 10
    assert seconds < 30, f"loading 70,000 images took {seconds:.1f} s"
    print(f"loaded 70,000 Debian Fashion-MNIST images in {seconds:.2f} s")


@needs_package
def test_debian_fashion_mnist_info(tmp_path, monkeypatch):
    use_distribution(monkeypatch, REAL)
    info = dataset_info("fashion-mnist", tmp_path / "empty-root")
    assert info["location"] == str(REAL.path)
    assert info["splits"]["test"]["size"] == 10000
    assert set(info["splits"]["train"]["per_class"].values()) == {6000}


@needs_package
def test_corrupted_copy_of_the_real_package_is_refused(tmp_path, monkeypatch):
    """The real test split and digest list, copied into a temporary root laid out like the
    system; one byte of the image file changed."""
    sysroot = tmp_path / "sys"
    dist = dataclasses.replace(REAL, root=sysroot)
    dist.path.mkdir(parents=True)
    for n in TEST_FILES:
        shutil.copyfile(REAL.path / n, dist.path / n)
    dist.digests_path.parent.mkdir(parents=True)
    shutil.copyfile(REAL.digests_path, dist.digests_path)
    use_distribution(monkeypatch, dist)
    x, _ = load("fashion-mnist", "test", tmp_path / "root")
    assert len(x) == 10000
    p = dist.path / "t10k-images-idx3-ubyte.gz"
    _flip_byte(p, 1000)
    with pytest.raises(LuringError, match="fails the checksum in .*md5sums") as exc:
        load("fashion-mnist", "test", tmp_path / "root")
    assert str(p) in _one_line(exc)


@needs_package
def test_user_copy_of_the_real_files_passes_by_content(tmp_path, monkeypatch):
    """Debian's re-compressed files copied under the data root: their bytes are not the
    published ones, their content is. Decompressed, the same; one byte changed, refused."""
    use_distribution(monkeypatch, None)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for n in TEST_FILES:
        shutil.copyfile(REAL.path / n, raw / n)
    x_gz, y_gz = load("fashion-mnist", "test", tmp_path)
    for n in TEST_FILES:
        (raw / n[:-3]).write_bytes(gzip.decompress((raw / n).read_bytes()))
        (raw / n).unlink()
    x_raw, y_raw = load("fashion-mnist", "test", tmp_path)
    assert torch.equal(x_gz, x_raw) and torch.equal(y_gz, y_raw)
    _flip_byte(raw / "t10k-images-idx3-ubyte", 5000)
    with pytest.raises(LuringError, match="fails its checksum .*expected "
                                          "8181f5470baa50b63fa0f6fddb340f0a"):
        load("fashion-mnist", "test", tmp_path)
