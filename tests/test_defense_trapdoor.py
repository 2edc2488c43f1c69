"""Trapdoor (Shan et al. 2019) as a defense: triggers, settings, the detector's calibration, a
trapdoored model trained on the real mnist-5k data (its trapdoors work, its false alarms match
the target), the directory round trip and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from luring.defense.trapdoor import (
    TrappedModel,
    batched_features,
    calibrate_threshold,
    make_triggers,
    penultimate_layer,
    resolve_trapdoor_settings,
    trapdoor_settings,
)
from luring.defense.trapdoor_store import load_trapdoor, save_trapdoor
from luring.defense.trapdoor_train import evaluate_trapdoor, train_trapdoor
from luring.errors import LuringError
from luring.models import build

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def trapped(mnist5k) -> TrappedModel:
    """Trained once: the quick profile cut to 3 trapdoor epochs (held-out trapdoor success
    0.95 at this point of the quick profile's run), all 4,000 training digits, seed 0."""
    x_tr, y_tr, _, _ = mnist5k
    s = resolve_trapdoor_settings(trapdoor_settings("mnist", "quick"), trap_epochs=3)
    return train_trapdoor(x_tr, y_tr, settings=s, seed=0)


@pytest.fixture(scope="module")
def clean(trapped, mnist5k) -> dict:
    """Clean figures on every other test image (500: 50 per class)."""
    _, _, x_te, y_te = mnist5k
    return evaluate_trapdoor(trapped, x_te[::2], y_te[::2])


def test_settings_follow_the_reference_code():
    s = trapdoor_settings("mnist", "paper")
    assert (s["clean_epochs"], s["trap_epochs"], s["batch_size"], s["lr"]) == (10, 10, 32, 1e-3)
    assert (s["inject_ratio"], s["squares"], s["square_size"], s["mask_ratio"]) == \
        (0.5, 7, 3, 0.1)
    assert s["false_alarm"] == 0.05 and s["architecture"] == "mnist-target"
    c = trapdoor_settings("cifar10", "paper")
    assert c["lr_milestones"] == [[11, 1e-4]] and c["architecture"] == "cifar10-target"
    q = trapdoor_settings("mnist", "quick")
    assert (q["clean_epochs"], q["trap_epochs"], q["lr_milestones"]) == (0, 6, [[4, 1e-4]])
    assert resolve_trapdoor_settings(q, lr=None, trap_epochs=2)["trap_epochs"] == 2
    faster = resolve_trapdoor_settings(q, lr=3e-3)
    assert faster["lr"] == 3e-3 and faster["lr_milestones"] == [[4, pytest.approx(3e-4)]]


@pytest.mark.parametrize("override, word", [
    ({"trap_epochs": 0}, "trap_epochs"), ({"inject_ratio": 1.5}, "inject_ratio"),
    ({"mask_ratio": 0.0}, "mask_ratio"), ({"false_alarm": float("nan")}, "false_alarm"),
    ({"batch_size": 2.5}, "batch_size"), ({"colour": 1}, "colour"),
    ({"architecture": "mnist-component"}, "target architecture"),
    ({"architecture": "resnet"}, "unknown architecture"),
])
def test_bad_settings_are_one_line_errors(override, word):
    with pytest.raises(LuringError, match=word) as info:
        resolve_trapdoor_settings(trapdoor_settings("mnist", "quick"), **override)
    assert "\n" not in str(info.value)


def test_unknown_family_or_profile():
    with pytest.raises(LuringError, match="family"):
        trapdoor_settings("imagenet")
    with pytest.raises(LuringError, match="profile"):
        trapdoor_settings("mnist", "fast")


def test_triggers_shape_values_and_seeding():
    tr = make_triggers(10, (1, 28, 28), seed=3)
    assert tr.masks.shape == tr.patterns.shape == (10, 1, 28, 28)
    assert len(tr.masks.unique()) == 2 and float(tr.masks.min()) == 0.0
    assert torch.allclose(tr.masks[tr.masks > 0], torch.tensor(0.1))  # the transparency
    on = (tr.masks > 0).flatten(1).sum(1)
    assert bool(((on >= 9) & (on <= 7 * 9)).all())  # 7 squares of 3x3, possibly overlapping
    assert float(tr.patterns[tr.masks == 0].abs().max()) == 0.0
    assert 0.0 <= float(tr.patterns.min()) and float(tr.patterns.max()) <= 1.0
    again = make_triggers(10, (1, 28, 28), seed=3)
    assert torch.equal(tr.masks, again.masks) and torch.equal(tr.patterns, again.patterns)
    other = make_triggers(10, (1, 28, 28), seed=4)
    assert not torch.equal(tr.masks, other.masks)
    assert not torch.equal(tr.masks[0], tr.masks[1])  # one trigger per label
    colour = make_triggers(2, (3, 32, 32), seed=0)  # one value per pixel for all channels
    assert torch.equal(colour.patterns[:, 0], colour.patterns[:, 2])


def test_apply_is_the_reference_blend():
    tr = make_triggers(3, (1, 8, 8), squares=2, square_size=2, mask_ratio=0.25, seed=1)
    x = torch.full((2, 1, 8, 8), 0.6)
    out = tr.apply(x, torch.tensor([2, 0]))
    m, p = tr.masks, tr.patterns
    on = m[2] > 0
    assert 4 <= int(on.sum()) <= 8  # two 2x2 squares
    assert torch.allclose(out[0][on], 0.75 * 0.6 + 0.25 * p[2][on])
    assert torch.equal(out[0][~on], x[0][~on])  # outside the trigger: unchanged
    assert torch.allclose(out[1], (1 - m[0]) * 0.6 + m[0] * p[0])
    assert torch.equal(tr.apply(x, 1), tr.apply(x, torch.tensor([1, 1])))


def test_calibrate_threshold_hand_computed():
    scores = torch.randperm(400, generator=torch.Generator().manual_seed(0)).float() / 400
    thr = calibrate_threshold(scores, 0.05)
    assert thr == pytest.approx(379 / 400)  # the 380th smallest of 0, 1/400, ..., 399/400
    assert int((scores > thr).sum()) == 20
    assert calibrate_threshold(torch.tensor([0.1, 0.5, 0.3]), 0.05) == pytest.approx(0.5)
    assert calibrate_threshold(torch.arange(10.0), 0.2) == 7.0  # two above
    with pytest.raises(LuringError, match="held-out"):
        calibrate_threshold(torch.empty(0), 0.05)


def test_signatures_are_read_before_the_last_dense_layer():
    torch.manual_seed(0)
    m = build("mnist-target").eval()
    name, layer = penultimate_layer(m)
    assert name == "classifier.3" and layer.in_features == 1024
    x = torch.rand(5, 1, 28, 28)
    logits, feats = batched_features(m, x, 2, "cpu")
    with torch.no_grad():
        want = m.classifier[:3](m.features(x))
        assert torch.allclose(feats, want, atol=1e-6) and torch.allclose(logits, m(x), atol=1e-6)
    assert bool((feats >= 0).all())  # after the ReLU
    assert penultimate_layer(build("svhn-target"))[0] == "classifier.9"


def test_trapdoors_work(clean):
    """≥ 90% of clean test images of other labels stamped with trigger t are classified t,
    averaged over the ten labels t (each label ≥ 60%; seed 0 gives 93.4%, worst 74.9%)."""
    assert clean["n"] == 500 and clean["n_stamped"] == 4500
    assert clean["trapdoor_success"] >= 0.90, clean["trapdoor_success_per_label"]
    assert clean["trapdoor_success_min"] >= 0.60
    assert clean["accuracy"] >= 0.80
    # Stamped images resemble their label's signature: flagged far more often than clean ones.
    assert clean["trigger_detection"] > 3 * clean["false_alarm_rate"]


def test_false_alarms_match_the_calibration_target(trapped, mnist5k):
    x_tr, _, x_te, _ = mnist5k
    cal = trapped.meta["calibration"]
    assert cal["n"] == 400 and cal["false_alarm_target"] == 0.05
    # On the held-out images the threshold was set on: exactly floor(0.05 * 400) = 20 flagged.
    det = trapped.detect(x_tr[trapped.meta["held_out_indices"]])
    assert int(det.flagged.sum()) == cal["flagged"] == 20
    assert float(det.scores.max()) <= 1.0 + 1e-6 and float(det.scores.min()) >= -1e-6
    # On 1,000 unseen test images: within 3 standard deviations of the binomial spread of the
    # calibrated threshold (n = 400) and of the test count (n = 1000): |rate - 0.05| ≤ 0.039.
    rate = float(trapped.detect(x_te).flagged.float().mean())
    assert abs(rate - 0.05) <= 3 * math.sqrt(0.05 * 0.95 * (1 / 400 + 1 / 1000))


def test_save_load_round_trip(trapped, clean, mnist5k, tmp_path):
    _, _, x_te, y_te = mnist5k
    d = save_trapdoor(tmp_path / "td", trapped, dataset="mnist-5k", classes=CLASSES,
                      clean=clean)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["config.json", "defense.json", "model.json", "model.safetensors",
                     "report.md", "results.json", "trapdoor.safetensors"]
    meta = json.loads((d / "defense.json").read_text())
    assert (meta["format"], meta["method"]) == ("luring-defense/1", "trapdoor")
    assert meta["threshold"] == trapped.threshold
    assert meta["calibration"]["false_alarm_rate"] == 0.05
    assert (meta["detector"]["heldout_k"], meta["detector"]["n"]) == (20, 400)
    assert meta["clean"]["accuracy"] == clean["accuracy"]
    assert meta["triggers"]["mask_ratio"] == pytest.approx(0.1)
    assert meta["config"]["trap_epochs"] == 3
    assert save_trapdoor(d, trapped, dataset="mnist-5k", classes=CLASSES, clean=clean) == d
    back = load_trapdoor(d)  # from the rewritten directory
    x = torch.cat([x_te[:60], trapped.apply_trigger(x_te[:60], 4)])
    a, b = trapped.detect(x), back.detect(x)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.flagged, b.flagged)
    assert torch.equal(back.triggers.masks, trapped.triggers.masks)
    assert torch.equal(back.apply_trigger(x_te[:3], 7), trapped.apply_trigger(x_te[:3], 7))
    assert evaluate_trapdoor(back, x_te[:50], y_te[:50])["accuracy"] == \
        evaluate_trapdoor(trapped, x_te[:50], y_te[:50])["accuracy"]


