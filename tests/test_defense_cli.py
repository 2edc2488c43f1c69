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
    # one epoch on 230 images: T may agree with M on fewer than half the held-out images
    return ["train-defense", "--target", target_dir, "--method", method, "--out", out,
            "--profile", "quick", "--epochs", "1", "--device", "cpu", "--allow-weak", *extra]


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
    assert run_cli(_train_args(target_dir, out, "auto", "--force"), capsys)[0] == 0
    assert not (out / "head.json").exists()
    assert json.loads((out / "defense.json").read_text())["method"] == "auto"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise luring.errors.LuringError("training failed on purpose")
    monkeypatch.setattr("luring.defense.build.train_defense", boom)
    code, _, err = run_cli(_train_args(target_dir, out, "luring", "--force"), capsys)
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


# ------------------------------------------------------------------ --method trapdoor

@pytest.fixture(scope="module")
def trapdoor_dir(target_dir, mnist5k, tmp_path_factory):
    """``train-defense --method trapdoor`` on the small fake split (256 training images: 26
    held out; 200 test images), one trapdoor epoch, options passed through."""
    mp = pytest.MonkeyPatch()
    mp.setattr(luring.data, "load", _fake_load(mnist5k))
    out = tmp_path_factory.mktemp("trap") / "td"
    try:
        code = main([str(a) for a in _train_args(target_dir, out, "trapdoor", "--inject-ratio",
                                                 "0.4", "--false-alarm", "0.1", "--clean-epochs",
                                                 "0", "--seed", "3")])
    finally:
        mp.undo()
    assert code == 0
    return out


def test_trapdoor_method_writes_its_contract(trapdoor_dir, capsys):
    from luring.defense import load_trapdoor

    names = {p.name for p in trapdoor_dir.iterdir()}
    assert {"defense.json", "model.safetensors", "model.json", "trapdoor.safetensors",
            "config.json", "results.json", "report.md"} <= names
    assert [p.name for p in trapdoor_dir.parent.iterdir()] == ["td"]  # no staging left
    meta = json.loads((trapdoor_dir / "defense.json").read_text())
    assert meta["format"] == FORMAT and meta["method"] == "trapdoor" and meta["seed"] == 3
    cfg = meta["config"]
    assert (cfg["trap_epochs"], cfg["clean_epochs"], cfg["inject_ratio"], cfg["false_alarm"]) \
        == (1, 0, 0.4, 0.1)
    assert cfg["architecture"] == "mnist-target" and cfg["profile"] == "quick"
    cal = meta["calibration"]
    assert cal["n"] == 26 and cal["false_alarm_target"] == 0.1
    assert cal["flagged"] == 2  # ⌊0.1 · 26⌋ of the held-out images score above the threshold
    assert meta["clean"]["n"] == 200
    trapped = load_trapdoor(trapdoor_dir)
    assert trapped.threshold == meta["threshold"] and trapped.meta["seed"] == 3
    # load() loads any defense directory; asked for T = M∘P, one line naming the trapdoor's
    assert load(trapdoor_dir).threshold == trapped.threshold
    with pytest.raises(luring.errors.LuringError, match="load_trapdoor"):
        load(trapdoor_dir, augmented=True)
    code, _, err = run_cli(["export", "--defense", trapdoor_dir, "--format", "torchscript",
                            "--out", trapdoor_dir.parent / "t.pt"], capsys)
    assert code == 2 and "load_trapdoor" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["attack", "--source", trapdoor_dir, "--attack", "fgsm", "--eps",
                            "0.1", "--images", "2", "--out", trapdoor_dir.parent / "adv",
                            "--device", "cpu"], capsys)
    assert code == 2 and "load_trapdoor" in err and len(err.strip().splitlines()) == 1


def test_detect_on_a_trapdoor_directory(trapdoor_dir, mnist5k, tmp_path, capsys):
    import numpy as np

    from luring.defense import load_trapdoor

    _, _, x_te, _ = mnist5k
    x = x_te[:5]
    arr = tmp_path / "five.npy"
    np.save(arr, x.numpy())
    code, out, err = run_cli(["detect", "--defense", trapdoor_dir, arr, "--device", "cpu"],
                             capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert len(lines) == 5 and all(set(r) == {"input", "index", "label", "score", "flagged"}
                                   for r in lines)
    trapped = load_trapdoor(trapdoor_dir)
    det = trapped.detect(x)
    assert [r["index"] for r in lines] == list(range(5))
    assert [r["label"] for r in lines] == det.labels.tolist()
    assert [r["score"] for r in lines] == pytest.approx(det.scores.tolist(), abs=1e-6)
    assert [r["flagged"] for r in lines] == [s > trapped.threshold for s in det.scores.tolist()]
    code, _, err = run_cli(["detect", "--defense", trapdoor_dir, arr, "--fpr", "0.2"], capsys)
    assert code == 2 and "--fpr" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method, extra, needle", [
    ("trapdoor", ["--lambda", "0.5"], "--lambda"),
    ("trapdoor", ["--dropout", "0.2"], "--dropout"),
    ("trapdoor", ["--eval-every", "5"], "--eval-every"),
    ("luring", ["--clean-epochs", "2"], "--clean-epochs"),
    ("ce", ["--false-alarm", "0.1"], "--false-alarm"),
    ("trapdoor", ["--false-alarm", "0.7"], "--false-alarm"),
    ("trapdoor", ["--val-fraction", "0"], "val_fraction"),
])
def test_trapdoor_option_errors(method, extra, needle, target_dir, small_data, tmp_path,
                                capsys):
    code, _, err = run_cli(_train_args(target_dir, tmp_path / "o", method, *extra), capsys)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
