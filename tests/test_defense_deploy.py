"""The deployed defense: load() round trip, the detection scheme, ``luring detect`` on image
and array files, ``luring export`` parity (ONNX Runtime and TorchScript)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from luring.cli.main import main
from luring.defense import (
    TrainedDefense,
    defense_settings,
    evaluate_clean,
    load,
    resolve_settings,
    save_defense,
    train_defense,
)
from luring.errors import LuringError
from luring.models import build


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


TARGET_META = {"architecture": "mnist-target", "input_shape": [1, 28, 28], "num_classes": 10,
               "classes": [str(i) for i in range(10)], "dataset": "mnist-5k"}


@pytest.fixture(scope="module")
def trained(trained_mnist_target, mnist5k):
    m, _, _ = trained_mnist_target
    x_tr = mnist5k[0][torch.randperm(4000, generator=torch.Generator().manual_seed(4))[:160]]
    s = resolve_settings(defense_settings("mnist", "luring", "quick"), epochs=1,
                         batch_size=32)
    return train_defense(m, x_tr, method="luring", settings=s, seed=0)


@pytest.fixture(scope="module")
def defense_dir(trained, trained_mnist_target, tmp_path_factory):
    _, x_te, y_te = trained_mnist_target
    d = tmp_path_factory.mktemp("defense")
    save_defense(d, trained, target_meta=TARGET_META, dataset="mnist-5k", seed=0,
                 clean=evaluate_clean(trained, x_te[::10], y_te[::10]))
    return d


@pytest.fixture(scope="module")
def constant_dir(trained_mnist_target, tmp_path_factory):
    """A defense whose P maps every image to (almost) black: T answers M(black) always, so
    it is flagged exactly on the images where M says something else."""
    m, _, _ = trained_mnist_target
    p = build("mnist-component")
    last = p.decoder[-2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-30.0)
    tr = TrainedDefense(method="luring", target=m, component=p.eval(), head=None,
                        settings=defense_settings("mnist", "luring", "quick"),
                        selection={"rule": "last", "epoch": 0}, history=[], seconds=0.0,
                        component_arch="mnist-component", component_kwargs={"dropout": 0.0})
    d = tmp_path_factory.mktemp("constant")
    save_defense(d, tr, target_meta=TARGET_META, dataset="mnist-5k", seed=0)
    return d


def test_load_round_trip(trained, defense_dir, trained_mnist_target):
    _, x_te, _ = trained_mnist_target
    d = load(defense_dir)
    x = x_te[:64]
    with torch.no_grad():
        assert torch.equal(d.augmented(x), trained.augmented(x))
        assert torch.equal(d.target(x), trained.target(x))
    assert d.meta["method"] == "luring" and d.input_shape == (1, 28, 28)
    assert all(not p.requires_grad for p in d.augmented.parameters())
    with pytest.raises(LuringError, match=r"expects \(N, 1, 28, 28\)"):
        d.predict(torch.rand(2, 1, 32, 32))
    with pytest.raises(LuringError, match="outside"):
        d.predict(x * 2)
    with pytest.raises(LuringError, match="4-D"):
        d.detect(x[0])


def test_detect_flags_exactly_when_labels_differ(constant_dir, trained_mnist_target):
    m, x_te, _ = trained_mnist_target
    d = load(constant_dir)
    x = x_te[::4]  # 250 images, every class
    with torch.no_grad():
        m_lab = m(x).argmax(1)
        constant = m(torch.zeros(1, 1, 28, 28)).argmax(1).item()
    det = d.detect(x)
    assert torch.equal(det.m_label, m_lab)
    assert (det.t_label == constant).all()
    assert torch.equal(det.flagged, m_lab != constant)
    assert 0 < det.flagged.sum() < len(x)  # both cases occur


def test_detect_cli_png_and_arrays(constant_dir, trained_mnist_target, tmp_path, capsys):
    _, x_te, _ = trained_mnist_target
    d = load(constant_dir)
    x = x_te[:6]
    u8 = (x * 255).round().to(torch.uint8).numpy()
    png = tmp_path / "digit.png"
    Image.fromarray(u8[0, 0], mode="L").save(png)
    rgb = tmp_path / "digit_rgb.png"
    Image.fromarray(np.repeat(u8[1, 0][..., None], 3, axis=2), mode="RGB").save(rgb)
    npy = tmp_path / "batch.npy"
    np.save(npy, u8[:, 0])  # (N, H, W) uint8
    npz = tmp_path / "batch.npz"
    np.savez(npz, x=x.numpy().astype(np.float32))  # (N, 1, H, W) float
    code, out, err = run_cli(["detect", "--defense", constant_dir, png, rgb, npy, npz], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 1 + 1 + 6 + 6
    assert set(rows[0]) == {"input", "index", "t_label", "m_label", "flagged"}
    det = d.detect(x)
    expect = [(0, 0), (1, 0)] + [(i, i) for i in range(6)] * 2
    for row, (img, idx) in zip(rows, expect, strict=True):
        assert row["index"] == idx
        assert row["t_label"] == det.t_label[img].item()
        assert row["m_label"] == det.m_label[img].item()
        assert row["flagged"] == (row["t_label"] != row["m_label"])
    assert rows[0]["input"] == str(png) and rows[-1]["input"] == str(npz)


def test_detect_cli_input_errors(constant_dir, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("L", (32, 32)).save(big)
    code, out, err = run_cli(["detect", "--defense", constant_dir, big], capsys)
    assert code == 2 and out == ""
    assert err.startswith("luring: error:") and len(err.strip().splitlines()) == 1
    assert "28x28" in err and "32x32" in err and "Traceback" not in err
    cases = {
        "obj.npy": np.array([{"a": 1}], dtype=object),
        "shape.npy": np.zeros((2, 3, 28, 28), dtype=np.uint8),
        "range.npy": np.full((1, 28, 28), 3.0, dtype=np.float32),
        "ints.npy": np.zeros((1, 28, 28), dtype=np.int64),
    }
    for name, arr in cases.items():
        p = tmp_path / name
        if arr.dtype == object:
            np.save(p, arr, allow_pickle=True)
        else:
            np.save(p, arr)
        code, _, err = run_cli(["detect", "--defense", constant_dir, p], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, (name, err)
        assert "Traceback" not in err
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    code, _, err = run_cli(["detect", "--defense", constant_dir, txt], capsys)
    assert code == 2 and ".png" in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_onnx_and_torchscript(defense_dir, trained_mnist_target, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    _, x_te, _ = trained_mnist_target
    d = load(defense_dir)
    x = x_te[:5]
    with torch.no_grad():
        ref = d.augmented(x).numpy()
    onnx_path = tmp_path / "t.onnx"
    code, _, err = run_cli(["export", "--defense", defense_dir, "--format", "onnx", "--out",
                            onnx_path], capsys)
    assert code == 0, err
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    ts_path = tmp_path / "t.pt"
    code, _, err = run_cli(["export", "--defense", defense_dir, "--format", "torchscript",
                            "--out", ts_path], capsys)
    assert code == 0, err
    ts = torch.jit.load(str(ts_path))
    with torch.no_grad():
        np.testing.assert_allclose(ts(x).numpy(), ref, atol=1e-4, rtol=0)


def test_export_without_onnx(defense_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = tmp_path / "t.onnx"
    code, _, err = run_cli(["export", "--defense", defense_dir, "--format", "onnx", "--out",
                            out], capsys)
    assert code == 2 and "pip install luring[export]" in err
    assert not out.exists()
    code, _, err = run_cli(["export", "--defense", defense_dir, "--format", "tflite",
                            "--out", out], capsys)
    assert code == 2 and "--format" in err
