"""Architectures, checkpoints and `luring train-target`."""

from __future__ import annotations

import json

import pytest
import torch

from luring.cli.main import main
from luring.errors import LuringError
from luring.models import (
    ARCHITECTURES,
    Stacked,
    build,
    load_checkpoint,
    save_checkpoint,
)
from luring.models.augment import random_affine
from luring.models.train import pgd_linf_train, target_settings

PARAMS = {  # hand-counted from tables 2-7
    "mnist-target": 32 * 25 + 64 * 32 * 25 + (3136 * 1024 + 1024) + (1024 * 10 + 10),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_shapes(name):
    spec = ARCHITECTURES[name]
    model = build(name).eval()
    x = torch.rand(3, *spec.input_shape)
    out = model(x)
    if spec.role == "target":
        assert out.shape == (3, 10)
    else:
        assert out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1
    if name in PARAMS:
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_stacked_is_composition():
    torch.manual_seed(0)
    p, m = build("mnist-component").eval(), build("mnist-target").eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(Stacked(p, m)(x), m(p(x)))


def test_unknown_architecture():
    with pytest.raises(LuringError, match="unknown architecture 'nope'"):
        build("nope")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build("svhn-target").eval()
    save_checkpoint(model, tmp_path, "model", architecture="svhn-target", input_shape=(3, 32, 32),
                    num_classes=10, dataset="svhn", test_accuracy=0.5, seed=3,
                    config={"a": 1})
    loaded, meta = load_checkpoint(tmp_path, "model")
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert meta["architecture"] == "svhn-target" and meta["seed"] == 3
    assert meta["classes"] == [str(i) for i in range(10)]
    assert {"torch", "luring", "python"} <= set(meta["versions"])


def _saved(tmp_path):
    model = build("mnist-target")
    save_checkpoint(model, tmp_path, "model", architecture="mnist-target",
                    input_shape=(1, 28, 28), num_classes=10)
    return tmp_path


def test_checkpoint_truncated(tmp_path):
    d = _saved(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(LuringError, match="not a valid safetensors"):
        load_checkpoint(d)


def test_checkpoint_pickle_refused(tmp_path):
    d = _saved(tmp_path)
    torch.save(build("mnist-target").state_dict(), d / "model.safetensors")  # a pickle
    with pytest.raises(LuringError, match="not a valid safetensors"):
        load_checkpoint(d)


def test_checkpoint_architecture_mismatch(tmp_path):
    d = _saved(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["architecture"] = "svhn-target"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(LuringError, match="does not match the architecture"):
        load_checkpoint(d)


def test_checkpoint_shape_mismatch(tmp_path):
    d = _saved(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["num_classes"] = 7
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(LuringError, match="has shape"):
        load_checkpoint(d)


def test_random_affine_keeps_range_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 32)
    assert random_affine(x, generator=g) is x
    y = random_affine(x, rotation_deg=10, shift=5 / 32, generator=g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_random_affine_fill_modes():
    """A pure shift uncovers a strip: zeros there with fill="zeros", the border pixel's value
    with fill="border"; an unknown fill is refused."""
    x = torch.full((2, 1, 16, 16), 0.7)
    zeros = random_affine(x, shift=0.25, generator=torch.Generator().manual_seed(0))
    border = random_affine(x, shift=0.25, fill="border",
                           generator=torch.Generator().manual_seed(0))
    assert zeros.min() < 0.1  # uncovered pixels are black
    torch.testing.assert_close(border, x)  # a constant image stays constant
    with pytest.raises(ValueError, match="fill"):
        random_affine(x, shift=0.1, fill="reflect")


def test_pgd_training_step_respects_ball(trained_mnist_target):
    model, x, y = trained_mnist_target
    x, y = x[:16], y[:16]
    x_adv = pgd_linf_train(model, x, y, 0.3, 5, 0.1, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    acc_clean = (model(x).argmax(1) == y).float().mean()
    acc_adv = (model(x_adv).argmax(1) == y).float().mean()
    assert acc_adv < acc_clean


def test_settings_defaults_and_overrides():
    s = target_settings("cifar10")
    assert (s.epochs, s.batch_size, s.milestones) == (200, 32, (80, 120))
    assert (s.lrs, s.dropout, s.rotation_deg, s.shift) == ((1e-2, 1e-3, 1e-4), 0.25, 10.0, 5 / 32)
    s = target_settings("mnist", adv_train=True, epochs=2, lr=5e-4)
    assert (s.adv_eps, s.adv_steps, s.adv_step_size, s.epochs, s.lrs) == (
        0.3, 40, 0.1, 2, (5e-4,))  # H.2: 40 steps of 0.1 at ε = 0.3
    for family in ("svhn", "cifar10"):
        s = target_settings(family, adv_train=True)
        assert (s.adv_eps, s.adv_steps, s.adv_step_size) == (0.03, 10, 0.008)
    assert target_settings("mnist", adv_train=True, adv_step_size=0.01).adv_step_size == 0.01


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_train_target_cli_small(tmp_path, capsys):
    out = tmp_path / "m"
    code, _ = _run(capsys, "train-target", "--dataset", "mnist-5k", "--epochs", "1",
                   "--out", str(out))
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["dataset"] == "mnist-5k" and meta["test_accuracy"] > 0.9
    assert {"config.json", "results.json", "report.md", "model.safetensors"} <= {
        p.name for p in out.iterdir()}
    # a second run refuses to overwrite the model
    before = (out / "model.safetensors").read_bytes()
    code, err = _run(capsys, "train-target", "--epochs", "1", "--out", str(out))
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("argv, needle", [
    (["train-target", "--dataset", "no-such-set", "--out", "X"], "unknown data set"),
    (["train-target", "--epochs", "-1", "--out", "X"], "must be ≥ 0"),
    (["train-target", "--adv-eps", "1.5", "--out", "X"], "[0, 1]"),
    (["train-target", "--arch", "resnet", "--epochs", "0", "--out", "X"],
     "unknown architecture"),
])
def test_train_target_cli_errors(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, *argv)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_target_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(capsys, "train-target", "--epochs", "0", "--out", str(blocker / "sub"))
    assert code == 2 and "cannot be written" in err
    assert blocker.read_text() == "x"
