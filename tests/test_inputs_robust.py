"""Bad or unusual inputs give one-line errors or correct values (issue #26): 16-bit PNGs
scaled by 1/65535 (``detect`` and image folders), NaN/Inf weights refused, empty arrays named,
a chance-level ``import-target`` warned about, and ``reproduce``'s defend experiment without
an eligible image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line, run_cli
from PIL import Image
from safetensors.torch import save_file

from luring.defense import TrainedDefense, defense_settings, save_defense
from luring.defense.inputs import read_inputs
from luring.errors import LuringError
from luring.models import build, load_checkpoint, save_checkpoint
from luring.models.importing import chance_warning

pytestmark = pytest.mark.usefixtures("one_thread")
META = {"architecture": "mnist-target", "input_shape": [1, 28, 28], "num_classes": 10}


def grey16(seed: int = 0, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A 16-bit grey image using the whole 0-65535 range."""
    a = np.random.default_rng(seed).integers(0, 65536, size=shape, dtype=np.uint16)
    a.flat[0], a.flat[1] = 0, 65535
    return a


@pytest.fixture(scope="module")
def defense_dir(tmp_path_factory):
    """An untrained M∘P written as a defense directory (what `detect` reads)."""
    torch.manual_seed(0)
    tr = TrainedDefense(method="luring", target=build("mnist-target").eval(),
                        component=build("mnist-component").eval(), head=None,
                        settings=defense_settings("mnist", "luring", "quick"),
                        selection={"rule": "last", "epoch": 0}, history=[], seconds=0.0,
                        component_arch="mnist-component", component_kwargs={"dropout": 0.0})
    d = tmp_path_factory.mktemp("defense") / "d"
    save_defense(d, tr, target_meta=META, dataset="mnist-5k", seed=0)
    return d


def test_16_bit_png_is_scaled_by_65535(defense_dir, tmp_path, capsys):
    a = grey16()
    png = tmp_path / "g16.png"
    Image.fromarray(a).save(png)
    assert Image.open(png).mode == "I;16"
    want = torch.from_numpy(a.astype(np.float32) / 65535.0)
    (_, x1), = read_inputs([png], (1, 28, 28))
    assert x1.dtype == torch.float32 and torch.allclose(x1[0, 0], want, atol=1e-6)
    assert float(x1.max()) == 1.0 and float(x1.min()) == 0.0
    (_, x3), = read_inputs([png], (3, 28, 28))  # grey to RGB: the same plane three times
    assert x3.shape == (1, 3, 28, 28) and torch.equal(x3[0, 0], x3[0, 2])
    assert torch.allclose(x3[0, 1], want, atol=1e-6)
    # detect on the PNG answers what it answers on the same values as a float array
    arr = tmp_path / "same.npy"
    np.save(arr, want.numpy()[None, None])
    code, out, err = run_cli(["detect", "--defense", defense_dir, png, arr, "--device", "cpu"],
                             capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 2
    assert {k: v for k, v in rows[0].items() if k != "input"} == pytest.approx(
        {k: v for k, v in rows[1].items() if k != "input"}, abs=1e-6)


def test_16_bit_png_in_an_image_folder(tmp_path):
    from luring.data.imagefolder import ImageFolderDataset

    arrays = {}
    for c, seed in (("a", 1), ("b", 2)):
        (tmp_path / c).mkdir()
        arrays[c] = grey16(seed, (8, 8))
        Image.fromarray(arrays[c]).save(tmp_path / c / "x.png")
    for channels in (1, 3):
        ds = ImageFolderDataset(tmp_path, size=(8, 8), channels=channels, resize=None)
        for i, c in enumerate(("a", "b")):
            x, label = ds[i]
            want = torch.from_numpy(arrays[c].astype(np.float32) / 65535.0)
            assert label == i and x.shape == (channels, 8, 8)
            assert torch.allclose(x[-1], want, atol=1e-6) and torch.equal(x[0], x[-1])


def _weights(tmp_path: Path, bad: float | None, name: str = "w.safetensors") -> Path:
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build("mnist-target").state_dict().items()}
    if bad is not None:
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key].view(-1)[3] = bad
    p = tmp_path / name
    save_file(state, str(p))
    return p


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_are_refused(bad, tmp_path, capsys):
    w = _weights(tmp_path, bad)
    out = tmp_path / "m"
    code, _, err = run_cli(["import-target", "--dataset", "mnist-5k", "--weights", w,
                            "--images", "20", "--out", out, "--device", "cpu"], capsys)
    assert code == 2 and "NaN or infinite" in err and str(w) in err and one_line(err)
    assert not out.exists()
    # a checkpoint whose weights file was damaged that way is refused on loading
    d = tmp_path / "ckpt"
    save_checkpoint(build("mnist-target"), d, "model", architecture="mnist-target",
                    input_shape=(1, 28, 28), num_classes=10)
    (d / "model.safetensors").write_bytes(w.read_bytes())
    with pytest.raises(LuringError, match="NaN or infinite") as info:
        load_checkpoint(d, "model")
    assert "\n" not in str(info.value)


def test_empty_arrays_are_named(defense_dir, tmp_path, capsys):
    cases = {"empty.npy": lambda p: np.save(p, np.zeros((0, 1, 28, 28), np.float32)),
             "empty_u8.npy": lambda p: np.save(p, np.zeros((0, 28, 28), np.uint8)),
             "empty.npz": lambda p: np.savez(p, x=np.zeros((0, 1, 28, 28), np.float32)),
             "flat.npy": lambda p: np.save(p, np.zeros((0,), np.float32))}
    for name, write in cases.items():
        p = tmp_path / name
        write(p)
        code, out, err = run_cli(["detect", "--defense", defense_dir, p], capsys)
        assert code == 2 and one_line(err) and out == "", err
        assert f"{p} is empty" in err and "no images" in err
    none = tmp_path / "none.npz"
    np.savez(none)
    code, _, err = run_cli(["detect", "--defense", defense_dir, none], capsys)
    assert code == 2 and "holds no arrays" in err and one_line(err)


def test_import_target_warns_at_chance_level(tmp_path, capsys):
    w = _weights(tmp_path, None)  # an untrained network: about 10% on 10 classes
    out = tmp_path / "m"
    code, stdout, err = run_cli(["import-target", "--dataset", "mnist-5k", "--weights", w,
                                 "--images", "50", "--out", out, "--device", "cpu"], capsys)
    assert code == 0 and "test accuracy" in stdout
    acc = json.loads((out / "results.json").read_text())["test_accuracy"]
    assert acc <= 0.15
    assert err.startswith("luring: WARNING: the measured test accuracy") and one_line(err)
    for cause in ("class order", "normalisation", "--normalize", "--dataset"):
        assert cause in err
    assert "**Warning:**" in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["warning"] in err
    assert chance_warning(0.15, 100, 10, "x") is not None
    assert chance_warning(0.16, 100, 10, "x") is None
    assert chance_warning(0.0015, 100, 1000, "x") is not None


def test_defend_experiment_without_eligible_images():
    from types import SimpleNamespace

    from luring.experiments import defend

    none = (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), {})
    ctx = SimpleNamespace(settings={"defend": {"n": 10}, "eps": [0.3]}, seed=0,
                          target=build("mnist-target").eval(), defenses={"luring": {0: object()}},
                          images=lambda n, tag: none)
    with pytest.raises(LuringError, match="no test image to attack") as info:
        defend.run(ctx)
    assert "\n" not in str(info.value)
