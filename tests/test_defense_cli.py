"""``luring train-defense`` end to end (small data), the directory contract, load() and the
command-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import luring.data
import luring.errors
from luring.cli.main import main
from luring.defense import FORMAT, load
from luring.models import save_checkpoint


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def target_dir(trained_mnist_target, tmp_path_factory):
    m, x_te, y_te = trained_mnist_target
    with torch.no_grad():
        acc = (m(x_te).argmax(1) == y_te).float().mean().item()
    d = tmp_path_factory.mktemp("target")
    save_checkpoint(m, d, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k", test_accuracy=acc)
    return d


class PoisonLabels:
    """Training labels that fail the test on any use."""

    def __getattribute__(self, name):
        raise AssertionError(f"training labels were touched ({name})")

    def _boom(self, *a, **k):
        raise AssertionError("training labels were touched")

    __len__ = __getitem__ = __iter__ = __bool__ = __array__ = __index__ = __eq__ = _boom

    @classmethod
    def __torch_function__(cls, *a, **k):
        raise AssertionError("training labels were touched (torch function)")


def _fake_load(mnist5k, poison: bool = False):
    x_tr, y_tr, x_te, y_te = mnist5k
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(2))[:256]
    test_idx = torch.randperm(len(x_te), generator=torch.Generator().manual_seed(3))[:200]

    def fake(name, split="train", root=None):
        assert name == "mnist-5k"
        if split == "train":
            return x_tr[idx], (PoisonLabels() if poison else y_tr[idx])
        return x_te[test_idx], y_te[test_idx]
    return fake


@pytest.fixture
def small_data(monkeypatch, mnist5k):
    monkeypatch.setattr(luring.data, "load", _fake_load(mnist5k))
    return mnist5k


def _train_args(target_dir, out, method, *extra):
    return ["train-defense", "--target", target_dir, "--method", method, "--out", out,
            "--profile", "quick", "--epochs", "1", "--device", "cpu", *extra]


@pytest.mark.parametrize("method", ["luring", "ce", "auto", "stack"])
def test_each_method_writes_the_contract(method, target_dir, small_data, tmp_path, capsys):
    out = tmp_path / "def"
    code, stdout, err = run_cli(_train_args(target_dir, out, method), capsys)
    assert code == 0, err
    assert "agreement" in stdout
    names = {p.name for p in out.iterdir()}
    want = {"defense.json", "config.json", "results.json", "report.md", "target.safetensors",
            "target.json", "component.safetensors", "component.json", "calibration.safetensors"}
    assert want <= names
    assert ({"head.safetensors", "head.json"} <= names) == (method == "stack")
    assert [p.name for p in tmp_path.iterdir()] == ["def"]  # no staging left behind
    meta = json.loads((out / "defense.json").read_text())
    for key in ("format", "method", "lambda", "dataset", "target_dir", "config", "seed",
                "selection", "clean", "history", "versions", "detector"):
        assert key in meta
    det_meta = meta["detector"]
    assert {"rule", "threshold", "target_fpr", "heldout_fpr", "n", "split"} <= set(det_meta)
    # 256 training images (the fake loader): 26 held out for calibration before P trains
    assert det_meta["n"] == 26 and det_meta["split"]["n_fit"] == 230
    assert det_meta["target_fpr"] == 0.05 and det_meta["heldout_fpr"] <= 0.05
    assert meta["format"] == FORMAT and meta["method"] == method
    assert meta["lambda"] == (1.0 if method == "luring" else None)
    assert meta["dataset"] == "mnist-5k" and meta["config"]["epochs"] == 1
    assert {"epoch", "agreement"} <= set(meta["selection"])
    clean = meta["clean"]
    assert clean["n"] == 200
    for key in ("accuracy_m", "accuracy_t", "agreement", "false_alarm_rate",
                "detector_false_alarm_rate"):
        lo, hi = clean["intervals"][key]
        assert 0 <= lo <= clean[key] <= hi <= 1
    assert json.loads((out / "results.json").read_text())["clean"] == clean
    assert "| figure |" in (out / "report.md").read_text()
    comp = json.loads((out / "component.json").read_text())
    assert comp["architecture"] == "mnist-component" and "dropout" in comp["arch_kwargs"]

    d = load(out)
    assert not d.target.training and not d.component.training and not d.augmented.training
    x, y = luring.data.load("mnist-5k", "test")
    t = d.predict(x)
    assert (t == y).float().mean().item() == pytest.approx(clean["accuracy_t"])
    det = d.detect(x)
    assert torch.equal(det.t_label, t) and det.threshold == det_meta["threshold"]
    assert (det.t_label != det.m_label).float().mean().item() == pytest.approx(
        clean["false_alarm_rate"])  # the paper rule
    assert det.flagged.float().mean().item() == pytest.approx(
        clean["detector_false_alarm_rate"])  # the stored operating point
    if method == "stack":
        assert d.augmented.head is not d.target
    else:
        assert d.augmented.head is d.target


def test_cli_training_never_reads_training_labels(target_dir, mnist5k, monkeypatch, tmp_path,
                                                  capsys):
    monkeypatch.setattr(luring.data, "load", _fake_load(mnist5k, poison=True))
    for method in ("luring", "ce", "auto"):
        code, _, err = run_cli(_train_args(target_dir, tmp_path / method, method), capsys)
        assert code == 0, err


def test_rerun_replaces_and_failure_keeps_previous(target_dir, small_data, tmp_path, capsys,
                                                    monkeypatch):
    out = tmp_path / "def"
    assert run_cli(_train_args(target_dir, out, "stack"), capsys)[0] == 0
    assert run_cli(_train_args(target_dir, out, "auto"), capsys)[0] == 0
    assert not (out / "head.json").exists()
    assert json.loads((out / "defense.json").read_text())["method"] == "auto"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise luring.errors.LuringError("training failed on purpose")
    monkeypatch.setattr("luring.defense.build.train_defense", boom)
    code, _, err = run_cli(_train_args(target_dir, out, "luring"), capsys)
    assert code == 2 and "on purpose" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["def"]


@pytest.mark.parametrize("extra, needle", [
    (["--lambda", "0"], "--lambda"),
    (["--lambda", "-1"], "--lambda"),
    (["--epochs", "-3"], "--epochs"),
    (["--method", "nope"], "--method"),
    (["--dropout", "1.5"], "--dropout"),
])
def test_bad_options(extra, needle, target_dir, tmp_path, capsys):
    args = ["train-defense", "--target", target_dir, "--out", tmp_path / "o", *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_user_errors(target_dir, small_data, tmp_path, capsys):
    code, _, err = run_cli(_train_args(tmp_path / "missing", tmp_path / "o", "luring"), capsys)
    assert code == 2 and "does not exist" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(_train_args(target_dir, tmp_path / "o", "ce", "--lambda", "0.5"),
                           capsys)
    assert code == 2 and "--lambda" in err
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    code, _, err = run_cli(_train_args(target_dir, blocker / "out", "luring"), capsys)
    assert code == 2 and "cannot be written" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    code, _, err = run_cli(_train_args(target_dir, blocker, "luring"), capsys)
    assert code == 2 and "not a directory" in err
    assert blocker.read_text() == "not a directory"
    code, _, err = run_cli(["detect", "--defense", tmp_path / "nope", blocker], capsys)
    assert code == 2 and "does not exist" in err
    assert Path(blocker).exists()
