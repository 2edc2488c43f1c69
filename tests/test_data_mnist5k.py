"""The embedded mnist-5k data set: split sizes, stratification, determinism, disjointness."""

from __future__ import annotations

import hashlib
from collections import Counter

import torch

from luring.data import get_spec, load
from luring.data.mnist5k import _read_all


def _row_hashes(x: torch.Tensor) -> list[str]:
    u8 = (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in u8]


def test_split_sizes_and_per_class_counts(mnist5k):
    x_tr, y_tr, x_te, y_te = mnist5k
    assert tuple(x_tr.shape) == (4000, 1, 28, 28) and tuple(x_te.shape) == (1000, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert torch.bincount(y_tr, minlength=10).tolist() == [400] * 10
    assert torch.bincount(y_te, minlength=10).tolist() == [100] * 10
    for x in (x_tr, x_te):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_deterministic(mnist5k):
    x_tr, y_tr, x_te, y_te = mnist5k
    x2, y2 = load("mnist-5k", "train")
    x3, y3 = load("mnist-5k", "test", root="/nonexistent")  # root is ignored: embedded
    assert torch.equal(x_tr, x2) and torch.equal(y_tr, y2)
    assert torch.equal(x_te, x3) and torch.equal(y_te, y3)


def test_disjoint_and_covering(mnist5k):
    x_tr, _, x_te, _ = mnist5k
    train, test = _row_hashes(x_tr), _row_hashes(x_te)
    pixels, _ = _read_all()
    everything = sorted(hashlib.sha1(r.tobytes()).hexdigest() for r in pixels)
    assert sorted(train + test) == everything  # every image used exactly once
    # no test image appears in train (unless the source itself holds duplicates)
    duplicated = {h for h, n in Counter(everything).items() if n > 1}
    assert not (set(train) & set(test)) - duplicated


def test_spec():
    spec = get_spec("mnist-5k")
    assert spec.embedded and spec.family == "mnist" and spec.shape == (1, 28, 28)
    assert spec.num_classes == 10
