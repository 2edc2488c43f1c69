"""P trained on images read from disk a batch at a time (luring.data.lazy.LazyImages): the
view indexes like the tensor it stands for, training on it is training on that tensor (bit
for bit), `luring train-defense` takes a user's image folders and ImageNet's layout with the
settings of appendix H.1, and the default P fits any image size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import luring.data as ldata
from luring.cli.main import main
from luring.data.lazy import LazyImages, is_lazy, subset
from luring.defense import defense_settings, resolve_settings, train_defense
from luring.defense.build import build_defense
from luring.errors import LuringError
from luring.models import build, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("ant", "bee", "cow")


def _tree(root: Path, per_class: tuple[int, int] = (14, 4), size: int = 32) -> Path:
    """train/ and test/ with 3 classes of PNGs whose colour tells the class (plus noise)."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                arr = rng.integers(0, 60, (size, size, 3))
                arr[..., c] += 180
                p = root / split / name / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(p)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _tree(tmp_path_factory.mktemp("folder"))


def test_view_indexes_like_the_tensor(tree):
    ds = ldata.open_dataset("imagefolder-32x32", "train", tree)
    x, y = ldata.load("imagefolder-32x32", "train", tree)
    lazy = LazyImages(ds)
    assert len(lazy) == 42 and lazy.shape == (42, 3, 32, 32) and lazy.dim() == 4
    assert is_lazy(lazy) and not is_lazy(x)
    assert torch.equal(lazy[3:9], x[3:9]) and torch.equal(lazy[5], x[5])
    idx = torch.tensor([40, 0, 17])
    assert torch.equal(lazy[idx], x[idx]) and torch.equal(lazy.labels(), y)
    sub = subset(lazy, idx)
    assert is_lazy(sub) and torch.equal(sub[:], x[idx]) and torch.equal(sub.labels(), y[idx])
    assert torch.equal(subset(x, idx), x[idx])
    # read by loader workers when the chunk is large: the same pixels
    assert torch.equal(LazyImages(ds, workers=2)[0:42], x)
    # named by its files, not by decoding them
    assert lazy.fingerprint() == LazyImages(ds).fingerprint() != sub.fingerprint()
    with pytest.raises(LuringError, match="indexed by"):
        lazy[1.5]
    with pytest.raises(LuringError, match="outside"):
        LazyImages(ds, torch.tensor([42]))


def _target(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("mobilenetv2", in_channels=3, num_classes=num_classes).eval()


def test_training_on_the_view_is_training_on_the_tensor(tree):
    ds = ldata.open_dataset("imagefolder-32x32", "train", tree)
    x, _ = ldata.load("imagefolder-32x32", "train", tree)
    m = _target()
    s = resolve_settings(defense_settings("imagefolder", "luring", "quick"), epochs=2,
                         batch_size=8, val_fraction=0.2)
    a = train_defense(m, x, settings=s, family="imagefolder", seed=1)
    b = train_defense(m, LazyImages(ds), settings=s, family="imagefolder", seed=1)
    assert a.component_arch == b.component_arch == "default-component-32x32"
    for k, v in a.component.state_dict().items():
        assert torch.equal(v, b.component.state_dict()[k]), k
    def untimed(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert untimed(a.history) == untimed(b.history) and a.selection == b.selection


def test_build_defense_reads_lazily_and_fingerprints_files(tree, tmp_path):
    ds = ldata.open_dataset("imagefolder-32x32", "train", tree)
    test = LazyImages(ldata.open_dataset("imagefolder-32x32", "test", tree))
    m = _target()
    meta = {"architecture": "mobilenetv2", "arch_kwargs": {}, "input_shape": [3, 32, 32]}
    s = resolve_settings(defense_settings("imagefolder", "luring", "quick"), epochs=1,
                         batch_size=8)
    out, _, clean = build_defense(tmp_path / "d", m, meta, LazyImages(ds),
                                  (test, test.labels()), method="luring", settings=s,
                                  family="imagefolder", dataset="imagefolder-32x32", seed=0)
    det = json.loads((out / "defense.json").read_text())["detector"]
    assert det["n"] == 4 and det["split"]["n_fit"] == 38 and clean["n"] == 12
    from luring.defense import load_calibration

    idx = load_calibration(out)["index"]
    assert det["split"]["fingerprint"] == LazyImages(ds, idx).fingerprint()


def test_settings_of_the_natural_image_families():
    p = defense_settings("imagenet", "luring", "paper")
    assert (p["epochs"], p["batch_size"], p["optimizer"], p["lr"], p["lambda"]) == (
        100, 256, "sgd", 0.01, 1.0)
    assert p["lr_milestones"] == [[80, 0.001]]
    q = defense_settings("imagefolder", "luring", "quick")
    assert q["optimizer"] == "adam" and q["max_steps"] == 1000 and q["cap"] is None
    assert defense_settings("imagefolder", "stack", "paper")["optimizer"] == "sgd"
    with pytest.raises(LuringError, match="auto"):
        defense_settings("imagenet", "auto", "paper")
    with pytest.raises(LuringError, match="optimizer"):
        resolve_settings(p, optimizer="rmsprop")


def test_sgd_schedule_is_used(tree, monkeypatch):
    x, _ = ldata.load("imagefolder-32x32", "train", tree)
    made = []
    real = torch.optim.SGD

    def spy(params, **kw):
        made.append(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    s = resolve_settings(defense_settings("imagenet", "luring", "paper"), epochs=1,
                         batch_size=16)
    train_defense(_target(), x, settings=s, family="imagefolder", seed=0)
    assert made and made[0]["momentum"] == 0.9


def test_train_defense_cli_on_image_folders(tree, tmp_path, capsys):
    target = tmp_path / "m"
    save_checkpoint(_target(), target, architecture="mobilenetv2", input_shape=(3, 32, 32),
                    classes=list(CLASSES), dataset="imagefolder-32x32")
    out = tmp_path / "d"
    code = main(["train-defense", "--target", str(target), "--data-dir", str(tree),
                 "--epochs", "1", "--batch-size", "8", "--out", str(out),
                 "--allow-weak"])  # a random M and one epoch: T may agree little with M
    printed = capsys.readouterr()
    assert code == 0, printed.err
    meta = json.loads((out / "defense.json").read_text())
    assert meta["component_architecture"] == "default-component-32x32"
    assert meta["clean"]["n"] == 12 and meta["detector"]["split"]["n_training_images"] == 42
    assert "n = 12 test images" in printed.out
    # an image of the wrong kind in the tree is a one-line error naming the file
    bad = tree / "train" / "ant" / "broken.png"
    bad.write_bytes(b"not a png")
    try:
        code = main(["train-defense", "--target", str(target), "--data-dir", str(tree),
                     "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "e")])
    finally:
        bad.unlink()
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()
