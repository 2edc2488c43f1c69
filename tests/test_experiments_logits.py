"""The logits analysis (eq. 5, table 10) on a model with many classes: Ω on the 10 classes M
scores highest, keyed by their class ids; on 10 classes or fewer, every class as before."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from luring.experiments.logits import LOGIT_CLASSES, logit_classes, run_logits
from luring.experiments.store import RunDir
from luring.metrics import logit_gradients, omega, omega_comparison

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(k: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, 16, generator=g))
        lin.bias.copy_(torch.arange(k, dtype=torch.float32) * 0.5)  # later classes score higher
    return nn.Sequential(nn.Flatten(), lin).eval()


class _D:
    def __init__(self, t):
        self.augmented = t


def test_classes_of_the_analysis():
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert LOGIT_CLASSES == 10
    assert logit_classes(_linear(10, 0), x) is None  # the paper's data sets: every class
    m = _linear(13, 0)
    with torch.no_grad():
        mean = m(x).mean(0)
    expected = sorted(sorted(range(13), key=lambda c: -float(mean[c]))[:10])
    assert logit_classes(m, x) == expected and len(expected) == 10
    assert logit_classes(m, x[:0]) is None


def test_run_logits_on_many_classes_matches_the_hand_computation(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 4, 4, generator=g)
    m, t_luring, t_ce = _linear(13, 0), _linear(13, 1), _linear(13, 2)
    defenses = {"luring": _D(t_luring), "ce": _D(t_ce)}
    with RunDir(tmp_path / "r") as run:
        out = run_logits(run, m, defenses, x, {}, {"n": 5})
    classes = logit_classes(m, x)
    assert out["classes"] == classes and out["n"] == 5
    gm = logit_gradients(m, x, classes)
    om = {a: omega(gm, logit_gradients(d.augmented, x, classes)) for a, d in defenses.items()}
    assert out["mean_omega"]["luring"] == om["luring"].double().mean(0).tolist()
    hand = omega_comparison(om, ref="luring")
    assert set(out["rates"]["ce"]) == {str(c) for c in classes}
    for j, c in enumerate(classes):
        assert out["rates"]["ce"][str(c)] == hand["ce"][str(j)]


def test_the_subset_of_classes_is_a_stated_departure(tmp_path):
    from luring.experiments.logits import logits_lines

    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with RunDir(tmp_path / "many") as run:
        many = run_logits(run, _linear(13, 0), {"luring": _D(_linear(13, 1))}, x, {}, {})
    with RunDir(tmp_path / "ten") as run:
        ten = run_logits(run, _linear(10, 0), {"luring": _D(_linear(10, 1))}, x, {}, {})
    (line,) = logits_lines(many)
    assert "on the 10 classes M scores highest" in line
    assert ", ".join(map(str, many["classes"])) in line
    assert "classes" not in ten and logits_lines(ten) == []
