"""`luring reproduce` on a user's own image folders (family imagefolder): M is the user's
(--target), P is the default for the images' size, the ε are the common 4/255, 8/255, 16/255,
and the run writes its tables with the departures from the paper stated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import luring.data as ldata
from luring.cli.main import main
from luring.experiments.profiles import resolve_profile
from luring.models import save_checkpoint
from luring.models.train import target_settings, train_target

pytestmark = pytest.mark.usefixtures("one_thread")

DATASET = "imagefolder-1x28x28"


def _tree(root: Path) -> Path:
    """3 classes of 28×28 grey PNGs: a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 12)):
        for c, name in enumerate(("left", "middle", "right")):
            for i in range(n):
                arr = rng.integers(0, 50, (28, 28))
                arr[:, 4 + 8 * c:10 + 8 * c] += 200
                p = root / split / name / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8), mode="L").save(p)
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = _tree(tmp_path_factory.mktemp("tree"))
    x, y = ldata.load(DATASET, "train", root)
    model, _ = train_target(x, y, target_settings("mnist", epochs=2), num_classes=3, seed=0)
    target = tmp_path_factory.mktemp("m")
    save_checkpoint(model, target, architecture="mnist-target", input_shape=(1, 28, 28),
                    classes=["left", "middle", "right"], dataset=DATASET)
    out = tmp_path_factory.mktemp("run") / "r"
    code = main(["reproduce", "--dataset", DATASET, "--data-dir", str(root), "--profile",
                 "smoke", "--target", str(target), "--device", "cpu", "--out", str(out)])
    assert code == 0
    return root, target, out


def test_profile_of_the_natural_image_families():
    f = resolve_profile("paper", "imagefolder")
    assert f["eps"] == [4 / 255, 8 / 255, 16 / 255] and f["approaches"] == ["stack", "ce",
                                                                         "luring"]
    i = resolve_profile("paper", "imagenet")
    assert i["eps"] == [4 / 255, 5 / 255, 6 / 255] and i["approaches"] == ["ce", "luring"]
    assert i["defend"]["n"] == 1000


def test_reproduce_on_image_folders(folder_run):
    _, _, out = folder_run
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == DATASET and res["family"] == "imagefolder"
    rows = [r for r in res["rows"] if r["experiment"] == "defend" and r["attack"] == "mim-w"]
    assert {r["approach"] for r in rows} == {"stack", "ce", "luring"}
    assert sorted({round(r["eps"] * 255) for r in rows}) == [4, 8, 16]
    for r in rows:
        assert 0 <= r["ac_mop"] <= r["ac_m"] <= 1 and r["n"] >= 1
    meta = json.loads((out / "models" / "luring-s0" / "defense.json").read_text())
    assert meta["component_architecture"] == "default-component-28x28"
    diffs = " ".join(res["differences_from_paper"])
    assert "the user's model (--target)" in diffs and "not in the paper" in diffs
    report = (out / "report.md").read_text()
    assert "## Defense" in report and (out / "table_clean.csv").exists()


def test_reproduce_needs_the_users_target(folder_run, tmp_path, capsys):
    root, _, _ = folder_run
    code = main(["reproduce", "--dataset", DATASET, "--data-dir", str(root), "--profile",
                 "smoke", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "import-target" in err and "--target" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
