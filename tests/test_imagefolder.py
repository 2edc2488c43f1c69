"""Image folders read lazily (luring.data.imagefolder) and the imagefolder / imagenet data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import luring.data as ldata
from luring.data.folder_sets import IMAGENET_CLASSES
from luring.data.imagefolder import (
    ImageFolderDataset,
    decode_image,
    load_imagefolder,
    make_loader,
)
from luring.errors import LuringError


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


def _tree(root: Path) -> Path:
    """train/{cat: 3 PNG, dog: 2 JPEG}, test/{cat, dog, eel: 1 each}; sizes vary."""
    for i in range(3):
        _save(root / "train" / "cat" / f"c{i}.png", _noise(30, 40, i))
    for i in range(2):
        _save(root / "train" / "dog" / f"d{i}.jpg", _noise(40, 30 + i, 10 + i))
    _save(root / "test" / "cat" / "a.png", _noise(20, 20, 20))
    _save(root / "test" / "dog" / "b.JPEG", _noise(20, 25, 21))
    _save(root / "test" / "eel" / "c.png", _noise(16, 16, 22))
    return root


def test_classes_sorted_labels_and_items(tmp_path):
    root = _tree(tmp_path)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    (root / "train" / ".hidden").mkdir()  # ignored, like a .ipynb_checkpoints folder
    ds = ImageFolderDataset(root / "train", size=(16, 12))
    assert ds.classes == ("cat", "dog")
    assert ds.targets == [0, 0, 0, 1, 1]
    assert [p.name for p, _ in ds.samples] == ["c0.png", "c1.png", "c2.png", "d0.jpg", "d1.jpg"]
    x, y = ds[4]
    assert x.shape == (3, 16, 12) and x.dtype == torch.float32 and y == 1
    assert 0 <= x.min() and x.max() <= 1


def test_exact_size_is_read_bit_for_bit(tmp_path):
    arr = _noise(6, 5, 1)
    p = _save(tmp_path / "x.png", arr)
    x = decode_image(p, (6, 5))
    want = torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255.0)
    assert torch.equal(x, want)
    assert torch.equal(decode_image(p, (6, 5), resize=None), want)


def test_cover_resize_keeps_a_constant_colour(tmp_path):
    arr = np.empty((20, 40, 3))
    arr[...] = (10, 200, 30)
    p = _save(tmp_path / "c.png", arr)
    x = decode_image(p, (16, 16))
    assert x.shape == (3, 16, 16)
    for c, v in enumerate((10, 200, 30)):
        assert torch.allclose(x[c], torch.full((16, 16), v / 255.0), atol=1 / 255 + 1e-6)
    # Grey: Pillow's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 = 124 for this colour.
    g = decode_image(p, (16, 16), channels=1)
    assert g.shape == (1, 16, 16)
    assert torch.allclose(g, torch.full((1, 16, 16), 124 / 255.0), atol=1 / 255 + 1e-6)


def test_centre_crop_offsets(tmp_path):
    # 20 wide, 10 high: left half black, right half white; read at 10×10 → no scaling
    # (it already covers), crop left = round((20 - 10) / 2) = 5: columns 5..14.
    arr = np.zeros((10, 20, 3))
    arr[:, 10:] = 255
    x = decode_image(_save(tmp_path / "h.png", arr), (10, 10))
    assert torch.equal(x[:, :, :5], torch.zeros(3, 10, 5))
    assert torch.equal(x[:, :, 5:], torch.ones(3, 10, 5))


def test_resize_shorter_side_then_crop_follows_torchvision_rule(tmp_path):
    arr = _noise(20, 30, 3)  # W×H = 30×20
    p = _save(tmp_path / "r.png", arr)
    x = decode_image(p, (24, 24), resize=32)
    # shorter side 20 → 32, longer 30 → int(32·30/20) = 48; crop left 12, top 4.
    want = Image.fromarray(arr.astype(np.uint8)).resize((48, 32), Image.BILINEAR)
    want = np.asarray(want.crop((12, 4, 36, 28)), dtype=np.float32).transpose(2, 0, 1) / 255
    assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(want)))
    with pytest.raises(LuringError, match="shorter side ≥ 24"):
        ImageFolderDataset(tmp_path, (24, 24), labelled=False, resize=20)


def test_wrong_size_is_an_error_without_resizing(tmp_path):
    p = _save(tmp_path / "big" / "odd.png", _noise(30, 40, 0))
    with pytest.raises(LuringError, match=r"odd\.png is 40×30 pixels.*not the 16×16"):
        decode_image(p, (16, 16), resize=None)
    ds = ImageFolderDataset(tmp_path / "big", (16, 16), labelled=False, resize="exact")
    with pytest.raises(LuringError, match="odd.png"):
        ds[0]


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    root = _tree(tmp_path)
    (root / "train" / "cat" / "c9.png").write_bytes(b"\x89PNG not really")
    good = root / "train" / "dog" / "d0.jpg"
    (root / "train" / "dog" / "d9.jpg").write_bytes(good.read_bytes()[:200])
    ds = ImageFolderDataset(root / "train", (8, 8))
    names = [p.name for p, _ in ds.samples]
    with pytest.raises(LuringError, match=r"cannot read image .*c9\.png"):
        ds[names.index("c9.png")]
    with pytest.raises(LuringError, match=r"cannot read image .*d9\.jpg"):
        ds[names.index("d9.jpg")]
    with pytest.raises(LuringError, match=r"c9\.png"):
        load_imagefolder(root / "train", (8, 8))


def test_unopenable_files_name_the_file(tmp_path, monkeypatch):
    p = _save(tmp_path / "x.png", _noise(4, 4, 0))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(LuringError, match=r"x\.png cannot be opened \(permission denied\)"):
        decode_image(p, (4, 4))
    p.unlink()
    monkeypatch.undo()
    with pytest.raises(LuringError, match=r"x\.png does not exist"):
        decode_image(p, (4, 4))


def test_worker_errors_are_raised_in_the_main_process(tmp_path):
    root = tmp_path / "flat"
    _save(root / "a.png", _noise(8, 8, 0))
    (root / "b.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(root, (8, 8), labelled=False)
    with pytest.raises(LuringError) as direct:
        ds[1]
    with pytest.raises(LuringError) as via_worker:
        list(make_loader(ds, batch_size=2, workers=1))
    assert str(via_worker.value) == str(direct.value)
    assert "\n" not in str(via_worker.value) and "Traceback" not in str(via_worker.value)


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _save(tmp_path / "flat" / f"{i}.png", _noise(8, 8, i))
    x, y = load_imagefolder(tmp_path / "flat", (8, 8), labelled=False)
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [-1, -1, -1]
    with pytest.raises(LuringError, match="images but no class sub-folders"):
        ImageFolderDataset(tmp_path / "flat", (8, 8))


@pytest.mark.parametrize("make, needle", [
    (lambda r: _save(r / "cat" / "a.png", _noise(4, 4, 0)) and
     _save(r / "loose.png", _noise(4, 4, 1)), "outside the class folders"),
    (lambda r: _save(r / "cat" / "a.png", _noise(4, 4, 0)) and (r / "dog").mkdir(),
     r"class folder .*dog holds no PNG/JPEG"),
    (lambda r: r.mkdir(parents=True), "holds no class sub-folders"),
    (lambda r: None, "does not exist"),
])
def test_malformed_trees(tmp_path, make, needle):
    root = tmp_path / "root"
    make(root)
    with pytest.raises(LuringError, match=needle):
        ImageFolderDataset(root, (4, 4))


def test_unknown_class_folder_with_a_given_class_list(tmp_path):
    _save(tmp_path / "cat" / "a.png", _noise(4, 4, 0))
    _save(tmp_path / "zebra" / "a.png", _noise(4, 4, 0))
    ds = ImageFolderDataset(tmp_path, (4, 4), classes=("ant", "cat", "zebra"))
    assert ds.targets == [1, 2]
    with pytest.raises(LuringError, match="not among the 2 known classes: zebra"):
        ImageFolderDataset(tmp_path, (4, 4), classes=("ant", "cat"))


def test_loader_order_is_seeded(tmp_path):
    for i in range(8):
        _save(tmp_path / "flat" / f"{i}.png", np.full((4, 4, 3), 30 * i))
    ds = ImageFolderDataset(tmp_path / "flat", (4, 4), labelled=False)

    def order(seed: int) -> list[int]:
        xs = torch.cat([x for x, _ in make_loader(ds, 3, shuffle=True, seed=seed)])
        return [round(float(v) * 255 / 30) for v in xs[:, 0, 0, 0]]

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(8))
    assert order(1) != order(2)
    assert order(1) != list(range(8))
    loader = make_loader(ds, 3)
    assert len(loader) == 3 and [len(x) for x, _ in loader] == [3, 3, 2]


def test_in_memory_limit_says_how_big(tmp_path, monkeypatch):
    for i in range(2):
        _save(tmp_path / "flat" / f"{i}.png", _noise(8, 8, i))
    monkeypatch.setenv("LURING_MAX_IN_MEMORY_GB", "1e-7")
    with pytest.raises(LuringError, match=r"2 images of 3×100×100 need 0\.00024 GB.*1e-07 GB"):
        load_imagefolder(tmp_path / "flat", (100, 100), labelled=False)
    monkeypatch.setenv("LURING_MAX_IN_MEMORY_GB", "lots")
    with pytest.raises(LuringError, match="must be a number of GB"):
        load_imagefolder(tmp_path / "flat", (100, 100), labelled=False)


def test_imagefolder_data_set(tmp_path):
    root = _tree(tmp_path)
    spec = ldata.get_spec("imagefolder-16x12")
    assert (spec.family, spec.shape) == ("imagefolder", (3, 16, 12))
    assert ldata.get_spec("imagefolder-1x28x28").shape == (1, 28, 28)
    assert ldata.get_spec("imagefolder").shape == (3, 224, 224)
    assert ldata.dataset_classes("imagefolder-16x12", root) == ("cat", "dog", "eel")
    x, y = ldata.load("imagefolder-16x12", "train", root)
    assert x.shape == (5, 3, 16, 12) and y.tolist() == [0, 0, 0, 1, 1]
    xt, yt = ldata.load("imagefolder-1x16x12", "test", root)
    assert xt.shape == (3, 1, 16, 12) and yt.tolist() == [0, 1, 2]
    lazy = ldata.open_dataset("imagefolder-16x12", "train", root)
    assert torch.equal(lazy[3][0], x[3])
    (root / "test").rename(root / "val")  # test/ or val/
    assert ldata.load("imagefolder-16x12", "test", root)[1].tolist() == [0, 1, 2]
    with pytest.raises(LuringError, match="imagefolder test split not found"):
        ldata.load("imagefolder-16x12", "test", tmp_path / "nowhere")
    with pytest.raises(LuringError, match="1 or 3 channels"):
        ldata.get_spec("imagefolder-2x8x8")


def test_flat_train_split_with_labelled_test(tmp_path):
    for i in range(2):
        _save(tmp_path / "train" / f"{i}.png", _noise(8, 8, i))
    _save(tmp_path / "test" / "b" / "0.png", _noise(8, 8, 5))
    _save(tmp_path / "test" / "a" / "0.png", _noise(8, 8, 6))
    assert ldata.load("imagefolder-8x8", "train", tmp_path)[1].tolist() == [-1, -1]
    assert ldata.load("imagefolder-8x8", "test", tmp_path)[1].tolist() == [0, 1]
    assert ldata.dataset_classes("imagefolder-8x8", tmp_path) == ("a", "b")


def _wnids() -> list[str]:
    return [f"n{i:08d}" for i in range(IMAGENET_CLASSES)]


def imagenet_tree(root: Path, classes: tuple[int, ...] = (3, 7), per_class: int = 1,
                  class_file: bool = True) -> Path:
    """ROOT/imagenet/{train,val}/<wnid>/*.JPEG for the given class indices."""
    wnids = _wnids()
    for split in ("train", "val"):
        for k in classes:
            for i in range(per_class):
                _save(root / "imagenet" / split / wnids[k] / f"{split}_{k}_{i}.JPEG",
                      _noise(48 + 8 * i, 64, 100 * k + i))
    if class_file:
        (root / "imagenet" / "LOC_synset_mapping.txt").write_text(
            "".join(f"{w} name of class {j}\n" for j, w in enumerate(wnids)))
    return root


def test_imagenet_data_set(tmp_path, monkeypatch):
    root = imagenet_tree(tmp_path)
    spec = ldata.get_spec("imagenet")
    assert (spec.family, spec.shape, spec.num_classes) == ("imagenet", (3, 224, 224), 1000)
    x, y = ldata.load("imagenet", "test", root)
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [3, 7]  # the wnids' indices
    assert ldata.dataset_classes("imagenet", root)[7] == "n00000007"
    # torchvision's evaluation recipe: shorter side 256 (48 → 256, 64 → 341), crop 224.
    src = tmp_path / "imagenet" / "val" / "n00000003" / "val_3_0.JPEG"
    want = Image.open(src).convert("RGB").resize((341, 256), Image.BILINEAR)
    want = np.asarray(want.crop((58, 16, 282, 240)), dtype=np.float32) / 255
    assert torch.equal(x[0], torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1))))
    monkeypatch.setenv("LURING_MAX_IN_MEMORY_GB", "0.001")
    with pytest.raises(LuringError, match=r"imagenet test split .*2 images of 3×224×224 need "
                                          r"0\.0012 GB"):
        ldata.load("imagenet", "test", root)
    assert len(ldata.open_dataset("imagenet", "test", root)) == 2  # lazily: no limit


def test_imagenet_errors(tmp_path):
    with pytest.raises(LuringError, match=r"imagenet test split not found: expected .*val/<wnid>"):
        ldata.load("imagenet", "test", tmp_path)
    root = imagenet_tree(tmp_path / "partial", class_file=False)
    with pytest.raises(LuringError, match="has 2 class folders, ImageNet has 1000"):
        ldata.load("imagenet", "test", root)
    (root / "imagenet" / "classes.txt").write_text("n00000003\nn00000007\n")
    with pytest.raises(LuringError, match="lists 2 distinct classes"):
        ldata.load("imagenet", "test", root)


def test_open_dataset_of_an_in_memory_set(mnist5k):
    _, _, x_te, y_te = mnist5k
    ds = ldata.open_dataset("mnist-5k", "test")
    assert len(ds) == len(x_te)
    x, y = ds[17]
    assert torch.equal(x, x_te[17]) and int(y) == int(y_te[17])
    xb, yb = next(iter(make_loader(ds, 4)))
    assert torch.equal(xb, x_te[:4]) and torch.equal(yb, y_te[:4])
