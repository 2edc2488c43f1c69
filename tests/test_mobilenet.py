"""MobileNetV2 (torchvision's names), weight files, the default P for any size, the table-15 P
and `luring import-target` end to end on generated image trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from luring.cli.main import main
from luring.errors import LuringError
from luring.models import (
    MobileNetV2,
    build,
    default_architectures,
    default_component,
    load_checkpoint,
    read_weights,
)
from luring.models.components import component_plan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mobilenet():
    """A randomly initialised MobileNetV2 (1,000 classes, seed 0) in eval mode."""
    torch.manual_seed(0)
    return MobileNetV2().eval()


def test_state_dict_names_and_sizes(mobilenet):
    sd = mobilenet.state_dict()
    assert len(sd) == 314  # 52 convolutions + 52 BN (5 tensors each) + linear (2)
    assert list(sd)[:2] == ["features.0.0.weight", "features.0.1.weight"]
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["features.0.0.weight"] == (32, 3, 3, 3)
    assert shapes["features.1.conv.0.0.weight"] == (32, 1, 3, 3)  # depthwise, no expansion
    assert shapes["features.1.conv.1.weight"] == (16, 32, 1, 1)
    assert shapes["features.2.conv.0.0.weight"] == (96, 16, 1, 1)  # expansion 6
    assert shapes["features.17.conv.2.weight"] == (320, 960, 1, 1)
    assert shapes["features.18.0.weight"] == (1280, 320, 1, 1)
    assert shapes["classifier.1.weight"] == (1000, 1280)
    assert "mean" not in sd and "std" not in sd  # normalisation buffers are not persistent
    assert sum(p.numel() for p in mobilenet.parameters()) == 3_504_872  # the published count


def test_normalisation_inside_the_model():
    x = torch.rand(2, 3, 5, 5)
    sym = MobileNetV2(num_classes=4, normalize="symmetric")
    assert torch.allclose(sym.preprocess(x), 2 * x - 1, atol=1e-6)
    imnet = MobileNetV2(num_classes=4)
    want = (x[:, 1] - 0.456) / 0.224
    assert torch.allclose(imnet.preprocess(x)[:, 1], want, atol=1e-6)
    assert torch.equal(MobileNetV2(num_classes=4, normalize="none").preprocess(x), x)
    with pytest.raises(LuringError, match="needs 3 input channels"):
        MobileNetV2(in_channels=1)
    with pytest.raises(LuringError, match="unknown MobileNetV2 normalisation"):
        MobileNetV2(normalize="caffe")
    grey = MobileNetV2(in_channels=1, num_classes=3, normalize="symmetric").eval()
    assert grey(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_forward_shapes_and_residuals(mobilenet):
    with torch.no_grad():
        assert mobilenet(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
        assert mobilenet(torch.rand(2, 3, 64, 48)).shape == (2, 1000)
    blocks = list(mobilenet.features)[1:18]
    assert [b.use_residual for b in blocks].count(True) == 10  # repeats n-1 of each stage


def test_logits_equal_torchvision(tmp_path, mobilenet):
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(1)
    ref = tv.mobilenet_v2().eval()
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = MobileNetV2().eval()
    ours.load_state_dict(read_weights(path), strict=True)
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref((x - mean) / std), atol=1e-5, rtol=0)


def test_read_weights_formats(tmp_path):
    torch.manual_seed(2)
    model = build("mnist-target")
    sd = model.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               tmp_path / "wrapped.pt")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "wrapped.pt", "w.safetensors"):
        got = read_weights(tmp_path / name)
        assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "absent.pth", "does not exist"),
    (lambda d: (d / "w.bin").write_bytes(b"x") and d / "w.bin", "unknown format '.bin'"),
    (lambda d: torch.save(nn.Linear(2, 2), d / "m.pth") or d / "m.pth",
     "cannot be read as plain weights"),
    (lambda d: torch.save({"x": _Evil()}, d / "e.pth") or d / "e.pth",
     "cannot be read as plain weights"),
    (lambda d: (d / "t.pth").write_bytes(b"PK\x03\x04truncated") and d / "t.pth",
     "cannot be read as plain weights"),
    (lambda d: torch.save({"lr": 0.1}, d / "n.pth") or d / "n.pth", "does not hold a state dict"),
])
def test_read_weights_errors(tmp_path, capsys, make, needle):
    with pytest.raises(LuringError, match=needle):
        read_weights(make(tmp_path))
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("shape, plan", [
    ((1, 28, 28), (16, 32, 64)),  # 28 → 14 → 7
    ((3, 32, 32), (48, 96, 192, 384)),  # 32 → 16 → 8 → 4
    ((3, 64, 48), (48, 96, 192, 384)),  # 48 → 24 → 12 → 6
    ((3, 224, 224), (48, 96, 192, 384, 512, 512)),  # 224 → ... → 7, widths capped at 512
    ((1, 13, 9), (16, 32)),  # 9 → 5 (odd sizes round trip: 13 → 7 → 13)
])
def test_default_component_any_size(shape, plan):
    assert component_plan(*shape) == plan
    torch.manual_seed(0)
    p = default_component(*shape).eval()
    x = torch.rand(1, *shape)
    with torch.no_grad():
        out = p(x)
    assert out.shape == x.shape and 0 < out.min() and out.max() < 1
    name = default_architectures("imagefolder", shape)[1]
    assert name == f"default-component-{shape[1]}x{shape[2]}"
    assert build(name, in_channels=shape[0]).widths == plan


def test_default_component_checkpoint_round_trip(tmp_path):
    from luring.models import save_checkpoint

    torch.manual_seed(3)
    p = build("default-component-20x12", in_channels=1, dropout=0.1).eval()
    save_checkpoint(p, tmp_path, "component", architecture="default-component-20x12",
                    input_shape=(1, 20, 12), arch_kwargs={"dropout": 0.1})
    q, _ = load_checkpoint(tmp_path, "component")
    x = torch.rand(2, 1, 20, 12)
    assert torch.equal(p(x), q(x))
    with pytest.raises(LuringError, match="unknown architecture 'default-component-0x4'"):
        build("default-component-0x4")


def test_table_15_component():
    torch.manual_seed(0)
    p = build("imagenet-component").eval()
    layers = list(p.net)
    convs = [m.out_channels for m in layers if isinstance(m, nn.Conv2d)]
    assert convs == [128, 256, 512, 512, 256, 128, 64, 3]
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 3
    assert sum(isinstance(m, nn.Upsample) for m in layers) == 3  # table 15 prints 2: see docs
    assert isinstance(layers[-1], nn.Sigmoid) and isinstance(layers[-2], nn.BatchNorm2d)
    x = torch.rand(2, 3, 32, 32)  # fully convolutional: a small input keeps the test short
    with torch.no_grad():
        out = p(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert default_architectures("imagenet") == ("imagenet-target", "imagenet-component")
    with pytest.raises(LuringError, match="no default architectures for data set family 'x'"):
        default_architectures("x")


# --- import-target end to end ---------------------------------------------------------


def _save_image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _imagenet(root: Path) -> Path:
    wnids = [f"n{i:08d}" for i in range(1000)]
    for split in ("train", "val"):
        for k in (5, 9):
            _save_image(root / "imagenet" / split / wnids[k] / f"{split}{k}.JPEG", 40, 56, k)
    (root / "imagenet" / "classes.txt").write_text("\n".join(wnids) + "\n")
    return root


def test_import_target_imagenet_end_to_end(tmp_path, mobilenet, capsys):
    import luring.data as ldata

    root = _imagenet(tmp_path / "data")
    weights = tmp_path / "mnv2.pth"
    torch.save(mobilenet.state_dict(), weights)
    out = tmp_path / "target"
    rc = main(["import-target", "--dataset", "imagenet", "--data-dir", str(root), "--weights",
               str(weights), "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    x, y = ldata.load("imagenet", "test", root)
    with torch.no_grad():
        logits = mobilenet(x)
    acc = float((logits.argmax(1) == y).float().mean())
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"] == "imagenet-target"
    assert meta["arch_kwargs"] == {"normalize": "imagenet"}
    assert meta["test_accuracy"] == acc and meta["n_test"] == 2
    assert meta["num_classes"] == 1000 and meta["classes"][9] == "n00000009"
    assert meta["input_shape"] == [3, 224, 224] and meta["dataset"] == "imagenet"
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] == acc and results["n_test"] == 2
    assert "Test accuracy" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["command"] == "import-target"
    loaded, _ = load_checkpoint(out, "model")
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
    assert f"n=2) of imagenet-target on imagenet → {out}" in capsys.readouterr().out
    rc = main(["import-target", "--dataset", "imagenet", "--data-dir", str(root), "--weights",
               str(weights), "--out", str(out)])
    assert rc == 2 and "already holds a model" in capsys.readouterr().err


def test_imported_target_defends_and_is_attacked(tmp_path, capsys):
    """A user's own M on their own images: import-target on imagefolder-32x32, then P (the
    default component) trained through the Python API, then `luring attack` on M."""
    from luring.defense import defense_settings, resolve_settings, train_defense

    root = tmp_path / "data"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("ant", "bee"):
            for i in range(n):
                _save_image(root / split / c / f"{i}.png", 36, 32, len(split) * 10 + ord(c[0]) + i)
    torch.manual_seed(4)
    model = MobileNetV2(num_classes=2, normalize="symmetric")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "target"
    rc = main(["import-target", "--dataset", "imagefolder", "--image-size", "32x32",
               "--data-dir", str(root), "--weights", str(tmp_path / "w.safetensors"),
               "--normalize", "symmetric", "--images", "3", "--out", str(out),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "model.json").read_text())
    assert meta["dataset"] == "imagefolder-32x32" and meta["n_test"] == 3
    assert meta["classes"] == ["ant", "bee"] and meta["test_accuracy"] in (0, 1 / 3, 2 / 3, 1)
    target, meta = load_checkpoint(out, "model")
    import luring.data as ldata

    x_tr, _ = ldata.load(meta["dataset"], "train", root)
    settings = resolve_settings(defense_settings("cifar10", "ce", "quick"), epochs=1,
                                batch_size=4, val_fraction=0.25)
    comp = default_architectures("imagefolder", x_tr.shape[1:])[1]
    trained = train_defense(target, x_tr, method="ce", settings=settings, component_arch=comp)
    assert trained.component_arch == "default-component-32x32"
    with torch.no_grad():
        assert trained.augmented(x_tr[:2]).shape == (2, 2)
    rc = main(["attack", "--source", str(out), "--attack", "fgsm", "--eps", "0.03", "--n", "2",
               "--data-dir", str(root), "--out", str(tmp_path / "atk"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "atk" / "attack.json").read_text())
    assert record["dataset"] == "imagefolder-32x32" and record["linf_max"] <= 0.03 + 1e-6


@pytest.mark.parametrize("extra, needle", [
    (["--weights", "{tmp}/absent.safetensors"], "weights file .*absent.safetensors does not exist"),
    (["--weights", "{tmp}/w.pth", "--data-dir", "{tmp}/nothing"], "imagenet test split not found"),
    (["--weights", "{tmp}/w.pth", "--arch", "mnist-target"], "does not match the architecture"),
    (["--weights", "{tmp}/w.pth", "--arch", "imagenet-component"], "not a target architecture"),
    (["--weights", "{tmp}/w.pth", "--normalize", "none", "--arch", "svhn-target"],
     "--normalize applies to MobileNetV2"),
    (["--weights", "{tmp}/w.pth", "--image-size", "32x32"], "apply to imagefolder data sets"),
])
def test_import_target_errors(tmp_path, capsys, extra, needle):
    root = _imagenet(tmp_path / "data")
    torch.save(MobileNetV2(num_classes=10).state_dict(), tmp_path / "w.pth")
    argv = ["import-target", "--dataset", "imagenet", "--data-dir", str(root),
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    rc = main(argv + [a.replace("{tmp}", str(tmp_path)) for a in extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("luring: error: ") and err.count("\n") == 1
    assert __import__("re").search(needle, err), err
    assert not (tmp_path / "out" / "model.json").exists()


def test_import_target_wrong_classes_and_image_size(tmp_path, capsys):
    root = _imagenet(tmp_path / "data")
    torch.save(MobileNetV2(num_classes=10).state_dict(), tmp_path / "w10.pth")
    rc = main(["import-target", "--dataset", "imagenet", "--data-dir", str(root), "--weights",
               str(tmp_path / "w10.pth"), "--out", str(tmp_path / "o1"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "classifier.1.weight has shape (10, 1280), expected (1000, 1280)" in err
    assert "built for 1000 classes" in err
    # An architecture that cannot take the data set's images: table 2 on 1×32×32 images.
    for c in ("a", "b"):
        _save_image(tmp_path / "g" / "test" / c / "0.png", 32, 32, 1)
    torch.save(build("mnist-target", num_classes=2).state_dict(), tmp_path / "m.pth")
    rc = main(["import-target", "--dataset", "imagefolder-1x32x32", "--arch", "mnist-target",
               "--data-dir", str(tmp_path / "g"), "--weights", str(tmp_path / "m.pth"),
               "--out", str(tmp_path / "o2"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "mnist-target does not accept imagefolder-1x32x32's 1×32×32 images" in err
