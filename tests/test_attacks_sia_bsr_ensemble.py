"""SIA and BSR (issue #24 item 1) and model ensembles (item 2): the input transforms on
hand-made images, the attacks' shared contract (bounds, inputs untouched, seeds, batch
invariance, counting) and the ensemble's two fusions checked against hand-computed
gradients."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks import (
    BSR,
    FGSM,
    MIM,
    SIA,
    BlockShuffleRotate,
    Ensemble,
    StructureInvariant,
    attack_parameters,
    block_shuffle_rotate,
    bpda,
    create,
    structure_invariant,
    with_ensemble_loss,
)
from luring.errors import LuringError
from tests.helpers import check_attack_output, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

ATTACKS = {
    "sia": lambda m, eps, **kw: SIA(m, eps=eps, steps=3, num_copies=3, **kw),
    "bsr": lambda m, eps, **kw: BSR(m, eps=eps, steps=3, num_copies=3, **kw),
}


def images(n: int = 8, channels: int = 1, h: int = 8, w: int = 8, seed: int = 1
           ) -> torch.Tensor:
    x = torch.rand(n, channels, h, w, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 1] = 1.0
    return x


def grid(h: int = 4, w: int = 4) -> torch.Tensor:
    """(1, 1, h, w) with pixel (r, c) = r·w + c (exact in float32)."""
    return torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)


# ---- the transforms ---------------------------------------------------------------------
def test_structure_invariant_by_hand():
    x = grid() / 16
    rows, cols = torch.tensor([[0, 2, 4]]), torch.tensor([[0, 1, 4]])
    ops = torch.tensor([[[2, 1], [5, 4]]])          # vflip, hshift | scale, rot180
    shift = torch.tensor([[[0.0, 0.5], [0.0, 0.0]]])  # hshift by floor(0.5·3) = 1
    scale = torch.tensor([[[1.0, 1.0], [0.5, 1.0]]])
    out = structure_invariant(x, rows, cols, ops, shift, scale) * 16
    want = torch.tensor([[4, 3, 1, 2],
                         [0, 7, 5, 6],
                         [4, 15, 14, 13],
                         [6, 11, 10, 9]], dtype=torch.float32)
    assert torch.equal(out[0, 0], want)
    # the noise op adds the noise and clips, only inside its block
    ops = torch.tensor([[[6, 2], [2, 2]]])
    noise = torch.full((1, 1, 4, 4), 0.5)
    out = structure_invariant(x, rows, cols, ops, shift, scale, noise)
    assert torch.equal(out[0, 0, :2, 0], (x[0, 0, :2, 0] + 0.5).clamp(0, 1))
    assert torch.equal(out[0, 0, 2:, 1:], x[0, 0, 2:, 1:].flip(0))


def test_structure_invariant_keeps_block_contents():
    """With the five spatial ops every block keeps its pixels (only moved inside it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 9, 11, generator=g)
    rows = torch.tensor([[0, 2, 5, 9], [0, 1, 2, 9], [0, 4, 8, 9]])
    cols = torch.tensor([[0, 3, 4, 11], [0, 5, 10, 11], [0, 1, 2, 11]])
    ops = torch.randint(0, 5, (3, 3, 3), generator=g)
    shift = torch.rand(3, 3, 3, generator=g)
    out = structure_invariant(x, rows, cols, ops, shift, torch.ones(3, 3, 3))
    for n in range(3):
        for i in range(3):
            for j in range(3):
                r = slice(int(rows[n, i]), int(rows[n, i + 1]))
                c = slice(int(cols[n, j]), int(cols[n, j + 1]))
                a, b = out[n, :, r, c].flatten(1), x[n, :, r, c].flatten(1)
                assert torch.equal(a.sort(1).values, b.sort(1).values)


def test_block_shuffle_by_hand():
    x = grid() / 16
    rows, perm = torch.tensor([[0, 1, 4]]), torch.tensor([[1, 0]])
    cols = torch.tensor([[[0, 2, 4], [0, 3, 4]]])
    cperm = torch.tensor([[[1, 0], [1, 0]]])
    out = block_shuffle_rotate(x, rows, perm, cols, cperm, torch.zeros(1, 2, 2))
    want = torch.tensor([[7, 4, 5, 6],
                         [11, 8, 9, 10],
                         [15, 12, 13, 14],
                         [2, 3, 0, 1]], dtype=torch.float32)
    assert torch.equal(out[0, 0] * 16, want)
    # columns first: the same choices on the transposed image; a mixed batch keeps its order
    flip = block_shuffle_rotate(x, rows, perm, cols, cperm, torch.zeros(1, 2, 2),
                                torch.tensor([True]))
    want_t = torch.tensor([[13, 1, 5, 9],                      # the rows-first result on x.T
                           [14, 2, 6, 10],
                           [15, 3, 7, 11],
                           [8, 12, 0, 4]], dtype=torch.float32)
    assert torch.equal(flip[0, 0] * 16, want_t.T)
    two = torch.cat([x, x.flip(3)])
    mixed = block_shuffle_rotate(two, rows.repeat(2, 1), perm.repeat(2, 1),
                                 cols.repeat(2, 1, 1), cperm.repeat(2, 1, 1),
                                 torch.zeros(2, 2, 2), torch.tensor([False, True]))
    assert torch.equal(mixed[0], out[0])
    assert torch.equal(mixed[1, 0], block_shuffle_rotate(
        x.flip(3).transpose(2, 3), rows, perm, cols, cperm, torch.zeros(1, 2, 2))[0, 0].T)


