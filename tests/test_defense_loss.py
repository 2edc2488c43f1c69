"""The luring loss (paper eq. 2) against hand-computed values, and the baselines' losses."""

from __future__ import annotations

import math

import pytest
import torch

from luring.defense import luring_classes, luring_loss, reconstruction_loss, soft_cross_entropy
from luring.errors import LuringError


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_hand_computed_batch_mean():
    # row 0: y = 1, a = 2, b = 3 -> -(2 - 1) + max(0, 3 - 2) = 0
    # row 1: y = 2, a = 3, b = 1 -> -(2 - 0) + max(0, 1.5 - 2) = -2
    m = _t([[1, 3, 2, 0], [0, 0, 5, 1]])
    t = _t([[0.5, 2.0, 1.0, 3.0], [1.0, 1.5, 2.0, 0.0]])
    y, a, b = luring_classes(t, m)
    assert y.tolist() == [1, 2] and a.tolist() == [2, 3] and b.tolist() == [3, 1]
    assert luring_loss(t, m, 1.0, reduction="none").tolist() == [0.0, -2.0]
    assert luring_loss(t, m, 1.0).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("lam, expected", [(1.0, [0.0, -2.0]), (0.15, [0.85, -0.3]),
                                           (2.0, [-1.0, -4.0])])
def test_lambda_variants(lam, expected):
    m = _t([[1, 3, 2, 0], [0, 0, 5, 1]])
    t = _t([[0.5, 2.0, 1.0, 3.0], [1.0, 1.5, 2.0, 0.0]])
    # row 0: -lam * 1 + 1; row 1: -lam * 2 + 0
    got = luring_loss(t, m, lam, reduction="none")
    assert got.tolist() == pytest.approx(expected)


def test_ties_lowest_index_first():
    # M ties between classes 0 and 1 -> y = 0, a = 1; T ties between 1 and 2 -> b = 1.
    m = _t([[2, 2, 1]])
    t = _t([[1, 3, 3]])
    assert [c.item() for c in luring_classes(t, m)] == [0, 1, 1]
    # -(1 - 3) + max(0, 3 - 1) = 4
    assert luring_loss(t, m, 1.0).item() == pytest.approx(4.0)
    # Three-way tie in M after the top: y = 1, a = 2; T ties at 5 for classes 0 and 3 -> b = 0.
    m = _t([[0, 1, 1, 1]])
    t = _t([[5, 1, 2, 5]])
    assert [c.item() for c in luring_classes(t, m)] == [1, 2, 0]
    assert luring_loss(t, m, 1.0).item() == pytest.approx(-(1 - 2) + (5 - 1))
    # All-equal logits: y = 0, a = 1, b = 1.
    z = torch.zeros(1, 5)
    assert [c.item() for c in luring_classes(z, z)] == [0, 1, 1]
    assert luring_loss(z, z, 1.0).item() == 0.0


@pytest.mark.parametrize("lam", [1.0, 0.15])
def test_two_classes(lam):
    m = _t([[0.3, -0.2], [-1.0, 1.0]])
    t = _t([[1.0, 2.5], [-1.0, 2.0]])
    # row 0: y = 0, a = b = 1: -lam (1 - 2.5) + (2.5 - 1); row 1: y = 1, a = b = 0: -lam * 3
    expected = [lam * 1.5 + 1.5, -lam * 3.0]
    assert luring_loss(t, m, lam, reduction="none").tolist() == pytest.approx(expected)


def test_gradient_only_through_t():
    m = _t([[1, 3, 2, 0]]).requires_grad_(True)
    t = _t([[0.5, 2.0, 1.0, 3.0]]).requires_grad_(True)
    loss = luring_loss(t, m * 1.0, 1.0)  # m * 1.0: M's logits as part of a graph
    loss.backward()
    assert m.grad is None or torch.count_nonzero(m.grad) == 0
    # hinge active (t_b = 3 > t_y = 2): dL/dt_y = -(lam + 1), dL/dt_a = lam, dL/dt_b = 1
    assert t.grad.tolist() == [[0.0, -2.0, 1.0, 1.0]]
    t2 = _t([[0.0, 4.0, 1.0, 3.0]]).requires_grad_(True)
    luring_loss(t2, m.detach(), 0.5).backward()  # hinge inactive
    assert t2.grad.tolist() == [[0.0, -0.5, 0.5, 0.0]]
    g = torch.autograd.grad(luring_loss(t, m * 2.0, 1.0), m, allow_unused=True)[0]
    assert g is None


def test_batch_mean_gradient_scale():
    m = _t([[1, 3, 2, 0], [1, 3, 2, 0]])
    t = _t([[0.5, 2.0, 1.0, 3.0], [0.5, 2.0, 1.0, 3.0]]).requires_grad_(True)
    luring_loss(t, m, 1.0).backward()
    assert t.grad.tolist() == [[0.0, -1.0, 0.5, 0.5]] * 2


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_lambda(lam):
    with pytest.raises(LuringError, match="lambda"):
        luring_loss(torch.zeros(1, 3), torch.zeros(1, 3), lam)


def test_bad_shapes():
    with pytest.raises(LuringError, match="same shape"):
        luring_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(LuringError, match="at least 2 classes"):
        luring_loss(torch.zeros(2, 1), torch.zeros(2, 1), 1.0)


def test_soft_cross_entropy_and_reconstruction():
    t = _t([[0.0, 0.0]])
    m = _t([[5.0, 5.0]]).requires_grad_(True)
    assert soft_cross_entropy(t, m).item() == pytest.approx(math.log(2))
    t = _t([[1.0, 2.0, 0.5]]).requires_grad_(True)
    m = _t([[0.2, -1.0, 3.0]])
    expected = torch.nn.functional.cross_entropy(t, torch.softmax(m, 1))
    loss = soft_cross_entropy(t, m.requires_grad_(True))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert m.grad is None
    x = torch.tensor([[[[0.0, 1.0]]]])
    r = torch.tensor([[[[0.5, 0.5]]]])
    assert reconstruction_loss(r, x).item() == pytest.approx(math.log(2), rel=1e-5)
