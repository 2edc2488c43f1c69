"""BPDA gradient sources (issue #12 item 2): straight-through backward of saturating layers
with the exact forward, the ``grad_model`` option of the gradient attacks (gradients from it,
labels from the model) and the worst-case search with loss / kappa / grad_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks import BPDA, DIMTI, MIM, PGD, VNIFGSM, bpda, worst_case_search
from luring.errors import LuringError
from tests.helpers import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


class Saturating(nn.Module):
    """Modules and functional saturating ops, one output per kind."""

    def __init__(self) -> None:
        super().__init__()
        self.mods = nn.ModuleList([nn.Sigmoid(), nn.Tanh(), nn.Hardtanh(), nn.ReLU6()])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [m(x * 8) for m in self.mods]
        outs += [torch.sigmoid(x * 8), x.mul(8).tanh(), F.sigmoid(x * 8),
                 torch.clamp(x, -0.5, 0.5), x.clip(-0.5, 0.5), (x * 1).clamp_(-0.5, 0.5),
                 F.hardtanh(x * 8, inplace=False), F.relu6(x * 8),
                 x.clamp(min=0), F.relu(x), torch.softmax(x, 0)]
        return outs


def test_bpda_forward_exact_backward_straight_through():
    net = Saturating()
    x = torch.linspace(-2, 2, 9).requires_grad_(True)
    true, est = net(x), bpda(net)(x)
    assert all(torch.equal(a, b) for a, b in zip(true, est, strict=True))
    scale = [8, 8, 8, 8, 8, 8, 8, 1, 1, 1, 8, 8]                  # d(ax)/dx with a the factor
    for i, out in enumerate(est):
        (g,) = torch.autograd.grad(out.sum(), x)
        if i < len(scale):                                       # straight through: a·1
            assert torch.equal(g, torch.full_like(g, float(scale[i])))
        else:                                                    # clamp(min=0), relu, softmax
            (g_true,) = torch.autograd.grad(true[i].sum(), x)
            assert torch.equal(g, g_true)
    # the user's model is unchanged and still has its true gradients
    (g,) = torch.autograd.grad(net(x)[0].sum(), x)
    assert g.abs().max() < 8 and g[0] < 1e-4
    assert all(type(m) is t for m, t in zip(net.mods, (nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                                                       nn.ReLU6), strict=True))
    wrapped = bpda(net)
    assert isinstance(wrapped, BPDA) and bpda(wrapped) is wrapped and wrapped.model is net
    with pytest.raises(LuringError, match="nn.Module"):
        bpda(lambda t: t)


def test_bpda_on_a_luring_component():
    from luring.models import Stacked, build

    with torch.random.fork_rng():
        torch.manual_seed(0)
        t = Stacked(build("mnist-component"), build("mnist-target")).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with torch.no_grad():
        assert torch.equal(t(x), bpda(t)(x))
    y = torch.tensor([3, 7])
    (g_true,) = torch.autograd.grad(F.cross_entropy(t(x), y), x)
    (g_st,) = torch.autograd.grad(F.cross_entropy(bpda(t)(x), y), x)
    assert not torch.equal(g_true, g_st) and torch.isfinite(g_st).all()


def saturated_t(seed: int = 0) -> nn.Module:
    """T = head∘P with P(x) = sigmoid(300 (x - 1/2)): on pixels 0.05 / 0.95 P's output is
    exactly 0 / 1 in float32 and its input gradient exactly zero (total masking)."""
    g = torch.Generator().manual_seed(seed)
    p = nn.Conv2d(1, 1, 1)
    head = nn.Linear(64, 10)
    with torch.no_grad():
        p.weight.fill_(300.0)
        p.bias.fill_(-150.0)
        head.weight.copy_(torch.randn(head.weight.shape, generator=g))
        head.bias.zero_()
    return nn.Sequential(p, nn.Sigmoid(), nn.Flatten(), head).eval()


def test_bpda_unmasks_a_saturated_decoy():
    t = saturated_t()
    x = torch.where(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(4)) < 0.5,
                    0.05, 0.95)
    with torch.no_grad():
        y = t(x).argmax(1)
    plain = MIM(t, eps=0.5, steps=10, alpha=0.1)(x)
    assert torch.equal(plain, x)                                 # zero gradient: stuck
    atk = MIM(t, eps=0.5, steps=10, alpha=0.1, loss="margin", kappa=1.0, grad_model=bpda(t))
    out = atk(x)
    with torch.no_grad():
        fooled = t(out).argmax(1) != y
    assert float(fooled.float().mean()) == 1.0
    assert (out - x).abs().max() <= 0.5 and atk.n_forward == 1 + 10


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def test_grad_model_gives_gradients_model_gives_labels():
    model, other = Counting(tiny(0)), Counting(tiny(5))
    x = images(8)
    with torch.no_grad():
        y_model = model.model(x).argmax(1)
        assert (other.model(x).argmax(1) != y_model).any()
    atk = MIM(model, eps=0.2, steps=4, alpha=0.05, grad_model=other)
    out = atk(x)
    assert (model.calls, other.calls) == (1, 4)                  # label query, gradients
    assert (atk.n_forward, atk.n_backward, atk.n_queries) == (5, 4, 40)
    assert torch.equal(out, MIM(other.model, eps=0.2, steps=4, alpha=0.05)(x, y_model))
    # the gradient source is frozen and in eval mode during the call, restored after
    src = tiny(5).train()
    PGD(model, eps=0.1, steps=2, grad_model=src)(x)
    assert src.training and all(p.requires_grad and p.grad is None for p in src.parameters())


# ---- worst-case search with the adaptive options -------------------------------------------
def test_worst_case_search_passes_loss_kappa_grad_model():
    source, target = tiny(0), tiny(1)
    x = images(8)
    with torch.no_grad():
        y = target(x).argmax(1)
    settings = [{"attack": "mim"}, {"attack": "dim-ti", "p": 1.0, "kernel_size": 3},
                {"attack": "vni-fgsm", "neighbors": 2}]
    g = bpda(source)
    res = worst_case_search(source, target, x, y, 0.2, steps=3, alpha=0.05, settings=settings,
                            progress=False, loss="margin", kappa=1.5, grad_model=g)
    assert [s.attack for s in res.settings] == ["mim", "dim-ti", "vni-fgsm"]
    assert all((s.params["loss"], s.params["kappa"], s.params["grad_model"]) ==
               ("margin", 1.5, "BPDA") for s in res.settings)
    by_hand = [MIM(source, eps=0.2, steps=3, alpha=0.05, loss="margin", kappa=1.5, grad_model=g),
               DIMTI(source, eps=0.2, steps=3, alpha=0.05, p=1.0, kernel_size=3, loss="margin",
                     kappa=1.5, grad_model=g),
               VNIFGSM(source, eps=0.2, steps=3, alpha=0.05, neighbors=2, loss="margin",
                       kappa=1.5, grad_model=g)]
    assert torch.equal(res.best_x_adv, by_hand[res.best_index](x))
    assert res.summary()["loss"] == "margin" and res.summary()["grad_model"] == "BPDA"
    plain = worst_case_search(source, target, x, y, 0.2, steps=3, alpha=0.05,
                              settings=settings[:2], progress=False)
    assert "loss" not in plain.summary() and plain.settings[0].params["loss"] == "ce"
    with pytest.raises(LuringError, match="unknown loss"):
        worst_case_search(source, target, x, y, 0.2, steps=1, settings=settings[:1],
                          progress=False, loss="nope")