def test_block_rotation_quarter_turn():
    """One block rotated by 90°: torch.rot90 clockwise (up to cos(π/2) ≈ 4e-8)."""
    x = grid(5, 5) / 25
    whole = torch.tensor([[0, 5, 5]])
    cols = torch.tensor([[[0, 5, 5], [0, 5, 5]]])
    out = block_shuffle_rotate(x, whole, torch.tensor([[0, 1]]), cols,
                               torch.tensor([[[0, 1], [0, 1]]]),
                               torch.full((1, 2, 2), math.pi / 2))
    torch.testing.assert_close(out, torch.rot90(x, -1, (2, 3)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 10, 13), (2, 1, 2, 5)])
@pytest.mark.parametrize("make", [StructureInvariant, BlockShuffleRotate,
                                  lambda: BlockShuffleRotate(3, 0.0)])
def test_transforms_shape_range_gradient(shape, make):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    t = make()
    t.setup(shape[0], 4, 7, 0, x.device)
    out = t(x, 3)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    again = make()
    again.setup(shape[0], 4, 7, 0, x.device)
    assert torch.equal(again(x, 3), out)                       # seeded per evaluation
    assert not torch.equal(t(x, 2), out)                       # another draw per evaluation


def test_block_shuffle_without_rotation_is_a_permutation():
    x = torch.rand(6, 3, 9, 7, generator=torch.Generator().manual_seed(3))
    t = BlockShuffleRotate(num_block=3, max_angle=0.0)
    t.setup(6, 1, 0, 0, x.device)
    out = t(x, 0)
    assert torch.equal(out.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)
    assert not torch.equal(out, x)


def test_transform_draws_do_not_depend_on_the_batch():
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    for make in (StructureInvariant, BlockShuffleRotate):
        full, part = make(), make()
        full.setup(6, 3, 5, 10, x.device)
        part.setup(2, 3, 5, 14, x.device)
        assert torch.equal(full(x, 2)[4:], part(x[4:], 2))


def test_transform_validation():
    with pytest.raises(LuringError, match="num_block"):
        StructureInvariant(0)
    with pytest.raises(LuringError, match="max_angle"):
        BlockShuffleRotate(2, -1.0)
    with pytest.raises(LuringError, match="num_copies"):
        SIA(tiny(), num_copies=0)


# ---- the attacks ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_bounds_and_inputs_untouched(name, eps):
    x = images()
    before = x.clone()
    atk = ATTACKS[name](tiny(), eps)
    check_attack_output(x, before, atk(x), eps)
    json.dumps(atk.params())
    assert atk.name == name and atk.params()["num_copies"] == 3


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_seed_determinism_and_batch_invariance(name):
    x, model = images(8), tiny()
    full = ATTACKS[name](model, 0.1, seed=3)(x)
    assert torch.equal(full, ATTACKS[name](model, 0.1, seed=3)(x))
    assert not torch.equal(full, ATTACKS[name](model, 0.1, seed=4)(x))
    later = ATTACKS[name](model, 0.1, seed=3)(x[4:], start_index=4)
    assert torch.allclose(full[4:], later, rtol=0, atol=1e-6)
    chunked = ATTACKS[name](model, 0.1, seed=3, batch_size=4)(x)
    assert torch.allclose(full, chunked, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_counting_and_attack_strength(name):
    x, model = images(6), tiny()
    atk = ATTACKS[name](model, 0.3)
    y = model(x).argmax(1)
    x_adv = atk(x, y)
    assert (atk.n_forward, atk.n_backward, atk.n_queries) == (9, 9, 54)  # 3 steps × 3 copies
    assert (model(x_adv).argmax(1) != y).float().mean() >= 0.5


def test_three_channel_mnist_size_and_options():
    x = images(3, channels=3, h=28, w=20)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 28 * 20, 10)).eval()
    for atk in (SIA(model, eps=0.05, steps=2, num_copies=2, loss="margin", kappa=1.0),
                BSR(model, eps=0.05, steps=2, num_copies=2, grad_model=bpda(model))):
        out = atk(x)
        assert out.shape == x.shape and (out - x).abs().max() <= 0.05


def test_registry():
    assert {"num_block", "num_copies", "grad_model"} <= set(attack_parameters("sia"))
    assert {"num_block", "num_copies", "max_angle"} <= set(attack_parameters("bsr"))
    atk = create("bsr", tiny(), eps=0.1, steps=1, num_copies=2, max_angle=0.0)
    assert isinstance(atk, BSR) and atk.params()["max_angle"] == 0.0
    assert SIA(tiny()).params()["num_copies"] == 20 and SIA(tiny()).params()["num_block"] == 3
    bsr = BSR(tiny()).params()
    assert (bsr["num_copies"], bsr["num_block"], bsr["max_angle"]) == (20, 2, 24.0)
    assert bsr["steps"] == 10 and bsr["mu"] == 1.0 and math.isclose(bsr["alpha"], 0.03)


