"""SPSA, ECO and CW-L2 on tiny models: gradient estimate, chunking, query budgets, binary
search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from luring.attacks import CWL2, ECO, SPSA
from luring.attacks.base import margin
from luring.attacks.eco import split_blocks
from luring.errors import LuringError
from luring.utils import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _init(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def linear(size: int = 4, seed: int = 0) -> nn.Module:
    return _init(nn.Sequential(nn.Flatten(), nn.Linear(size * size, 10)), seed)


def smooth(size: int = 4, seed: int = 0) -> nn.Module:
    """Two classes, so the margin has no kink from a change of the runner-up class."""
    return _init(nn.Sequential(nn.Flatten(), nn.Linear(size * size, 32), nn.Tanh(),
                               nn.Linear(32, 2)), seed, scale=1.5)


def conv(size: int = 8, seed: int = 0) -> nn.Module:
    return _init(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                               nn.Linear(4 * size * size, 10)), seed)


class Counting(nn.Module):
    """Counts every image the wrapped model evaluates."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        self.calls += 1
        return self.inner(x)


def rand(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def true_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(margin(model(x), y).sum(), x)
    return g


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def test_margin_masks_true_class_with_minus_inf():
    logits = torch.tensor([[-5.0, -1.0, -3.0]])
    assert margin(logits, torch.tensor([1])).item() == -2.0      # a 0 mask would give +1


def test_spsa_estimate_matches_linear_gradient():
    model, x = linear(), rand(6, 4)
    y = model(x).argmax(1)
    atk = SPSA(model, eps=0.3, samples=1024, chunk_size=128)
    est = atk.estimate_gradient(x, y)
    assert (cosine(est, true_grad(model, x, y)) >= 0.9).all()
    assert atk.n_forward == 8 and atk.n_queries == 6 * 1024


def test_spsa_estimate_is_at_the_current_iterate():
    model, x = smooth(), rand(6, 4) * 0.5
    y = model(x).argmax(1)
    est = SPSA(model, eps=0.3, samples=2048, chunk_size=512).estimate_gradient(x, y)
    at_x = cosine(est, true_grad(model, x, y))
    at_2x = cosine(est, true_grad(model, 2 * x, y))              # cleverhans bug #1249
    assert (at_x >= 0.9).all() and (at_x > at_2x).all()


def test_spsa_directions_independent_per_image():
    model = linear()
    x = rand(1, 4).repeat(2, 1, 1, 1)                            # the same image twice
    est = SPSA(model, eps=0.3, samples=16).estimate_gradient(x)
    assert not torch.equal(est[0], est[1])


def test_spsa_chunking_bounds_memory_not_results():
    model, x = conv(), rand(4, 8)
    small = Counting(model)
    a = SPSA(small, eps=0.3, samples=128, chunk_size=16).estimate_gradient(x)
    big = Counting(model)
    b = SPSA(big, eps=0.3, samples=128, chunk_size=128).estimate_gradient(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert small.calls == 1 + 8 and big.calls == 1 + 1          # label query + chunks
    assert small.images == big.images == 4 + 4 * 128
    # the whole attack: same directions, so the same result up to float rounding (Adam's
    # division by sqrt(v) magnifies the rounding where the estimate is near zero)
    adv = SPSA(model, eps=0.3, steps=3, samples=32, chunk_size=8, seed=2)(x)
    torch.testing.assert_close(adv, SPSA(model, eps=0.3, steps=3, samples=32, chunk_size=32,
                                         seed=2)(x), rtol=0, atol=1e-4)


def test_spsa_counts():
    model, x = conv(), rand(3, 8)
    atk = SPSA(model, eps=0.1, steps=4, samples=32, chunk_size=16)
    atk(x, torch.zeros(3, dtype=torch.long))
    assert (atk.n_forward, atk.n_backward, atk.n_queries) == (8, 0, 4 * 3 * 32)


@pytest.mark.parametrize("with_labels", [False, True])
def test_eco_query_budget_exact(with_labels):
    model = Counting(conv())
    x = rand(5, 8)
    y = torch.arange(5) if with_labels else None
    atk = ECO(model, eps=0.2, max_queries=137, block_size=4, block_batch=7, chunk_size=11)
    out = atk(x, y)
    assert model.images == 5 * 137 == atk.n_queries
    assert atk.queries.tolist() == [137] * 5
    assert atk.n_forward == model.calls
    assert ((out - x).abs() <= 0.2).all()


def test_eco_lockstep_shares_forward_passes():
    x = rand(8, 8)
    one, many = Counting(conv()), Counting(conv())
    ECO(one, eps=0.2, max_queries=60, block_size=2)(x[:1])
    ECO(many, eps=0.2, max_queries=60, block_size=2)(x)
    assert many.images == 8 * one.images
    assert many.calls < 2 * one.calls          # 8 images ride in (about) the same passes


def test_eco_early_stop_within_budget_and_corners():
    model = Counting(conv())
    x = rand(6, 8)
    atk = ECO(model, eps=0.5, max_queries=300, block_size=4, early_stop=True)
    out = atk(x)
    assert (atk.queries <= 300).all() and model.images == int(atk.queries.sum())
    fooled = model.inner(out).argmax(1) != model.inner(x).argmax(1)
    assert (atk.queries[~fooled] == 300).all()
    # without early stop the perturbation is a corner of the box (clipped to [0, 1])
    out = ECO(conv(), eps=0.1, max_queries=50)(x)
    d = out - x
    edge = (out == 0) | (out == 1)
    assert torch.isclose(d.abs()[~edge], torch.tensor(0.1), atol=1e-6).all()


def test_eco_blocks_cover_image():
    for size in (1, 2, 3, 4, 8, 40):
        cover = torch.zeros(3, 28, 28, dtype=torch.int32)
        for c, r0, r1, c0, c1 in split_blocks((3, 28, 28), size):
            cover[c, r0:r1, c0:c1] += 1
        assert (cover == 1).all()


def test_eco_objectives_by_hand():
    """xent: log softmax(z)_y (minus the cross-entropy); margin: z_y - max_{j≠y} z_j."""
    z = torch.tensor([[0.9, 0.1, 0.1], [0.2, 0.5, 0.1]])
    images = z.reshape(2, 1, 1, 3)
    y = torch.tensor([0, 0])
    xent = ECO(nn.Flatten(), eps=0.1)
    assert xent.loss == "xent" and xent.params()["loss"] == "xent" and not xent.early_stop
    losses, fooled = xent._scores(images, y)
    lse = [math.log(math.exp(0.9) + 2 * math.exp(0.1)),
           math.log(math.exp(0.2) + math.exp(0.5) + math.exp(0.1))]
    assert losses == pytest.approx([0.9 - lse[0], 0.2 - lse[1]], abs=1e-6)
    assert fooled == [False, True]
    losses, fooled = ECO(nn.Flatten(), eps=0.1, loss="margin", chunk_size=1)._scores(images, y)
    assert losses == pytest.approx([0.8, -0.3], abs=1e-6) and fooled == [False, True]
    assert ECO(nn.Flatten(), eps=0.1, loss="ce").loss == "xent"  # the gradient attacks' name
    with pytest.raises(LuringError, match="ECO loss must be one of xent, margin"):
        ECO(nn.Flatten(), eps=0.1, loss="cw")


def _changed_block(cand: torch.Tensor, base: torch.Tensor, x: torch.Tensor, eps: float):
    """The pixels where ``cand`` differs from ``base`` as (rows, cols) ranges, checking that
    each of them has its sign (relative to x) reversed."""
    diff = (cand != base)[0]
    rows, cols = diff.nonzero(as_tuple=True)
    assert len(rows) > 0
    sc, sb = torch.sign(cand - x)[0][diff], torch.sign(base - x)[0][diff]
    assert torch.equal(sc, -sb)
    assert torch.allclose((cand - x).abs(), torch.tensor(eps), atol=1e-6)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    assert int(diff.sum()) == (r1 - r0) * (c1 - c0)  # a full rectangle
    return (0, r0, r1, c0, c1)


def test_eco_flip_reverses_every_pixel_of_blocks_that_do_not_nest():
    """Block size 5 then 2 on a 10×10 image: after the first pass only the top-left 5-block is
    at +ε, so 2-blocks across row/column 4-5 are mixed. Every candidate of a batch must be the
    batch's image with exactly one block of the current size sign-reversed pixel by pixel."""
    x = 0.3 + 0.4 * rand(1, 10, seed=3)[0]
    eps = 0.1
    w = -torch.ones(10, 10)
    w[:5, :5], w[:5, 5:] = 1.0, 0.1          # prefer +ε top left, a little top right
    atk = ECO(nn.Identity(), eps=eps, block_size=5, loss="margin")
    search = atk._search(x, make_generator(0), 200)
    batch = search.send(None)
    seen_mixed = False
    sizes = {5: split_blocks((1, 10, 10), 5), 2: split_blocks((1, 10, 10), 2),
             1: split_blocks((1, 10, 10), 1)}
    try:
        while True:
            cands = batch.clone()
            if len(cands) >= 3:
                base = cands.median(dim=0).values  # each pixel changes in ≤ 1 candidate
                blocks = [_changed_block(c, base, x, eps) for c in cands]
                assert any(set(blocks) <= set(b) for b in sizes.values()), blocks
                signs = torch.sign(base - x)[0]
                for _, r0, r1, c0, c1 in blocks:
                    seen_mixed |= bool(signs[r0:r1, c0:c1].unique().numel() == 2)
            loss = [-(w * torch.sign(c - x)[0]).sum().item() for c in cands]
            batch = search.send((loss, [False] * len(cands)))
    except StopIteration as stop:
        out, used = stop.value
    assert used == 200 and seen_mixed
    assert torch.equal(torch.sign(out - x)[0, :5, :5], torch.ones(5, 5))


def test_eco_xent_and_margin_both_attack():
    model, x = conv(), rand(6, 8)
    y = model(x).argmax(1)
    for loss in ("xent", "margin"):
        atk = ECO(model, eps=0.3, max_queries=150, block_size=4, loss=loss)
        out = atk(x, y)
        fooled = (model(out).argmax(1) != y).float().mean().item()
        ce0 = torch.nn.functional.cross_entropy(model(x), y)
        ce1 = torch.nn.functional.cross_entropy(model(out), y)
        assert ce1 > ce0 and fooled >= 0.5, (loss, fooled)


def test_cw_binary_search_finds_smaller_l2():
    model, x = conv(), rand(8, 8)
    one = CWL2(model, steps=40, binary_steps=1, const=5.0)
    x1 = one(x)
    many = CWL2(model, steps=40, binary_steps=5, const=5.0)
    x5 = many(x)
    assert one.success.any()
    assert (many.success >= one.success).all()
    both = one.success
    assert (many.l2[both] <= one.l2[both] + 1e-6).all()
    assert many.l2[both].mean() < one.l2[both].mean()
    # l2 reports the returned example; failures come back unchanged
    l2 = (x5 - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(many.l2[many.success], l2[many.success])
    assert torch.equal(x5[~many.success], x[~many.success])
    assert torch.equal(x1[~one.success], x[~one.success])
    fooled = model(x5).argmax(1) != model(x).argmax(1)
    assert torch.equal(fooled, many.success)


def test_cw_eps_cap():
    model, x = conv(), rand(4, 8)
    atk = CWL2(model, eps=0.05, steps=20, binary_steps=2)
    out = atk(x)
    assert (out - x).abs().max() <= 0.05
