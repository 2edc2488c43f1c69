"""luring.metrics: every number checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from luring.errors import LuringError
from luring.metrics import (
    L0_THRESHOLD,
    PairedComparison,
    Rate,
    adversarial_accuracy,
    agreement,
    auroc,
    clean_accuracy,
    component_saliency,
    correct,
    dac,
    dac_ok,
    detection_rate,
    disagreement_rate,
    distortion_summary,
    distortions,
    false_alarm_rate,
    inefficient_rate,
    input_saliency,
    l0_distortion,
    logit_gradients,
    mcnemar,
    mcnemar_p_value,
    newcombe_interval,
    omega,
    omega_comparison,
    rate,
    roc_curve,
    transfer_metrics,
    wilson_interval,
    worst_case,
)

# Five hand-made examples (index: T = M∘P(x'), M(x'), y):
#   0: 0 0 0  both right
#   1: 2 1 1  T fooled, M right (inefficient), T≠M
#   2: 2 2 2  both right
#   3: 1 1 3  T fooled, M fooled the same way (undetected success)
#   4: 0 3 4  T fooled, M fooled differently (detected)
Y = torch.tensor([0, 1, 2, 3, 4])
T = torch.tensor([0, 2, 2, 1, 0])
M = torch.tensor([0, 1, 2, 1, 3])


def _close(a, b, tol=1e-4):
    return a is not None and abs(a - b) < tol


# ---------------------------------------------------------------- Wilson and Rate


def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)
    assert round(lo, 4) == 0.2366 and round(hi, 4) == 0.7634
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775  # z²/n / (1 + z²/n)
    lo, hi = wilson_interval(10, 10)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    lo, hi = wilson_interval(1, 10)
    assert round(lo, 4) == 0.0179 and round(hi, 4) == 0.4042
    assert wilson_interval(0, 0) == (None, None)


def test_wilson_bad_counts():
    with pytest.raises(LuringError):
        wilson_interval(3, 2)
    with pytest.raises(LuringError):
        Rate.of(-1, 4)


def test_rate_n_zero_is_none_not_nan():
    r = Rate.of(0, 0)
    assert r.value is None and r.ci_low is None and r.ci_high is None and r.n == 0
    assert r.to_dict() == {"value": None, "k": 0, "n": 0, "ci": [None, None]}
    assert rate(torch.zeros(0, dtype=torch.bool)).value is None


def test_rate_to_dict_plain_floats():
    d = Rate.of(4, 5).to_dict()
    assert d["value"] == 0.8 and d["k"] == 4 and d["n"] == 5
    assert all(type(v) is float for v in d["ci"])
    lo, hi = d["ci"]
    assert lo < 0.8 < hi


def test_rate_with_selection():
    r = rate(torch.tensor([True, False, True, True]), where=torch.tensor([1, 1, 0, 1]))
    assert (r.k, r.n) == (2, 3)


# ---------------------------------------------------------------- eq. 3, eq. 4, table 8


def test_adversarial_accuracy():
    assert adversarial_accuracy(T, Y).value == 0.4 and adversarial_accuracy(T, Y).k == 2
    assert adversarial_accuracy(M, Y).value == 0.6


def test_dr_iar_denominator_is_fooled_examples():
    dr = disagreement_rate(T, M, Y)      # fooled {1, 3, 4}; T≠M at 1 and 4
    assert (dr.k, dr.n) == (2, 3) and _close(dr.value, 2 / 3)
    iar = inefficient_rate(T, M, Y)      # M = y only at 1
    assert (iar.k, iar.n) == (1, 3) and _close(iar.value, 1 / 3)


def test_dr_iar_nothing_fooled():
    r = disagreement_rate(Y, M, Y)
    assert r.n == 0 and r.value is None


def test_dac():
    r = dac(T, M, Y)                      # only example 3 is an undetected success
    assert (r.k, r.n) == (4, 5) and r.value == 0.8
    assert dac_ok(T, M, Y).tolist() == [True, True, True, False, True]


def test_clean_rates():
    assert clean_accuracy(M, Y).value == 0.6
    a = agreement(T, M, Y)               # T = M = y at 0 and 2
    assert (a.k, a.n) == (2, 5)
    f = false_alarm_rate(T, M)           # T ≠ M at 1 and 4
    assert (f.k, f.n) == (2, 5)
    assert false_alarm_rate(torch.tensor([1, 1, 1, 2]), torch.tensor([1, 1, 1, 1])).value == 0.25


def test_transfer_metrics_all_keys():
    out = transfer_metrics(T.tolist(), M.numpy(), Y)
    assert set(out) == {"ac_mop", "ac_m", "dac", "dr", "iar", "agreement", "false_alarm_rate"}
    assert all(isinstance(v, Rate) for v in out.values())
    assert out["ac_mop"].value == 0.4 and out["ac_m"].value == 0.6 and out["dac"].value == 0.8
    assert _close(out["dr"].value, 2 / 3) and _close(out["iar"].value, 1 / 3)
    assert type(out["dac"].value) is float


def test_length_and_dtype_errors():
    with pytest.raises(LuringError, match="same length"):
        dac(T, M[:4], Y)
    with pytest.raises(LuringError, match="argmax"):
        clean_accuracy(torch.zeros(5, 10), Y)
    with pytest.raises(LuringError, match="integer"):
        clean_accuracy(torch.zeros(5), Y)


def test_worst_case_and_over_attacks():
    a = correct(M, Y)                                   # [T, T, T, F, F]
    b = torch.tensor([True, False, True, True, False])
    c = [True, True, False, True, True]
    wc = worst_case([a, b, c])
    assert wc.tolist() == [True, False, False, False, False]
    assert rate(wc).value == 0.2
    with pytest.raises(LuringError):
        worst_case([])
    with pytest.raises(LuringError):
        worst_case([a, b[:3]])


# ---------------------------------------------------------------- distortion


def test_l0_half_grey_level_edges():
    x = torch.zeros(3, 3, 2, 2)
    x[2] = 0.5
    xa = x.clone()
    xa[0, 0, 0, 0] = 0.5 / 255            # exactly half a grey level: not counted
    xa[0, 0, 0, 1] = 0.1                  # same pixel, two channels: counted once
    xa[0, 2, 0, 1] = 0.1
    xa[0, 1, 1, 1] = -0.2                 # negative change counts
    xa[1, :, :, :] = 0.6 / 255            # every channel of every pixel: 4 pixels
    xa[2, 0, 0, 0] = 0.5 + 0.5 / 255      # half a level on a non-zero base: not counted
    xa[2, 1, 1, 0] = 0.5 - 0.51 / 255     # just over half a level: counted
    assert l0_distortion(xa, x).tolist() == [2, 4, 1]
    assert L0_THRESHOLD == 0.5 / 255


def test_l2_linf_hand_values():
    x = torch.zeros(2, 1, 2, 2)
    xa = x.clone()
    xa[0, 0, 0, 0], xa[0, 0, 1, 1] = 0.3, -0.4
    xa[1, 0, 0, 1] = 0.05
    d = distortions(xa, x)
    assert torch.allclose(d["l2"], torch.tensor([0.5, 0.05], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(d["linf"], torch.tensor([0.4, 0.05], dtype=torch.float64), atol=1e-6)
    assert d["l0"].tolist() == [2, 1]


def test_distortion_summary_means_over_successes():
    x = torch.zeros(3, 1, 2, 2)
    xa = x.clone()
    xa[0, 0, 0, 0] = 0.3                 # l2 0.3, l0 1
    xa[1, 0, :, :] = 0.1                 # l2 0.2, l0 4
    xa[2, 0, 0, 0] = 1.0                 # not successful
    s = distortion_summary(xa, x, success=torch.tensor([True, True, False]))
    assert s["n"] == 3 and s["n_success"] == 2 and _close(s["success_rate"], 2 / 3)
    assert _close(s["mean_l2"], 0.25) and _close(s["mean_linf"], 0.2)
    assert _close(s["mean_l0"], 2.5) and s["l0"] == [1, 4]
    assert type(s["mean_l2"]) is float
    none = distortion_summary(xa, x, success=[False, False, False])
    assert none["mean_l2"] is None and none["l0"] == []


def test_distortion_shape_errors():
    with pytest.raises(LuringError, match="shape"):
        distortions(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 3))
    with pytest.raises(LuringError, match="NCHW"):
        distortions(torch.zeros(2, 4), torch.zeros(2, 4))


# ---------------------------------------------------------------- Ω and saliency

# Hand-built linear models on 1×2×2 images (D = 4): M(x) = W·vec(x), P(x) = s ⊙ x.
# ∂ℓ_c/∂x = W[c]; ∂ℓP_c/∂x = W[c] ⊙ s; opposite signs where W[c, d] ≠ 0 and s_d < 0.
W = torch.tensor([[1.0, -2.0, 0.0, 3.0], [0.5, 0.5, -1.0, 0.0]])
S = torch.tensor([1.0, -1.0, -1.0, 1.0])


class _Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()


class _Scale(nn.Module):
    def __init__(self, s: torch.Tensor) -> None:
        super().__init__()
        self.s = nn.Parameter(s.clone().view(1, 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s + 0.1


def test_logit_gradients_linear():
    m = _Linear(W)
    x = torch.rand(3, 1, 2, 2)
    g = logit_gradients(m, x)
    assert g.shape == (3, 2, 1, 2, 2)
    assert torch.allclose(g[1, 0].flatten(), W[0]) and torch.allclose(g[2, 1].flatten(), W[1])
    g1 = logit_gradients(m, x, 1)
    assert g1.shape == (3, 1, 2, 2) and torch.allclose(g1[0].flatten(), W[1])
    assert m.w.grad is None and not x.requires_grad
    with pytest.raises(LuringError, match="out of range"):
        logit_gradients(m, x, 5)


def test_omega_linear_model():
    m, p = _Linear(W), _Scale(S)
    t = nn.Sequential(p, m)
    x = torch.rand(4, 1, 2, 2)
    om = omega(logit_gradients(m, x), logit_gradients(t, x))
    # class 0: d = 1 (W -2, s -1); d = 2 has W = 0 → not counted.  class 1: d = 1 and 2.
    assert om.shape == (4, 2) and om.tolist() == [[1, 2]] * 4
    assert omega(torch.tensor([[1.0, -1.0, 0.0]]), torch.tensor([[-2.0, -3.0, 5.0]]),
                 input_ndim=1).tolist() == [1]
    with pytest.raises(LuringError):
        omega(torch.zeros(2, 3), torch.zeros(3, 2))


def test_omega_comparison_hand_values():
    omegas = {
        "luring": torch.tensor([[3, 1], [2, 2], [5, 0]]),
        "ce": torch.tensor([[1, 1], [3, 0], [4, 1]]),
        "auto": torch.tensor([[2, 0], [1, 1], [6, 0]]),
    }
    out = omega_comparison(omegas)
    assert set(out) == {"ce", "auto", "all"}
    assert _close(out["ce"]["0"], 2 / 3) and _close(out["ce"]["1"], 1 / 3)
    assert _close(out["auto"]["0"], 2 / 3) and _close(out["auto"]["1"], 2 / 3)
    assert _close(out["all"]["0"], 1 / 3) and _close(out["all"]["1"], 1 / 3)
    with pytest.raises(LuringError, match="reference"):
        omega_comparison({"ce": omegas["ce"]})
    with pytest.raises(LuringError, match="shape"):
        omega_comparison({"luring": omegas["luring"], "ce": omegas["ce"][:2]})


def test_component_saliency_linear():
    p = _Scale(S)
    x = torch.rand(2, 1, 2, 2)
    g = component_saliency(p, x)
    assert g.shape == x.shape
    assert torch.allclose(g, S.view(1, 1, 2, 2).expand(2, 1, 2, 2))
    assert p.s.grad is None


def test_input_saliency_linear_ce():
    m = _Linear(W)
    x = torch.rand(2, 1, 2, 2)
    y = torch.tensor([0, 1])
    g = input_saliency(m, x, y)
    probs = torch.softmax(x.flatten(1) @ W.t(), dim=1)
    expected = (probs - nn.functional.one_hot(y, 2).float()) @ W   # ∇ₓ CE = Wᵀ(p − e_y)
    assert torch.allclose(g.flatten(1), expected, atol=1e-6)
    # per-example maps do not depend on the batch
    assert torch.allclose(input_saliency(m, x[1:], y[1:]), g[1:], atol=1e-6)
    assert not math.isnan(float(g.sum()))


# ---------------------------------------------------------------- ROC, AUROC, detection rate


def test_roc_curve_hand_values():
    fpr, tpr, thr = roc_curve([0.1, 0.4], [0.4, 0.9])
    assert thr.tolist() == [0.9, 0.4, 0.1, float("-inf")]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert fpr.dtype == torch.float64
    # the binary paper rule: one interior point (its operating point at threshold 0)
    fpr, tpr, thr = roc_curve([0, 0, 0, 1], [1, 1, 0, 1])
    assert thr.tolist() == [1.0, 0.0, float("-inf")]
    assert fpr.tolist() == [0.0, 0.25, 1.0] and tpr.tolist() == [0.0, 0.75, 1.0]


def test_auroc_hand_values_ties_half():
    assert auroc([0.1, 0.4], [0.4, 0.9]) == 0.875   # pairs: 1, 1, ½ (tie 0.4), 1 → 3.5/4
    assert auroc([0.0, 0.0], [0.0, 0.0]) == 0.5     # all ties
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 0.0 and auroc([0.1], [0.2]) == 1.0
    assert auroc([0, 0, 0, 1], [1, 1, 0, 1]) == pytest.approx((0.75 + 1 - 0.25) / 2)  # binary
    with pytest.raises(LuringError, match="clean and adversarial"):
        auroc([], [0.3])
    with pytest.raises(LuringError, match="NaN"):
        auroc([float("nan")], [0.3])


def test_auroc_equals_mann_whitney_brute_force_and_trapezoid():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 8, (37,), generator=g).double() / 7    # heavy ties
    a = torch.randint(2, 9, (23,), generator=g).double() / 8
    pairs = (a[:, None] > c[None]).double() + 0.5 * (a[:, None] == c[None]).double()
    brute = pairs.mean().item()
    assert auroc(c, a) == pytest.approx(brute, abs=1e-15)
    # Mann-Whitney U from mid-ranks of the pooled sample: U = R_a - n_a(n_a+1)/2
    pooled = torch.cat([c, a])
    ranks = torch.tensor([(pooled < v).sum().item() + ((pooled == v).sum().item() + 1) / 2
                          for v in pooled.tolist()], dtype=torch.float64)
    u = ranks[len(c):].sum().item() - len(a) * (len(a) + 1) / 2
    assert auroc(c, a) == pytest.approx(u / (len(c) * len(a)), abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    u_scipy = scipy_stats.mannwhitneyu(a.numpy(), c.numpy()).statistic
    assert auroc(c, a) == pytest.approx(u_scipy / (len(c) * len(a)), abs=1e-12)
    fpr, tpr, _ = roc_curve(c, a)
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(auroc(c, a), abs=1e-12)
    assert (fpr.diff() >= 0).all() and (tpr.diff() >= 0).all()


def test_detection_rate_is_a_rate():
    r = detection_rate([0.1, 0.5, 0.5, 0.9], 0.5)      # strictly above: only 0.9
    assert isinstance(r, Rate) and (r.k, r.n) == (1, 4) and r.value == 0.25
    assert (r.ci_low, r.ci_high) == wilson_interval(1, 4)
    assert detection_rate(torch.zeros(0), 0.5).value is None


# ---------------------------------------------------------------- McNemar, Newcombe


def test_mcnemar_hand_counts_and_p_values():
    a = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    b = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    r = mcnemar(a, b)
    assert isinstance(r, PairedComparison)
    assert (r.n, r.both, r.only_a, r.only_b, r.neither) == (10, 2, 4, 1, 3)
    assert r.rate_a == 0.6 and r.rate_b == 0.3 and r.difference == pytest.approx(0.3)
    assert r.p_value == 0.375                            # 2·(1 + 5)/2⁵
    assert mcnemar(a, b, mid_p=True).p_value == 0.21875  # 0.375 − 5/32
    assert r.ci_low < r.difference < r.ci_high and not r.a_better()
    assert mcnemar_p_value(0, 0) == 1.0 and mcnemar_p_value(3, 3) == 1.0
    assert mcnemar_p_value(3, 3, mid_p=True) == 1.0
    assert mcnemar_p_value(0, 7) == 2 / 128 and mcnemar_p_value(1, 5) == 0.21875
    d = r.to_dict()
    assert d["ci"] == [r.ci_low, r.ci_high] and d["only_a"] == 4
    empty = mcnemar([], [])
    assert empty.n == 0 and empty.p_value is None and empty.difference is None
    with pytest.raises(LuringError, match="same length"):
        mcnemar(a, b[:3])
    with pytest.raises(LuringError, match="booleans"):
        mcnemar(torch.tensor([0, 2]), torch.tensor([0, 1]))


def test_mcnemar_against_scipy_binomtest():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for only_a, only_b in [(1, 5), (0, 7), (10, 2), (40, 61), (250, 300), (13, 13)]:
        want = binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert mcnemar_p_value(only_a, only_b) == pytest.approx(want, rel=1e-9, abs=1e-15)
    big = torch.zeros(2000, dtype=torch.bool)
    a, b = big.clone(), big.clone()
    a[:70], b[60:100] = True, True                       # only_a 60, only_b 30, both 10
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b, r.both) == (60, 30, 10)
    assert r.p_value == pytest.approx(binomtest(30, 90, 0.5).pvalue, rel=1e-9)
    assert r.p_value < 0.05 and r.a_better() and not mcnemar(b, a).a_better()


# Newcombe (1998, paired data), table III, method 10: (a, b, c, d) → 95% limits
NEWCOMBE_III = [((36, 12, 2, 0), (0.0569, 0.3404)), ((20, 12, 2, 16), (0.0562, 0.3292)),
                ((18, 12, 2, 18), (0.0562, 0.3290)), ((36, 14, 0, 0), (0.1528, 0.4167)),
                ((35, 14, 0, 1), (0.1461, 0.4175)), ((18, 14, 0, 18), (0.1441, 0.3963)),
                ((2, 97, 1, 0), (0.8721, 0.9854)), ((0, 29, 1, 0), (0.6666, 0.9882)),
                ((0, 30, 0, 0), (0.8395, 1.0)), ((54, 0, 0, 0), (-0.0664, 0.0664))]


@pytest.mark.parametrize("counts, limits", NEWCOMBE_III)
def test_newcombe_method_10_published_values(counts, limits):
    lo, hi = newcombe_interval(*counts)
    assert lo == pytest.approx(limits[0], abs=1.5e-4) and hi == pytest.approx(limits[1],
                                                                              abs=1.5e-4)
    a, b, c, d = counts
    nlo, nhi = newcombe_interval(a, c, b, d)             # swapping the two approaches
    assert nlo == pytest.approx(-hi, abs=1e-12) and nhi == pytest.approx(-lo, abs=1e-12)


def test_newcombe_step_by_step():
    # (a, b, c, d) = (20, 12, 2, 16), n = 50: p1 = 0.64, p2 = 0.44, ad − bc = 296 > n/2
    l1, u1 = wilson_interval(32, 50)
    l2, u2 = wilson_interval(22, 50)
    phi = (296 - 25) / math.sqrt(32 * 18 * 22 * 28)
    lo = 0.2 - math.sqrt((0.64 - l1) ** 2 - 2 * phi * (0.64 - l1) * (u2 - 0.44) + (u2 - 0.44) ** 2)
    hi = 0.2 + math.sqrt((u1 - 0.64) ** 2 - 2 * phi * (u1 - 0.64) * (0.44 - l2) + (0.44 - l2) ** 2)
    assert newcombe_interval(20, 12, 2, 16) == pytest.approx((lo, hi), abs=1e-12)
    with pytest.raises(LuringError, match="at least one pair"):
        newcombe_interval(0, 0, 0, 0)