# ---- ensembles --------------------------------------------------------------------------
def linear(seed: int, classes: int = 3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def test_ensemble_of_a_model_with_itself_is_the_model():
    x, model = images(8), tiny()
    single = MIM(model, eps=0.2, steps=4, alpha=0.05)(x)
    twice = Ensemble([model, model])
    assert torch.equal(twice(x), model(x))
    assert torch.equal(MIM(model, eps=0.2, steps=4, alpha=0.05, grad_model=twice)(x), single)
    assert torch.equal(MIM(twice, eps=0.2, steps=4, alpha=0.05)(x), single)
    per_loss = with_ensemble_loss(MIM)(model, eps=0.2, steps=4, alpha=0.05,
                                       grad_model=twice.with_mode("loss"))
    assert torch.equal(per_loss(x), single)
    assert per_loss.name == "mim"


@pytest.mark.parametrize("mode", ["logits", "loss"])
def test_ensemble_fgsm_follows_the_averaged_gradient(mode):
    a, b = linear(1), linear(2)
    w = torch.tensor([0.25, 0.75])
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(6)) * 0.5 + 0.25
    y = torch.tensor([0, 1, 2, 0, 1])
    flat = x.flatten(1)
    za, zb = a(x).detach(), b(x).detach()
    onehot = F.one_hot(y, 3).float()
    wa, wb = a[1].weight.detach(), b[1].weight.detach()
    if mode == "logits":
        p = torch.softmax(w[0] * za + w[1] * zb, 1)
        grad = (p - onehot) @ (w[0] * wa + w[1] * wb)
    else:
        grad = (w[0] * (torch.softmax(za, 1) - onehot) @ wa
                + w[1] * (torch.softmax(zb, 1) - onehot) @ wb)
    assert (grad.abs() > 1e-4).all()
    ens = Ensemble([a, b], weights=[1.0, 3.0], mode=mode)
    atk = with_ensemble_loss(FGSM)(a, eps=0.1, grad_model=ens)
    x_adv = atk(x, y)
    want = (flat + 0.1 * grad.sign()).clamp(0, 1).view_as(x)
    torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-6)
    assert (atk.n_forward, atk.n_backward) == (1, 1)


def test_ensemble_modes_differ_and_per_model_loss_value():
    a, b = linear(1), linear(2)
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    ens = Ensemble([a, b], weights=[2, 2], mode="loss")
    z = ens(x)
    assert z.shape == (4, 2, 3) and ens.weights == (0.5, 0.5)
    want = 0.5 * F.cross_entropy(a(x), y, reduction="sum") \
        + 0.5 * F.cross_entropy(b(x), y, reduction="sum")
    torch.testing.assert_close(ens.loss(z, y), want)
    torch.testing.assert_close(ens.with_mode("logits")(x), 0.5 * a(x) + 0.5 * b(x))


def test_ensemble_bpda_per_member():
    a, b = linear(1), linear(2)
    sat = nn.Sequential(a, nn.Hardtanh(-0.01, 0.01))           # flat almost everywhere
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(8)).requires_grad_()
    plain, straight = Ensemble([sat, b]), Ensemble([bpda(sat), b])
    assert torch.equal(plain(x), straight(x))
    (g_plain,) = torch.autograd.grad(plain(x)[:, 0].sum(), x)
    (g_straight,) = torch.autograd.grad(straight(x)[:, 0].sum(), x)
    (g_b,) = torch.autograd.grad(0.5 * b(x)[:, 0].sum(), x)
    (g_a,) = torch.autograd.grad(0.5 * a(x)[:, 0].sum(), x)
    torch.testing.assert_close(g_plain, g_b)                   # the saturated member is flat
    torch.testing.assert_close(g_straight, g_a + g_b)
    out = MIM(sat, eps=0.1, steps=2, alpha=0.05, grad_model=straight)(x.detach())
    assert (out - x.detach()).abs().max() > 0


def test_ensemble_validation():
    with pytest.raises(LuringError, match="classes"):
        Ensemble([linear(1, 3), linear(2, 5)])(torch.rand(2, 1, 4, 4))
    with pytest.raises(LuringError, match="devices"):
        Ensemble([linear(1), nn.Linear(16, 3, device="meta")])
    with pytest.raises(LuringError, match="weights"):
        Ensemble([linear(1), linear(2)], weights=[1.0])
    with pytest.raises(LuringError, match="weights"):
        Ensemble([linear(1), linear(2)], weights=[0.0, 0.0])
    with pytest.raises(LuringError, match="mode"):
        Ensemble([linear(1)], mode="votes")
    with pytest.raises(LuringError, match="list of models"):
        Ensemble(linear(1))
    with pytest.raises(LuringError, match="gradient source"):
        with_ensemble_loss(MIM)(Ensemble([linear(1)], mode="loss"))
