"""Neutrality options (issue #13): luring-loss cap and margin, residual and wider P, step
budgets for P and M, per-data-set quick profiles."""

from __future__ import annotations

import math

import pytest
import torch

from luring.defense.loss import luring_loss
from luring.defense.settings import defense_settings, resolve_settings
from luring.defense.train import budget, component_kwargs, lr_at, train_defense
from luring.errors import LuringError
from luring.models import build, load_checkpoint
from luring.models.architectures import MnistComponent
from luring.models.checkpoint import save_checkpoint
from luring.models.train import TargetSettings, budget_epochs, target_settings, train_target
from luring.utils import make_generator

# y = 0 (M's top), a = 1 (M's second), b = 1 (T's top among classes != 0): t_y - t_a = 2.
T = torch.tensor([[3.0, 1.0, 0.0]])
M = torch.tensor([[5.0, 2.0, 0.0]])


def _grad(**kw) -> tuple[float, list[float]]:
    t = T.clone().requires_grad_(True)
    loss = luring_loss(t, M, 1.0, **kw)
    loss.backward()
    return loss.item(), t.grad[0].tolist()


def test_defaults_are_equation_2() -> None:
    assert _grad() == (-2.0, [-1.0, 1.0, 0.0])
    assert _grad(cap=None, margin=0.0) == (-2.0, [-1.0, 1.0, 0.0])


def test_cap_bounds_the_first_term_and_stops_its_gradient() -> None:
    # min(2, 1.5) = 1.5, hinge max(0, 1 - 3) = 0: loss -1.5 and no gradient at all
    assert _grad(cap=1.5) == (-1.5, [0.0, 0.0, 0.0])
    # a cap above the margin changes nothing
    assert _grad(cap=4.0) == (-2.0, [-1.0, 1.0, 0.0])


def test_margin_in_the_hinge() -> None:
    # hinge max(0, 1 - 3 + 2.5) = 0.5 is active: d/dt_y = -1 - 1, d/dt_b = +1 + 1
    assert _grad(margin=2.5) == (-1.5, [-2.0, 2.0, 0.0])
    # with the cap active only the hinge pulls: -1.5 + 0.5
    assert _grad(cap=1.5, margin=2.5) == (-1.0, [-1.0, 1.0, 0.0])
    # margin exactly at the gap: hinge 0
    assert _grad(margin=2.0)[0] == -2.0


@pytest.mark.parametrize("kw", [dict(cap=0.0), dict(cap=-1.0), dict(cap=True),
                                dict(cap=math.inf), dict(margin=-0.1), dict(margin=math.nan)])
def test_bad_loss_options(kw) -> None:
    with pytest.raises(LuringError):
        luring_loss(T, M, 1.0, **kw)


def test_residual_component_starts_as_identity_and_stays_in_range() -> None:
    torch.manual_seed(0)
    p = MnistComponent(1, residual=True)
    x = torch.rand(4, 1, 28, 28)
    assert not torch.equal(p(x), x)  # random last layer: not the identity yet
    p.init_identity()
    assert torch.equal(p(x), x)
    with torch.no_grad():
        p.decoder[-1].bias.fill_(3.0)  # tanh(3) ≈ 0.995 pushes every pixel up
    out = p(x)
    assert out.min() >= 0 and out.max() <= 1 and (out >= x).all()
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in p.modules())
    q = MnistComponent(1)
    q.init_identity()  # a no-op for the table-5 P
    assert isinstance(q.decoder[-1], torch.nn.Sigmoid)


