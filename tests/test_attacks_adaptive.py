"""Adaptive attacks (issue #12): the losses (CE, CW margin) and the transfer attacks
NI-FGSM, SI-NI-FGSM, VMI-FGSM and VNI-FGSM on the hooked loop, checked against hand-computed
steps on a linear model and, when installed, against torchattacks (BPDA and ``grad_model``:
tests/test_attacks_bpda.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks import (
    DIM,
    DIMTI,
    FGSM,
    LOSSES,
    MIM,
    MIMTI,
    NIFGSM,
    PGD,
    SINIFGSM,
    VMIFGSM,
    VNIFGSM,
    IterativeAttack,
    attack_loss,
    bpda,
    create,
)
from luring.errors import LuringError
from tests.helpers import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

EPS, ALPHA = 0.25, 1 / 32          # dyadic: every iterate of a sign attack is exact in float32


def linear(seed: int = 0, channels: int = 1, size: int = 8) -> nn.Module:
    """z = W·flatten(x) + b, W and b standard normal."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def grid_images(n: int = 8, seed: int = 1) -> torch.Tensor:
    """(n, 1, 8, 8) images on the 1/64 grid (exact edges 0 and 1 included)."""
    x = torch.randint(0, 65, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    x = x.float() / 64
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    return x


# ---- hand-computed reference (float64) on the linear model ---------------------------------
def _ce_grad(model: nn.Module, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d sum CE(W q + b, y) / d q = (softmax(z) - onehot(y)) W, in float64."""
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    z = q.flatten(1) @ w.T + b
    return ((z.softmax(1) - F.one_hot(y, 10).double()) @ w).view_as(q)


def _si_grad(model, q, y, scales):
    return sum(_ce_grad(model, q / 2**i, y) / 2**i for i in range(scales)) / scales


def _reference(model, x, y, *, steps, mu=1.0, nesterov=False, scales=1, noise=None):
    """NI / SI / VT steps written out: look-ahead, copies, variance, momentum, sign, clip."""
    x = x.double()
    xa, m, v = x.clone(), torch.zeros_like(x), torch.zeros_like(x)
    lo, hi = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    for t in range(steps):
        p = xa + mu * ALPHA * m if nesterov else xa
        g = _si_grad(model, p, y, scales)
        d = g
        if noise is not None:
            d = g + v
            v = sum(_si_grad(model, xa + u.double(), y, scales) for u in noise[t]) \
                / len(noise[t]) - g
        m = mu * m + d / d.abs().flatten(1).mean(1).view(-1, 1, 1, 1)
        xa = torch.min(torch.max(xa + ALPHA * m.sign(), lo), hi)
    return xa.float()


def _record_noise(atk: IterativeAttack) -> list[torch.Tensor]:
    """Wrap ``atk.neighbor_noise``; returns the list the draws (one per iteration) go to."""
    seen: list[torch.Tensor] = []
    draw = atk.neighbor_noise

    def wrapped(x_adv: torch.Tensor) -> torch.Tensor:
        u = draw(x_adv)
        seen.append(u.clone())
        return u

    atk.neighbor_noise = wrapped  # type: ignore[method-assign]
    return seen


@pytest.fixture()
def setup():
    model, x = linear(), grid_images()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_ni_matches_hand_computed_steps(setup):
    model, x, y = setup
    out = NIFGSM(model, eps=EPS, steps=4, alpha=ALPHA)(x, y)
    assert torch.equal(out, _reference(model, x, y, steps=4, nesterov=True))
    assert not torch.equal(out, MIM(model, eps=EPS, steps=4, alpha=ALPHA)(x, y))
    # without look-ahead it is MIM exactly
    assert torch.equal(MIM(model, eps=EPS, steps=4, alpha=ALPHA)(x, y),
                       _reference(model, x, y, steps=4))


def test_si_matches_hand_computed_steps(setup):
    model, x, y = setup
    out = SINIFGSM(model, eps=EPS, steps=3, alpha=ALPHA, scales=4)(x, y)
    assert torch.equal(out, _reference(model, x, y, steps=3, nesterov=True, scales=4))
    # one copy is NI-FGSM exactly
    assert torch.equal(SINIFGSM(model, eps=EPS, steps=3, alpha=ALPHA, scales=1)(x, y),
                       NIFGSM(model, eps=EPS, steps=3, alpha=ALPHA)(x, y))


@pytest.mark.parametrize("cls, nesterov", [(VMIFGSM, False), (VNIFGSM, True)])
def test_vt_matches_hand_computed_steps(setup, cls, nesterov):
    model, x, y = setup
    atk = cls(model, eps=EPS, steps=3, alpha=ALPHA, neighbors=4, seed=2)
    noise = _record_noise(atk)
    out = atk(x, y)
    assert len(noise) == 3 and noise[0].shape == (4, *x.shape)
    assert torch.equal(out, _reference(model, x, y, steps=3, nesterov=nesterov, noise=noise))
    # the neighbourhood: uniform in [-beta·eps, beta·eps], not degenerate
    u = torch.stack(noise)
    r = 1.5 * EPS
    assert u.abs().max() <= r and u.abs().max() > 0.9 * r
    assert abs(float(u.mean())) < 0.02 and float(u.std()) == pytest.approx(r / 3**0.5, rel=0.05)
    assert not torch.equal(noise[0][0], noise[0][1]) and not torch.equal(noise[0], noise[1])


def test_vmi_with_zero_radius_is_mim(setup):
    model, x, y = setup
    # beta = 0: the one neighbour is the iterate, so v = g - g = 0 exactly (for VNI it is
    # not: its g is taken at the look-ahead point, its neighbours around the iterate)
    assert torch.equal(VMIFGSM(model, eps=EPS, steps=4, alpha=ALPHA, neighbors=1, beta=0.0)(x, y),
                       MIM(model, eps=EPS, steps=4, alpha=ALPHA)(x, y))


def test_counts_per_gradient_evaluation():
    model, x = tiny(), grid_images(6)
    y = torch.zeros(6, dtype=torch.long)
    cases = [(NIFGSM(model, steps=3), 3), (SINIFGSM(model, steps=2, scales=4), 8),
             (VMIFGSM(model, steps=2, neighbors=3), 8), (VNIFGSM(model, steps=2, neighbors=3), 8),
             (IterativeAttack(model, eps=0.1, steps=2, alpha=0.01, mu=1.0, nesterov=True,
                              scales=2, neighbors=3), 16)]
    for atk, evals in cases:
        atk(x, y)
        assert (atk.n_forward, atk.n_backward, atk.n_queries) == (evals, evals, 6 * evals)
        atk(x)                                                   # + the label query
        assert (atk.n_forward, atk.n_backward, atk.n_queries) == (evals + 1, evals, 6 * evals + 6)


class Recorder:
    """An input transform that records its draws and the evaluation indices it is called with."""

    def __init__(self) -> None:
        self.draws: list[int] = []
        self.calls: list[int] = []

    def setup(self, n, steps, seed, index0, device) -> None:
        self.draws.append(steps)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        self.calls.append(step)
        return x

    def params(self) -> dict:
        return {}


def test_input_transform_gets_a_fresh_draw_per_gradient_evaluation():
    rec = Recorder()
    atk = IterativeAttack(tiny(), eps=0.1, steps=3, alpha=0.01, mu=1.0, nesterov=True, scales=2,
                          neighbors=3, input_transform=rec)
    atk(grid_images(4), torch.zeros(4, dtype=torch.long))
    assert rec.draws == [3 * 2 * 4] and rec.calls == list(range(24))
    rec = Recorder()
    MIM(tiny(), eps=0.1, steps=5, alpha=0.01, input_transform=rec)(grid_images(4))
    assert rec.draws == [5] and rec.calls == list(range(5))     # the plain loop: one per step


def test_transfer_attacks_compose_with_di_and_ti():
    model, x = tiny(), grid_images(4)
    for cls in (NIFGSM, SINIFGSM, VMIFGSM, VNIFGSM):
        kw = {"eps": 0.2, "steps": 3, "alpha": 0.05}
        if cls in (VMIFGSM, VNIFGSM):
            kw["neighbors"] = 2
        plain = cls(model, **kw)(x)
        assert torch.equal(cls(model, p=0.0, kernel_size=1, **kw)(x), plain)
        both = cls(model, p=1.0, kernel_size=3, **kw)
        assert both.params()["p"] == 1.0 and both.params()["kernel_size"] == 3
        assert not torch.equal(both(x), plain)
        with pytest.raises(LuringError, match="either p"):
            cls(model, p=0.5, input_transform=Recorder(), **kw)


def test_transfer_defaults_and_validation():
    m = tiny()
    ni = NIFGSM(m).params()
    assert (ni["eps"], ni["steps"], ni["alpha"], ni["mu"], ni["loss"]) == (0.3, 10, 0.03, 1.0, "ce")
    assert "nesterov" not in ni and "scales" not in ni and "neighbors" not in ni
    assert SINIFGSM(m).params()["scales"] == 5
    for cls in (VMIFGSM, VNIFGSM):
        p = cls(m, eps=0.1, steps=5).params()
        assert (p["neighbors"], p["beta"], p["alpha"]) == (20, 1.5, pytest.approx(0.02))
    assert [NIFGSM.name, SINIFGSM.name, VMIFGSM.name, VNIFGSM.name] == [
        "ni-fgsm", "si-ni-fgsm", "vmi-fgsm", "vni-fgsm"]
    with pytest.raises(LuringError, match="neighbors"):
        VMIFGSM(m, neighbors=0)
    with pytest.raises(LuringError, match="scales"):
        SINIFGSM(m, scales=0)
    with pytest.raises(LuringError, match="nesterov"):
        IterativeAttack(m, eps=0.1, steps=1, alpha=0.1, nesterov=True)
    with pytest.raises(LuringError, match="beta"):
        VNIFGSM(m, beta=-1.0)


# ---- losses --------------------------------------------------------------------------------
def test_margin_loss_values():
    z = torch.tensor([[1.0, 3.0, 2.0], [-5.0, -7.0, -6.0], [0.0, 10.0, -1.0]])
    y = torch.tensor([0, 0, 1])
    # margins 3-1 = 2, -6-(-5) = -1 (a 0-masked max would give 5), 0-10 = -10
    assert float(attack_loss(z, y, "margin", 100.0)) == 2 - 1 - 10
    assert float(attack_loss(z, y, "margin", 0.5)) == 0.5 - 1 - 10     # capped at kappa
    assert float(attack_loss(z, y, "margin", 0.0)) == 0 - 1 - 10
    ce = F.cross_entropy(z, y, reduction="sum")
    assert torch.equal(attack_loss(z, y, "ce", 3.0), ce)              # kappa ignored
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(attack_loss(zz, y, "margin", 100.0), zz)
    assert torch.equal(g, torch.tensor([[-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]]))
    (g,) = torch.autograd.grad(attack_loss(zz, y, "margin", 1.0), zz)
    assert torch.equal(g[0], torch.zeros(3))                         # beyond kappa: no push
    assert LOSSES == ("ce", "margin")
    with pytest.raises(LuringError, match="classes"):
        attack_loss(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), "margin")


def test_margin_fgsm_matches_hand_computed_step(setup):
    model, x, y = setup
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    z = x.flatten(1).double() @ w.T + b
    runner = z.masked_fill(F.one_hot(y, 10).bool(), -math.inf).argmax(1)
    other = z.gather(1, runner[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0]
    direction = (w[runner] - w[y]).view_as(x).sign()
    ref = (x.double() + EPS * direction).clamp(0, 1).float()
    assert torch.equal(FGSM(model, eps=EPS, loss="margin", kappa=1e3)(x, y), ref)
    # labels the model already misses by more than kappa get no gradient: unchanged
    y_wrong = (y + 1) % 10
    zw = z.gather(1, y_wrong[:, None])[:, 0]
    margin_w = z.masked_fill(F.one_hot(y_wrong, 10).bool(), -math.inf).amax(1) - zw
    kappa = float(margin_w.median())
    out = FGSM(model, eps=EPS, loss="margin", kappa=kappa)(x, y_wrong)
    still = margin_w > kappa
    assert still.any() and (~still).any() and float(other.abs().min()) > 0
    assert torch.equal(out[still], x[still])
    assert (out[~still] != x[~still]).any(dim=(1, 2, 3)).all()


GRADIENT = {"fgsm": FGSM, "pgd": PGD, "mim": MIM, "dim": DIM, "mim-ti": MIMTI, "dim-ti": DIMTI,
            "ni-fgsm": NIFGSM, "si-ni-fgsm": SINIFGSM, "vmi-fgsm": VMIFGSM, "vni-fgsm": VNIFGSM}


@pytest.mark.parametrize("name", sorted(GRADIENT))
def test_every_gradient_attack_takes_loss_kappa_and_grad_model(name):
    m = tiny()
    small = {} if name == "fgsm" else {"steps": 1}
    p = create(name, m, eps=0.1, loss="margin", kappa=2.5, grad_model=bpda(m), **small).params()
    assert (p["loss"], p["kappa"], p["grad_model"]) == ("margin", 2.5, "BPDA")
    d = create(name, m, eps=0.1, **small).params()
    assert d["loss"] == "ce" and "kappa" not in d and "grad_model" not in d
    with pytest.raises(LuringError, match="unknown loss"):
        GRADIENT[name](m, loss="hinge")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(LuringError, match="kappa"):
            GRADIENT[name](m, loss="margin", kappa=bad)
    with pytest.raises(LuringError, match="grad_model"):
        GRADIENT[name](m, grad_model=lambda x: x)


def test_margin_mim_fools_every_example():
    model, x = tiny(), grid_images(8)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = MIM(model, eps=0.3, steps=20, alpha=0.03, loss="margin", kappa=2.0)(x, y)
    with torch.no_grad():
        z = model(out)
    best_other = z.masked_fill(F.one_hot(y, 10).bool(), -math.inf).amax(1)
    assert (best_other > z.gather(1, y[:, None])[:, 0]).all()    # every example fooled


# ---- torchattacks (optional): the same pixels on the same model and images ------------------
class _Feed:
    """Stands in for ``torch.randn_like`` inside torchattacks' VMI/VNI: ``.uniform_(lo, hi)``
    returns our recorded neighbour offsets, in the order they were drawn."""

    def __init__(self, draws: list[torch.Tensor], radius: float) -> None:
        self.draws, self.radius, self.used = [u for d in draws for u in d.unbind(0)], radius, 0

    def __call__(self, like: torch.Tensor) -> _Feed:
        return self

    def uniform_(self, lo: float, hi: float) -> torch.Tensor:
        assert (lo, hi) == pytest.approx((-self.radius, self.radius))
        self.used += 1
        return self.draws[self.used - 1].clone()


@pytest.mark.parametrize("make", [linear, tiny])
def test_same_pixels_as_torchattacks(make, monkeypatch):
    ta = pytest.importorskip("torchattacks")
    model, x = make(), grid_images(8)          # 8 images: torchattacks' mean loss is exact
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = {"eps": EPS, "alpha": ALPHA, "steps": 5}
    assert torch.equal(NIFGSM(model, **kw)(x, y), ta.NIFGSM(model, decay=1.0, **kw)(x, y))
    assert torch.equal(SINIFGSM(model, **kw)(x, y),
                       ta.SINIFGSM(model, decay=1.0, m=5, **kw)(x, y))
    for ours, theirs in ((VMIFGSM, ta.VMIFGSM), (VNIFGSM, ta.VNIFGSM)):
        atk = ours(model, neighbors=3, seed=7, **kw)
        draws = _record_noise(atk)
        mine = atk(x, y)
        feed = _Feed(draws, 1.5 * EPS)
        with monkeypatch.context() as mp:
            mp.setattr(torch, "randn_like", feed)
            other = theirs(model, decay=1.0, N=3, beta=1.5, **kw)(x, y)
        assert feed.used == 5 * 3 and torch.equal(mine, other)
