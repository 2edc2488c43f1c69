"""The adaptive evaluation's pieces: the substitute attacker, the masking checks and the
paired verdict (the experiment itself runs end to end in test_experiments_reproduce)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from luring.attacks.substitute import train_substitute
from luring.errors import LuringError
from luring.experiments.diagnostics import masking_checks, paired_verdict

pytestmark = pytest.mark.usefixtures("one_thread")


class Oracle(nn.Module):
    """T: class 1 when the mean pixel of the left half exceeds the right half's, else 0."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.calls += len(x)
        d = x[..., :14].mean((1, 2, 3)) - x[..., 14:].mean((1, 2, 3))
        return torch.stack([-d, d], 1) * 50 + 0 * self.w


def _images(n, g):
    """Noise with one half (left or right, at random) brighter: T's two classes."""
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.5
    left = torch.rand(n, generator=g) < 0.5
    x[left, :, :, :14] += 0.5
    x[~left, :, :, 14:] += 0.5
    return x


def test_substitute_learns_the_oracle_and_counts_every_query():
    g = torch.Generator().manual_seed(0)
    pool = _images(64, g)
    oracle = Oracle()
    sub = train_substitute(oracle, pool, arch="mnist-target", epochs=3, rounds=2, lam=0.1,
                           seed=0, batch_size=32)
    assert sub.queries == 64 * 4 == oracle.calls and sub.pool_size == 256
    assert [h["pool"] for h in sub.history] == [64, 128, 256]
    x = _images(200, g)
    agree = (sub.model(x).argmax(1) == oracle(x).argmax(1)).float().mean()
    assert agree > 0.9 and sub.agreement > 0.9  # on images it never saw, and on its pool
    assert all(not p.requires_grad for p in sub.model.parameters())
    again = train_substitute(Oracle(), pool, arch="mnist-target", epochs=3, rounds=2, seed=0,
                             batch_size=32)
    assert all(torch.equal(a, b) for a, b in zip(sub.model.state_dict().values(),
                                                 again.model.state_dict().values(), strict=True))


def test_substitute_soft_labels_and_bad_arguments():
    pool = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    sub = train_substitute(Oracle(), pool, labels="soft", epochs=1, seed=0)
    assert sub.queries == 16 and sub.params["labels"] == "soft"
    with pytest.raises(LuringError, match="labels"):
        train_substitute(Oracle(), pool, labels="logits")
    with pytest.raises(LuringError, match="non-empty"):
        train_substitute(Oracle(), pool[:0])
    with pytest.raises(LuringError, match="rounds"):
        train_substitute(Oracle(), pool, rounds=-1)


def _meta(**kw):
    m = {"grad_t": 1e-4, "grad_m": 1e-3, "steps": [5, 10, 50], "ac_mop_steps": [0.2, 0.1, 0.0],
         "ac_mop_eps1": 0.0, "ac_mop_spsa": 0.3, "ac_mop_gradient": 0.1}
    return m | kw


CFG = {"grad_ratio": 1e-3}


def test_masking_checks_pass_a_healthy_model_and_flag_each_symptom():
    assert masking_checks(_meta(), CFG, 50)["flagged"] == []
    assert masking_checks(_meta(grad_t=1e-12), CFG, 50)["flagged"] == ["gradient"]
    assert masking_checks(_meta(ac_mop_steps=[0.18, 0.2, 0.3]), CFG, 50)["flagged"] == ["steps"]
    assert masking_checks(_meta(ac_mop_eps1=0.02), CFG, 50)["flagged"] == ["unbounded"]
    assert masking_checks(_meta(ac_mop_spsa=0.05), CFG, 50)["flagged"] == ["gradient_free"]
    c = masking_checks(_meta(grad_t=0.0, grad_m=0.0), CFG, 50)  # no gradient anywhere: not a ratio
    assert c["gradient"]["ratio"] == float("inf") and c["n"] == 50


def test_unbounded_check_can_cross_the_whole_range(monkeypatch):
    """With the standard profile's fixed step of 0.01, 20 steps move a pixel by 0.2 at most:
    the ε = 1 check takes 2.5 ε / steps instead, whatever the profile's step size."""
    from luring.experiments import diagnostics
    from luring.experiments.profiles import resolve_profile

    calls = []

    class Recorder:
        def __init__(self, model, *, eps, steps, alpha, mu, seed):
            calls.append((eps, steps, alpha))

        def __call__(self, x):
            return x

    monkeypatch.setattr(diagnostics, "MIM", Recorder)
    cfg = resolve_profile("standard", "mnist")["adaptive"]["diagnostics"]
    assert cfg["step_size"] == 0.01 and cfg["unbounded_steps"] == 20
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)
    _, meta = diagnostics.diagnostics_unit(model, model, x, y, 0.3, cfg, seed=0)
    (eps1, steps1, alpha1), = [c for c in calls if c[0] == 1.0]
    assert (meta["eps1_steps"], meta["eps1_alpha"]) == (20, alpha1)  # recorded for the report
    assert steps1 == 20 and alpha1 * steps1 == pytest.approx(2.5)  # can reach every pixel value
    assert [c[2] for c in calls if c[0] == 0.3] == [0.01, 0.01]  # the steps curve: the profile's