def test_width_multiplies_the_channels() -> None:
    p1, p2 = MnistComponent(1), MnistComponent(1, width=2)
    assert p1.encoder[0].out_channels == 16 and p2.encoder[0].out_channels == 32
    assert p2.decoder[-2].in_channels == 32 and p2.decoder[-2].out_channels == 1
    assert p2(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    n1 = sum(p.numel() for p in p1.parameters())
    n2 = sum(p.numel() for p in p2.parameters())
    assert 3 * n1 < n2 < 4 * n1  # conv weights scale with width², biases with width
    with pytest.raises(LuringError):
        MnistComponent(1, width=0)


def test_options_reload_from_the_sidecar(tmp_path) -> None:
    torch.manual_seed(1)
    p = build("mnist-component", in_channels=1, residual=True, width=2).eval()
    save_checkpoint(p, tmp_path, "component", architecture="mnist-component",
                    input_shape=(1, 28, 28), arch_kwargs={"residual": True, "width": 2})
    q, meta = load_checkpoint(tmp_path, "component")
    x = torch.rand(3, 1, 28, 28)
    assert meta["arch_kwargs"] == {"residual": True, "width": 2}
    assert torch.equal(p(x), q(x))


def test_component_kwargs_only_when_not_table_5() -> None:
    s = defense_settings("mnist", "luring", "quick")
    assert component_kwargs(s, "mnist-component") == {"dropout": 0.0}
    s2 = resolve_settings(s, residual=True, width=2)
    assert component_kwargs(s2, "mnist-component") == {"dropout": 0.0, "width": 2,
                                                       "residual": True}
    with pytest.raises(LuringError):
        component_kwargs(s2, "svhn-component")


@pytest.mark.parametrize("kw", [dict(max_steps=0), dict(max_steps=2.5), dict(max_steps=True),
                                dict(cap=0), dict(margin=-1), dict(width=0),
                                dict(residual="yes"), dict(selection="best")])
def test_settings_validation(kw) -> None:
    with pytest.raises(LuringError):
        resolve_settings(defense_settings("mnist", "luring", "quick"), **kw)


def test_cap_and_margin_are_luring_only() -> None:
    with pytest.raises(LuringError):
        resolve_settings(defense_settings("mnist", "ce", "quick"), cap=5.0)
    with pytest.raises(LuringError):
        resolve_settings(defense_settings("mnist", "ce", "quick"), margin=1.0)


def test_budget_hand_values() -> None:
    s = resolve_settings(defense_settings("mnist", "luring", "quick"), epochs=5)
    assert budget(s, 12) == (60, 1.0)
    assert budget(resolve_settings(s, max_steps=12), 12) == (12, 0.2)
    assert budget(resolve_settings(s, max_steps=100), 12) == (60, 1.0)
    ts = target_settings("mnist", max_steps=30)
    assert budget_epochs(ts, 280) == (30, 30 / 50)  # 5 epochs x 10 steps, cut to 30
    assert budget_epochs(target_settings("mnist"), 281) == (55, 1.0)
    with pytest.raises(LuringError):
        target_settings("mnist", max_steps=0)


def test_per_dataset_quick_profile() -> None:
    fm = defense_settings("mnist", "luring", "quick", dataset="fashion-mnist")
    base = defense_settings("mnist", "luring", "quick")
    assert defense_settings("mnist", "luring", "quick", dataset="mnist-5k") == base
    assert defense_settings("mnist", "luring", "quick", dataset="other") == base
    assert fm["max_steps"] is not None and fm != base
    assert defense_settings("mnist", "luring", "paper", dataset="fashion-mnist") == \
        defense_settings("mnist", "luring", "paper")
    for method in ("luring", "ce", "auto", "stack"):
        assert defense_settings("mnist", method, "quick", dataset="fashion-mnist")[
            "max_steps"] is not None


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(28 * 28, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _images(n: int) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=make_generator(3))


def test_step_budget_bounds_training_and_compresses_the_schedule() -> None:
    torch.manual_seed(0)
    m = _Tiny().eval()
    s = resolve_settings(defense_settings("mnist", "luring", "quick"), epochs=5, batch_size=16,
                         warmup_epochs=0.0, max_steps=12, ema=0.0)
    out = train_defense(m, _images(200), method="luring", settings=s, seed=0)
    # 180 training images, batch 16: 12 steps per epoch; 12 of 60 steps = 0.2 of the schedule,
    # 2.4 steps per nominal epoch, an evaluation every round(2.4) = 2 steps
    assert [h["step"] for h in out.history] == [2, 4, 6, 8, 10, 12]
    lo, hi = s["min_lr"], s["lr"]
    want = lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * (11 / 2.4) / 5))
    assert out.history[-1]["lr"] == pytest.approx(want, rel=1e-9)
    assert out.history[-1]["lr"] == pytest.approx(lr_at(s, 11 / 2.4))
    assert out.history[-1]["lr"] < 0.05 * hi  # the decay has run to its end


def test_residual_defense_starts_at_m_decisions_and_last_selection() -> None:
    torch.manual_seed(0)
    m = _Tiny().eval()
    s = resolve_settings(defense_settings("mnist", "luring", "quick"), residual=True,
                         max_steps=2, lr=1e-12, warmup_epochs=0.0, ema=0.0, eval_every=1,
                         selection="last", cap=2.0, margin=0.5)
    x = _images(60)
    out = train_defense(m, x, method="luring", settings=s, seed=0)
    assert out.component_kwargs == {"dropout": 0.0, "residual": True}
    assert out.selection["rule"] == "last" and out.selection["step"] == 2
    assert out.selection["agreement"] == 1.0
    with torch.no_grad():
        assert (out.component(x) - x).abs().max() < 1e-6


def test_target_step_budget(monkeypatch) -> None:
    calls = {"n": 0}
    real = torch.optim.Adam.step

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    x = torch.rand((40, 1, 28, 28), generator=make_generator(0))
    y = torch.arange(40) % 10
    ts = TargetSettings(architecture="mnist-target", epochs=3, batch_size=10, lrs=(1e-3,),
                        max_steps=6)
    _, info = train_target(x, y, ts, seed=0)
    assert calls["n"] == 6
    assert [h["epoch"] for h in info["history"]] == [1, 2]  # 4 steps, then 2


def test_disclosure_lists_the_options_and_the_budget() -> None:
    from luring.experiments.disclosure import defense_lines
    from luring.experiments.profiles import resolve_profile

    quick = resolve_profile("quick", "mnist")
    fm = defense_lines(quick, "fashion-mnist")
    assert "luring loss: first term bounded, -λ min(t_y - t_a, 5); hinge with margin 1, " \
           "max(0, t_b - t_y + 1) (equation 2: unbounded first term, zero margin)" in fm
    assert any(line.startswith("luring P: at most 2000 optimisation steps") for line in fm)
    assert any(line.startswith("quick profile (fashion-mnist") for line in fm)
    m5 = defense_lines(quick, "mnist-5k")
    assert any(line.startswith("luring P: at most 2500 optimisation steps") for line in m5)
    assert any(line.startswith("quick profile (mnist-5k") for line in m5)
    paper = defense_lines(resolve_profile("paper", "mnist"), "fashion-mnist")
    assert not any("optimisation steps" in line or "luring loss:" in line for line in paper)
