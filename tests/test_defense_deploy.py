"""The deployed defense: load() round trip, the detection scheme (paper rule and calibrated
operating point), ``luring detect`` on image and array files with ``--rule``/``--fpr``,
``luring export`` parity (ONNX Runtime and TorchScript)."""

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
    calibrate,
    defense_settings,
    evaluate_clean,
    load,
    operating_point,
    resolve_settings,
    save_defense,
    score,
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


@pytest.fixture(scope="module")
def calibrated_dir(trained, trained_mnist_target, mnist5k, tmp_path_factory):
    """``trained`` saved with a js operating point for ≤ 10% false alarms, calibrated on 60
    training images it was not trained on."""
    _, x_te, y_te = trained_mnist_target
    idx = torch.randperm(4000, generator=torch.Generator().manual_seed(4))[160:220]
    x_cal = mnist5k[0][idx]
    with torch.no_grad():
        t_cal, m_cal = trained.augmented(x_cal), trained.target(x_cal)
    det = {**operating_point(t_cal, m_cal, "js", 0.1), "split": {"kind": "test fixture"}}
    d = tmp_path_factory.mktemp("calibrated")
    save_defense(d, trained, target_meta=TARGET_META, dataset="mnist-5k", seed=0,
                 clean=evaluate_clean(trained, x_te[::10], y_te[::10], detector=det),
                 detector=det, calibration={"t_logits": t_cal, "m_logits": m_cal,
                                            "index": idx})
    return d, t_cal, m_cal


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
    assert err.startswith("luring: note:") and "paper rule" in err  # no stored detector
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 1 + 1 + 6 + 6
    assert set(rows[0]) == {"input", "index", "t_label", "m_label", "score", "flagged", "rule",
                            "threshold"}
    assert all(r["rule"] == "paper" and r["score"] == float(r["flagged"]) for r in rows)
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


def _rows(out):
    return [json.loads(line) for line in out.strip().splitlines()]


def test_detect_cli_operating_points(calibrated_dir, trained_mnist_target, tmp_path, capsys):
    d_dir, t_cal, m_cal = calibrated_dir
    _, x_te, _ = trained_mnist_target
    d = load(d_dir)
    stored = d.detector["threshold"]
    assert stored == calibrate(score(t_cal, m_cal, "js"), 0.1)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, x_te[:40].numpy())
    np.save(b, x_te[500:530].numpy())
    code, out, err = run_cli(["detect", "--defense", d_dir, a], capsys)
    assert code == 0 and err == ""
    rows, det = _rows(out), d.detect(x_te[:40])
    assert len(rows) == 40 and {r["rule"] for r in rows} == {"js"}
    assert all(r["threshold"] == stored for r in rows)
    for r, s, f, t in zip(rows, det.score.tolist(), det.flagged.tolist(), det.t_label.tolist(),
                          strict=True):
        assert r["score"] == s and r["flagged"] == f == (s > stored) and r["t_label"] == t
    png, npz = tmp_path / "one.png", tmp_path / "three.npz"
    u8 = (x_te[:3] * 255).round().to(torch.uint8)
    Image.fromarray(u8[0, 0].numpy(), mode="L").save(png)
    np.savez(npz, images=u8[:, 0].numpy())
    code, out, err = run_cli(["detect", "--defense", d_dir, png, npz], capsys)
    assert code == 0, err
    rows, det = _rows(out), d.detect(u8.float() / 255)
    assert [r["input"] for r in rows] == [str(png)] + [str(npz)] * 3
    for r, i in zip(rows, [0, 0, 1, 2], strict=True):
        assert r["score"] == pytest.approx(det.score[i].item(), abs=1e-6)  # batch of 1 vs 3
        assert r["flagged"] == bool(det.flagged[i]) and r["threshold"] == stored
    code, out, _ = run_cli(["detect", "--defense", d_dir, "--rule", "paper", a], capsys)
    assert code == 0
    assert all(r["flagged"] == (r["t_label"] != r["m_label"]) and r["threshold"] == 0.0
               for r in _rows(out))
    for extra, rule, target in ((["--fpr", "0.3"], "js", 0.3),
                                (["--rule", "tv", "--fpr", "0.2"], "tv", 0.2),
                                (["--rule", "pm"], "pm", 0.1),
                                (["--confidence", "0.9"], "js", 0.1),
                                (["--confidence", "none", "--fpr", "0.2"], "js", 0.2)):
        conf = 0.9 if "0.9" in extra else None  # the fixture's stored point has none
        want = calibrate(score(t_cal, m_cal, rule), target, conf)  # the stored logits only
        code, out, err = run_cli(["detect", "--defense", d_dir, *extra, a, b], capsys)
        assert code == 0, err
        rows = _rows(out)
        assert len(rows) == 70 and all(r["rule"] == rule and r["threshold"] == want
                                       for r in rows)
        assert all(r["flagged"] == (r["score"] > want) for r in rows)


@pytest.mark.parametrize("extra, needle", [
    (["--fpr", "0"], "--fpr"), (["--fpr", "1"], "--fpr"), (["--fpr", "abc"], "--fpr"),
    (["--fpr", "nan"], "--fpr"), (["--rule", "entropy"], "--rule"),
    (["--confidence", "1"], "--confidence"), (["--confidence", "high"], "--confidence"),
])
def test_detect_cli_bad_options(extra, needle, calibrated_dir, tmp_path, capsys):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((2, 28, 28), dtype=np.uint8))
    code, out, err = run_cli(["detect", "--defense", calibrated_dir[0], *extra, npy], capsys)
    assert code == 2 and out == "" and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_detect_cli_recalibration_needs_calibration_data(constant_dir, tmp_path, capsys):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((2, 28, 28), dtype=np.uint8))
    for extra in (["--fpr", "0.1"], ["--rule", "tv"]):
        code, out, err = run_cli(["detect", "--defense", constant_dir, *extra, npy], capsys)
        assert code == 2 and out == "" and "calibration data" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, _ = run_cli(["detect", "--defense", constant_dir, "--rule", "paper", npy], capsys)
    assert code == 0 and len(_rows(out)) == 2


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