def test_diagnostics_table_shows_what_a_flagged_rate_that_rounds_to_zero_left():
    from luring.report.adaptive import diagnostics_table

    checks = {"0": masking_checks(_meta(ac_mop_eps1=1 / 690, eps1_steps=20, eps1_alpha=0.125),
                                  CFG, 690)}
    results = {"diagnostics": {"luring": {"eps": 0.3, "seeds": checks}}}
    text = diagnostics_table(results)
    assert "FLAGGED: 0.001 (1 of 690)" in text  # never a bare "FLAGGED: 0.00"
    assert "at ε = 1 with 20 steps of 0.125 (flagged" in text and "| unbounded |" in text
    checks["0"] = masking_checks(_meta(), CFG, 690)  # an older run: no steps recorded
    text = diagnostics_table(results)
    assert "ok: 0.000 (0 of 690)" in text and "at ε = 1 (flagged" in text


def _outcome(defended):
    t = torch.tensor(defended, dtype=torch.bool)
    return {"t_ok": torch.zeros_like(t), "m_ok": t, "defended": t}


def test_paired_verdict_holds_only_when_significant():
    n = 40
    out = {}
    for s in (0, 1):
        out[(s, "luring", "mim-w", 0.3)] = _outcome([True] * n)
        out[(s, "ce", "mim-w", 0.3)] = _outcome([True] * 20 + [False] * 20)
        out[(s, "stack", "mim-w", 0.3)] = _outcome([True] * 30 + [False] * 10)
        out[(s, "luring", "mim-w", 0.4)] = _outcome([True] * 31 + [False] * 9)
        out[(s, "ce", "mim-w", 0.4)] = _outcome([True] * 30 + [False] * 10)
        out[(s, "stack", "mim-w", 0.4)] = _outcome([False] * 40)
    rows = paired_verdict(out, ["mim-w", "adaptive-w"], [0.3, 0.4],
                          ["stack", "ce", "luring"], [0, 1])
    assert [(r["attack"], r["eps"], r["other"]) for r in rows] == [
        ("mim-w", 0.3, "stack"), ("mim-w", 0.4, "ce")]  # no adaptive outcomes: no row
    r3, r4 = rows
    assert r3["n"] == 80 and r3["discordant"] == [20, 0] and r3["difference"] == 0.25
    assert r3["p_value"] == pytest.approx(2 * 0.5 ** 20) and r3["holds"]
    assert r3["ci"][0] > 0 and r3["ci"][1] <= 1
    assert r4["discordant"] == [2, 0] and r4["p_value"] == pytest.approx(0.5)
    assert not r4["holds"]
    assert paired_verdict(out, ["mim-w"], [0.3], ["stack", "ce"], [0, 1]) == []


class _Saturated(nn.Module):
    """A decoy P that masks gradients: a sigmoid so steep (slope 1,000 at 0.5) that its
    derivative is exactly 0 in float32 for every pixel farther than 0.1 from 0.5."""

    def forward(self, x):
        return torch.sigmoid(1000 * (x - 0.5))


def _diagnose(t, m, x, y):
    from luring.experiments.diagnostics import diagnostics_unit, spsa_unit
    from luring.experiments.profiles import resolve_profile

    cfg = resolve_profile("quick", "mnist")["adaptive"]["diagnostics"]
    spsa_cfg = dict(resolve_profile("smoke", "mnist")["defend"]["spsa"])
    _, meta = diagnostics_unit(t, m, x, y, 0.3, cfg, seed=0)
    meta |= spsa_unit(t, x, y, 0.3, spsa_cfg, seed=0)[1]
    return masking_checks(meta, cfg, len(y))


def test_masking_checks_on_real_models_flag_a_saturated_decoy_and_pass_a_smooth_one():
    """End to end on models (the quick profile's checks: MIM at 10 and 40 steps, ε = 1, SPSA):
    T = M∘P with a saturated P has zero input gradients, so MIM cannot move and T keeps its
    answers even at ε = 1; T = M∘(identity) passes every check."""
    from tests.helpers import tiny

    m = tiny(0)
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(16, 1, 8, 8, generator=g) > 0.5, 0.9, 0.1)
    masked = nn.Sequential(_Saturated(), m).eval()
    smooth = nn.Sequential(nn.Identity(), m).eval()
    with torch.no_grad():  # each T is judged against its own clean answers: it starts right
        y_masked, y = masked(x).argmax(1), smooth(x).argmax(1)
    bad = _diagnose(masked, m, x, y_masked)
    assert {"gradient", "unbounded"} <= set(bad["flagged"])
    assert bad["gradient"]["grad_t"] == 0 and bad["unbounded"]["ac_mop"] == 1.0
    good = _diagnose(smooth, m, x, y)
    assert good["flagged"] == [], good
    assert good["gradient"]["ratio"] == pytest.approx(1.0) and good["unbounded"]["ac_mop"] == 0
