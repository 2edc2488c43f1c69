"""Detection scores (hand-computed values), label-free calibration (exact order statistics),
the calibration split, and build_defense's detector: chosen on held-out training images only,
stored, recalibrated from the stored logits, and old directories still loading."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import luring.defense.build as build_mod
from luring.defense import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RULE,
    LEGACY_DETECTOR,
    SCORES,
    build_defense,
    calibrate,
    calibration_split,
    defense_settings,
    exceedances,
    flag,
    load,
    load_calibration,
    operating_point,
    resolve_settings,
    score,
)
from luring.defense.calibrate import fingerprint
from luring.errors import LuringError
from luring.utils import wilson_interval

LN3, LN4 = math.log(3.0), math.log(4.0)
# Two-class rows, softmax by hand:
#   0: T (0, 0) → p = (1/2, 1/2), label 0;  M (ln 3, 0) → q = (3/4, 1/4), label 0
#   1: T (0, ln 4) → p = (1/5, 4/5), label 1;  M (ln 3, 0) → q = (3/4, 1/4), label 0
#   2: T = M = (2, -1): identical
T2 = torch.tensor([[0.0, 0.0], [0.0, LN4], [2.0, -1.0]], dtype=torch.float64)
M2 = torch.tensor([[LN3, 0.0], [LN3, 0.0], [2.0, -1.0]], dtype=torch.float64)


def _js_by_hand(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    kl = lambda u: sum(a * math.log2(a / c) for a, c in zip(u, m, strict=True) if a > 0)  # noqa: E731
    return math.sqrt(0.5 * kl(p) + 0.5 * kl(q))


def test_scores_hand_values():
    assert score(T2, M2, "paper").tolist() == [0.0, 1.0, 0.0]
    tv = score(T2, M2, "tv")
    assert tv.dtype == torch.float64 and tv.shape == (3,)
    assert tv.tolist() == pytest.approx([0.25, 0.55, 0.0], abs=1e-12)
    # identical logits still leave M's doubt: 1 − e³/(e³ + e⁰) = 1/(1 + e³)
    assert score(T2, M2, "pm").tolist() == pytest.approx([0.25, 0.75, 1 / (1 + math.e ** 3)],
                                                         abs=1e-12)
    js = score(T2, M2, "js")
    want = [_js_by_hand([0.5, 0.5], [0.75, 0.25]), _js_by_hand([0.2, 0.8], [0.75, 0.25]), 0.0]
    assert js.tolist() == pytest.approx(want, abs=1e-7)
    closed = math.sqrt(0.5 * (0.5 * math.log2(16 / 15) + 0.75 * math.log2(6 / 5)
                              + 0.25 * math.log2(2 / 3)))  # m = (5/8, 3/8)
    assert want[0] == pytest.approx(closed, abs=1e-12) and round(closed, 4) == 0.2209


def test_scores_extremes_bounds_and_symmetry():
    far_t = torch.tensor([[1000.0, 0.0]])
    far_m = torch.tensor([[0.0, 1000.0]])
    for rule in SCORES:  # disjoint one-hot distributions: every score is 1, never NaN
        assert score(far_t, far_m, rule).item() == pytest.approx(1.0, abs=1e-12), rule
    g = torch.Generator().manual_seed(0)
    t, m = 3 * torch.randn(200, 10, generator=g), 3 * torch.randn(200, 10, generator=g)
    s = {r: score(t, m, r) for r in SCORES}
    for r, v in s.items():
        assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1, r
    assert torch.allclose(score(m, t, "tv"), s["tv"]) and torch.allclose(score(m, t, "js"),
                                                                        s["js"])
    assert (s["js"] ** 2 <= s["tv"] + 1e-12).all()  # JSD in bits ≤ total variation
    agree = t.argmax(1) == m.argmax(1)
    assert torch.equal(s["paper"].bool(), ~agree)
    # T's label ≠ M's label: M gives it at most ½; agreeing: at least 1/K
    assert 0 < (~agree).sum() < 200 and (s["pm"][~agree] >= 0.5 - 1e-12).all()
    assert (s["pm"][agree] <= 1 - 1 / 10 + 1e-12).all()
    assert torch.equal(score(t.float(), m.double(), "paper"), s["paper"])  # dtypes mix


def test_score_errors_and_flag_ties():
    with pytest.raises(LuringError, match="choose one of"):
        score(T2, M2, "kl")
    with pytest.raises(LuringError, match="differ in shape"):
        score(T2, M2[:2], "tv")
    with pytest.raises(LuringError, match="NaN"):
        score(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), "tv")
    with pytest.raises(LuringError, match=r"\(N, K\)"):
        score(torch.zeros(3), torch.zeros(3), "tv")
    assert flag(torch.tensor([0.2, 0.5, 0.7]), 0.5).tolist() == [False, False, True]


def test_calibrate_exact_order_statistics():
    s = [0.1, 0.2, 0.2, 0.9]
    assert calibrate(s, 0.25) == 0.2            # j = 1: only 0.9 above
    assert calibrate(s, 0.5) == 0.2             # j = 2, but the tie at 0.2: achieved 1/4
    assert calibrate(s, 0.74) == 0.2
    assert calibrate(s, 0.75) == pytest.approx(0.1)  # j = 3: 0.2, 0.2, 0.9 above
    assert calibrate(s, 0.0) == 0.9             # target 0: nothing flagged
    assert calibrate(s, 0.24) == 0.9
    assert calibrate([0.3], 0.5) == 0.3         # one image: j = 0
    # 0.29·100 rounds to 28.999...: the count must still be 29
    assert calibrate(torch.arange(100) / 100, 0.29) == pytest.approx(0.70)
    assert (torch.arange(100) / 100 > calibrate(torch.arange(100) / 100, 0.29)).sum() == 29


def test_calibrate_matches_brute_force_and_errors():
    g = torch.Generator().manual_seed(1)
    for n in (1, 7, 50):
        sc = torch.randint(0, 6, (n,), generator=g).double() / 5  # many ties
        for target in (0.0, 0.03, 0.1, 1 / 7, 0.5, 0.99):
            ok = [v for v in sc.tolist() if (sc > v).double().mean() <= target]
            assert calibrate(sc, target) == min(ok), (n, target)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(LuringError, match=r"\[0, 1\)"):
            calibrate([0.1], bad)
    with pytest.raises(LuringError, match="at least one"):
        calibrate([], 0.05)


def test_exceedances_hand_computed():
    assert exceedances(400, 0.05) == 20 and exceedances(4, 0.25) == 1
    # P(Bin(400, 0.05) ≤ 14) = 0.0990 ≤ 0.1 < P(≤ 15) = 0.1499
    assert exceedances(400, 0.05, 0.9) == 14
    # n = 100, 10%: P(Bin ≤ 5) = 0.0576, P(≤ 6) = 0.1172 → 5 at 0.9; P(≤ 3) = 0.0078,
    # P(≤ 4) = 0.0237 → 3 at 0.99
    assert exceedances(100, 0.1, 0.9) == 5 and exceedances(100, 0.1, 0.99) == 3
    assert exceedances(20, 0.1, 0.9) == 0  # 0.9^20 = 0.12 > 0.1: flag no held-out image
    assert exceedances(0, 0.05, 0.9) == 0 and exceedances(50, 0.0, 0.9) == 0
    s = torch.arange(100) / 100
    assert calibrate(s, 0.1, 0.9) == pytest.approx(0.94)  # 5 above: 0.95 ... 0.99
    for bad in (0.0, 1.0, -1.0, float("nan")):
        with pytest.raises(LuringError, match="confidence"):
            exceedances(10, 0.05, bad)


def test_confidence_bounds_the_false_alarm_rate_on_new_images():
    # uniform clean scores: a threshold τ has a false-alarm rate of exactly 1 − τ on new images
    g = torch.Generator().manual_seed(0)
    draws = torch.rand(4000, 200, generator=g, dtype=torch.float64)
    over = {}
    for conf in (None, 0.9):
        j = exceedances(200, 0.05, conf)
        tau = draws.sort(dim=1).values[:, 200 - j - 1]
        over[conf] = ((1 - tau) > 0.05).double().mean().item()
    assert over[0.9] <= 0.1 + 0.015        # the guarantee (4,000 draws: ± 0.015)
    assert over[None] > 0.4                # the plain quantile: over the target about half the time


def test_operating_point_rules():
    t = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.9], [3.0, 0.0]])
    m = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    p = operating_point(t, m, "paper", None)
    assert p == {"rule": "paper", "threshold": 0.0, "target_fpr": None, "confidence": None,
                 "heldout_fpr": 0.25, "heldout_k": 1, "n": 4}
    op = operating_point(t, m, "tv", 0.3)
    s = score(t, m, "tv")
    assert op["threshold"] == calibrate(s, 0.3) and op["heldout_k"] == 1
    assert op["heldout_fpr"] == 0.25 <= op["target_fpr"] == 0.3
    assert operating_point(t, m, "paper", 0.1)["threshold"] == 1.0  # 1/4 > 0.1: flag none
    with pytest.raises(LuringError, match="needs a target"):
        operating_point(t, m, "tv", None)


def test_calibration_split_and_fingerprint():
    fit, cal = calibration_split(100, 0.1, seed=0)
    assert len(cal) == 10 and len(fit) == 90 and cal.dtype == torch.long
    assert torch.equal(torch.sort(torch.cat([fit, cal])).values, torch.arange(100))
    assert torch.equal(cal, cal.sort().values)
    again = calibration_split(100, 0.1, seed=0)
    assert torch.equal(again[1], cal) and not torch.equal(calibration_split(100, 0.1, 1)[1], cal)
    assert len(calibration_split(5, 0.01, 0)[1]) == 1  # at least one image
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(LuringError, match="fraction"):
            calibration_split(100, bad, 0)
    with pytest.raises(LuringError, match="too few"):
        calibration_split(3, 0.5, 0)
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert fingerprint(x) == fingerprint(x.clone()) != fingerprint(x[:3])
    assert len(fingerprint(x)) == 64


# ---------------------------------------------------------------- build_defense's detector

META = {"architecture": "mnist-target", "input_shape": [1, 28, 28], "num_classes": 10}


def _settings():
    s = defense_settings("mnist", "luring", "quick")
    return resolve_settings(s, epochs=1, batch_size=32, eval_every=4, val_fraction=0.25)


@pytest.fixture(scope="module")
def built(trained_mnist_target, mnist5k, tmp_path_factory):
    """build_defense on 200 training images with the calls to the trainer and to inference
    recorded: which images P trains on and which images any logits are computed of."""
    m, x_te, y_te = trained_mnist_target
    x_tr = mnist5k[0][torch.randperm(4000, generator=torch.Generator().manual_seed(5))[:200]]
    seen: dict[str, list] = {"train": [], "logits": []}
    real_train, real_logits = build_mod.train_defense, build_mod.predict_logits

    def train(target, images, **kw):
        seen["train"].append(images)
        return real_train(target, images, **kw)

    def logits(model, images, *a, **k):
        seen["logits"].append(images)
        return real_logits(model, images, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(build_mod, "train_defense", train)
    mp.setattr(build_mod, "predict_logits", logits)
    try:
        out, trained, clean = build_defense(
            tmp_path_factory.mktemp("built") / "d", m, META, x_tr, (x_te[:300], y_te[:300]),
            method="luring", settings=_settings(), family="mnist", dataset="mnist-5k", seed=0,
            target_fpr=0.1)
    finally:
        mp.undo()
    return out, trained, clean, x_tr, seen


def test_calibration_reads_only_heldout_training_images(built, trained_mnist_target):
    out, trained, clean, x_tr, seen = built
    _, x_te, _ = trained_mnist_target
    fit, cal = calibration_split(len(x_tr), 0.1, seed=0)
    assert len(seen["train"]) == 1 and torch.equal(seen["train"][0], x_tr[fit])
    # every image that logits were computed of, here, is a calibration image; none is a test one
    assert len(seen["logits"]) == 2
    for images in seen["logits"]:
        assert torch.equal(images, x_tr[cal])
        assert not any(torch.equal(images[i], x_te[j]) for i in range(3) for j in range(300))
    meta = json.loads((out / "defense.json").read_text())
    det = meta["detector"]
    assert det["rule"] == DEFAULT_RULE and det["target_fpr"] == 0.1 and det["n"] == 20
    sp = det["split"]
    assert sp["n"] == 20 and sp["n_fit"] == 180 and sp["n_training_images"] == 200
    assert sp["fingerprint"] == fingerprint(x_tr[cal]) and sp["labels_read"] is False
    stored = load_calibration(out)
    assert torch.equal(stored["index"], cal)
    with torch.no_grad():
        t_cal, m_cal = trained.augmented(x_tr[cal]), trained.target(x_tr[cal])
    assert torch.allclose(stored["t_logits"], t_cal, atol=1e-5)
    assert torch.allclose(stored["m_logits"], m_cal, atol=1e-5)
    s = score(stored["t_logits"], stored["m_logits"], DEFAULT_RULE)
    assert det["confidence"] == DEFAULT_CONFIDENCE == 0.9
    assert det["threshold"] == calibrate(s, 0.1, 0.9)
    # 20 images, 10% at confidence 0.9: P(Bin(20, 0.1) = 0) = 0.9^20 = 0.12 > 0.1, so none
    assert det["heldout_k"] == int((s > det["threshold"]).sum()) == 0
    assert det["heldout_fpr"] == det["heldout_k"] / 20


def test_stored_operating_point_on_test_images(built, trained_mnist_target):
    out, _, clean, _, _ = built
    _, x_te, y_te = trained_mnist_target
    d = load(out)
    det = d.detect(x_te[:300])
    assert det.rule == DEFAULT_RULE and det.threshold == d.detector["threshold"]
    assert torch.equal(det.flagged, det.score > det.threshold)
    assert det.flagged.double().mean().item() == pytest.approx(
        clean["detector_false_alarm_rate"])
    assert (det.t_label != det.m_label).double().mean().item() == pytest.approx(
        clean["false_alarm_rate"])
    lo, hi = clean["intervals"]["detector_false_alarm_rate"]
    assert 0 <= lo <= clean["detector_false_alarm_rate"] <= hi <= 1
    assert clean["detector"]["threshold"] == d.detector["threshold"]
    t, m, flagged = det  # still the old named 3-tuple, with .score, .rule, .threshold added
    assert torch.equal(flagged, det.flagged) and torch.equal(t, d.predict(x_te[:300]))
    assert torch.equal(m, det.m_label) and det[2] is det.flagged and len(det) == 3
    assert "rule='js'" in repr(det)
    assert "operating point" in (out / "report.md").read_text()


def test_recalibration_uses_only_the_stored_logits(built, trained_mnist_target, tmp_path):
    out, _, _, _, _ = built
    _, x_te, _ = trained_mnist_target
    d = load(out)
    cal = load_calibration(out)
    for rule, fpr in (("tv", 0.2), ("pm", None), (DEFAULT_RULE, 0.3), ("paper", 0.5)):
        op = d.operating_point(rule, fpr)
        target = 0.1 if fpr is None else fpr  # no fpr: the stored target
        assert op["source"] == "recalibrated" and op["target_fpr"] == target
        assert op["threshold"] == calibrate(score(cal["t_logits"], cal["m_logits"], rule),
                                            target, 0.9)  # the stored confidence
        a, b = d.detect(x_te[:20], rule=rule, fpr=fpr), d.detect(x_te[200:260], rule=rule,
                                                                  fpr=fpr)
        assert a.threshold == b.threshold == op["threshold"]  # not chosen on the inputs
    paper = d.operating_point("paper")
    assert paper["threshold"] == 0.0 and paper["source"] == "paper" and paper["n"] == 20
    assert torch.equal(d.detect(x_te[:50], rule="paper").flagged,
                       d.predict(x_te[:50]) != d.detect(x_te[:50]).m_label)
    with pytest.raises(LuringError, match=r"\(0, 1\)"):
        d.operating_point(fpr=1.0)
    # a copy without calibration.safetensors keeps the stored point but cannot recalibrate
    cp = tmp_path / "copy"
    shutil.copytree(out, cp)
    (cp / "calibration.safetensors").unlink()
    d2 = load(cp)
    assert d2.operating_point()["threshold"] == d.detector["threshold"]
    with pytest.raises(LuringError, match="no calibration data"):
        d2.detect(x_te[:5], fpr=0.2)
    (cp / "calibration.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LuringError, match="cannot be read"):
        load(cp).detect(x_te[:5], rule="tv")


def test_old_directory_without_detector_loads_with_paper_rule(built, trained_mnist_target,
                                                              tmp_path):
    out, _, _, _, _ = built
    _, x_te, _ = trained_mnist_target
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "calibration.safetensors").unlink()
    meta = json.loads((old / "defense.json").read_text())
    del meta["detector"]
    (old / "defense.json").write_text(json.dumps(meta))
    d = load(old)
    assert d.detector == LEGACY_DETECTOR and "paper rule" in d.detector["note"]
    det = d.detect(x_te[:100])
    assert det.rule == "paper" and det.threshold == 0.0
    assert torch.equal(det.flagged, det.t_label != det.m_label)
    assert torch.equal(det.score, det.flagged.double())
    with pytest.raises(LuringError, match="--rule paper"):
        d.detect(x_te[:5], rule="js")


def test_build_without_calibration_split(trained_mnist_target, mnist5k, tmp_path):
    m, x_te, y_te = trained_mnist_target
    x_tr = mnist5k[0][:96]
    out, _, clean = build_defense(
        tmp_path / "d", m, META, x_tr, (x_te[:50], y_te[:50]), method="auto",
        settings=resolve_settings(defense_settings("mnist", "auto", "quick"), epochs=1,
                                  batch_size=32, val_fraction=0.0),
        family="mnist", dataset="mnist-5k", seed=0, calibration_fraction=0.0)
    assert "detector" not in json.loads((out / "defense.json").read_text())
    assert not (out / "calibration.safetensors").exists()
    assert "detector_false_alarm_rate" not in clean
    assert load(out).detector["rule"] == "paper"
    with pytest.raises(LuringError, match="detection score"):
        build_defense(tmp_path / "e", m, META, x_tr, (x_te[:5], y_te[:5]), method="auto",
                      settings=_settings(), family="mnist", dataset="mnist-5k", seed=0,
                      detector_rule="entropy")


def test_evaluate_clean_operating_point_on_a_model_pair():
    from torch import nn

    from luring.defense import evaluate_clean

    class Fixed(nn.Module):  # returns preset logits row by row (images hold the row index)
        def __init__(self, logits):
            super().__init__()
            self.logits = nn.Parameter(logits, requires_grad=False)

        def forward(self, x):
            return self.logits[(x.flatten(1)[:, 0] * 10).round().long()]

    x = (torch.arange(4, dtype=torch.float32) / 10).view(4, 1, 1, 1)
    t = Fixed(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.9], [3.0, 0.0]]))
    m = Fixed(torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]]))
    y = torch.tensor([0, 0, 1, 0])
    tv = score(t.logits, m.logits, "tv")  # (0, 0.762, 0.206, 0): two above 0.1
    out = evaluate_clean((m, t), x, y, detector={"rule": "tv", "threshold": 0.1})
    assert out["false_alarm_rate"] == 0.25 and out["accuracy_m"] == 0.75
    assert out["detector_false_alarm_rate"] == 0.5 == (tv > 0.1).double().mean().item()
    assert tuple(out["intervals"]["detector_false_alarm_rate"]) == wilson_interval(2, 4)
    assert out["detector"]["rule"] == "tv" and "detector_false_alarm_rate" not in \
        evaluate_clean((m, t), x, y)
    with pytest.raises(LuringError, match="numeric 'threshold'"):
        evaluate_clean((m, t), x, y, detector={"rule": "tv"})