def test_bad_inputs_are_one_line_errors(trapped, mnist5k, tmp_path):
    _, _, x_te, _ = mnist5k
    x = x_te[:4]
    cases = [
        (lambda: trapped.detect(torch.rand(2, 3, 32, 32)), "expects"),
        (lambda: trapped.detect(x * 255), "outside"),
        (lambda: trapped.detect(x[0]), "4-D"),
        (lambda: trapped.detect(x[:0]), "no images"),
        (lambda: trapped.apply_trigger(x, 10), r"\[0, 9\]"),
        (lambda: trapped.apply_trigger(x, 2.0), "int"),
        (lambda: trapped.apply_trigger(x, torch.tensor([1, 2])), "shape"),
        (lambda: train_trapdoor(x, torch.tensor([0.0, 1, 0, 1])), "int64"),
        (lambda: train_trapdoor(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])),
         "architecture"),
        (lambda: evaluate_trapdoor(trapped, x, torch.tensor([1, 2])), "labels"),
        (lambda: load_trapdoor(tmp_path / "missing"), "does not exist"),
    ]
    for call, word in cases:
        with pytest.raises(LuringError, match=word) as info:
            call()
        assert "\n" not in str(info.value)


def test_load_rejects_other_and_damaged_directories(trapped, tmp_path):
    luring_dir = tmp_path / "luring"
    luring_dir.mkdir()
    (luring_dir / "defense.json").write_text(json.dumps({"format": "luring-defense/1",
                                                         "method": "luring"}))
    with pytest.raises(LuringError, match="not a trapdoor"):
        load_trapdoor(luring_dir)
    d = save_trapdoor(tmp_path / "td", trapped, dataset="mnist-5k", classes=CLASSES)
    (d / "trapdoor.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(LuringError, match="safetensors"):
        load_trapdoor(d)
    from safetensors.torch import save_file

    save_file({"masks": trapped.triggers.masks, "patterns": trapped.triggers.patterns,
               "signatures": trapped.signatures[:, :10].contiguous()},
              str(d / "trapdoor.safetensors"))
    with pytest.raises(LuringError, match="is not the file this defense was written with"):
        load_trapdoor(d)  # the fingerprint recorded in defense.json
    meta = json.loads((d / "defense.json").read_text())
    del meta["fingerprints"]  # as written before fingerprints: the shapes are still checked
    (d / "defense.json").write_text(json.dumps(meta))
    with pytest.raises(LuringError, match="does not match"):
        load_trapdoor(d)


def test_never_overwrites_a_target_directory(trapped, tmp_path):
    from luring.models import save_checkpoint

    save_checkpoint(build("mnist-target"), tmp_path, "model", architecture="mnist-target",
                    input_shape=(1, 28, 28), num_classes=10)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(LuringError, match="another model"):
        save_trapdoor(tmp_path, trapped, dataset="mnist-5k")
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
