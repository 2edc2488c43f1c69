"""luring.attacks on tiny models: the shared contract (bounds, inputs untouched, batching,
seeds, counting, validation) and the gradient family (FGSM, PGD, MIM, DI, TI, and the
transfer attacks NI, SI-NI, VMI, VNI, plain and with the margin loss / BPDA)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks import (
    CWL2,
    DIM,
    DIMTI,
    ECO,
    FGSM,
    MIM,
    MIMTI,
    NIFGSM,
    PGD,
    SINIFGSM,
    SPSA,
    VMIFGSM,
    VNIFGSM,
    DiverseInput,
    GaussianSmoothing,
    bpda,
    create,
    diverse_input,
    enforce_bounds,
    gaussian_kernel,
)
from luring.attacks.base import chunk_bounds, default_chunk
from luring.errors import LuringError
from tests.helpers import check_attack_output

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(channels: int = 1, size: int = 8, seed: int = 0) -> nn.Module:
    """Conv(4, 3x3)-ReLU-Dense(10), random weights, eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * size * size, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


class Constant(nn.Module):
    """Logits that do not depend on the input (zero gradients everywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).sum(1, keepdim=True) * 0 + torch.arange(10.0))


def images(n: int = 8, channels: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    x = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, 0] = 0.0      # exact edges of [0, 1]
    x[:, :, 0, 1] = 1.0
    return x


# every attack, with small budgets: name → factory(model, eps, **kw)
FACTORIES = {
    "fgsm": lambda m, eps, **kw: FGSM(m, eps=eps, **kw),
    "pgd": lambda m, eps, **kw: PGD(m, eps=eps, steps=5, alpha=0.05, **kw),
    "mim": lambda m, eps, **kw: MIM(m, eps=eps, steps=5, alpha=0.05, **kw),
    "mim-l2": lambda m, eps, **kw: MIM(m, eps=eps, steps=5, alpha=0.3, norm="l2", eps_l2=0.5,
                                       **kw),
    "dim": lambda m, eps, **kw: DIM(m, eps=eps, steps=5, alpha=0.05, p=0.7, **kw),
    "mim-ti": lambda m, eps, **kw: MIMTI(m, eps=eps, steps=5, alpha=0.05, kernel_size=3, **kw),
    "dim-ti": lambda m, eps, **kw: DIMTI(m, eps=eps, steps=5, alpha=0.05, kernel_size=10, **kw),
    "spsa": lambda m, eps, **kw: SPSA(m, eps=eps, steps=3, samples=8, chunk_size=4, **kw),
    "eco": lambda m, eps, **kw: ECO(m, eps=eps, max_queries=40, block_size=4, **kw),
    "cw-l2": lambda m, eps, **kw: CWL2(m, eps=eps, steps=8, binary_steps=2, **kw),
    "ni-fgsm": lambda m, eps, **kw: NIFGSM(m, eps=eps, steps=5, alpha=0.05, **kw),
    "si-ni-fgsm": lambda m, eps, **kw: SINIFGSM(m, eps=eps, steps=4, alpha=0.05, scales=3,
                                                 **kw),
    "vmi-fgsm": lambda m, eps, **kw: VMIFGSM(m, eps=eps, steps=4, alpha=0.05, neighbors=3,
                                             **kw),
    "vni-fgsm": lambda m, eps, **kw: VNIFGSM(m, eps=eps, steps=4, alpha=0.05, neighbors=3,
                                             p=0.5, kernel_size=3, loss="margin", kappa=1.0,
                                             grad_model=bpda(m), **kw),
}
RANDOM = {"pgd", "dim", "dim-ti", "spsa", "eco", "vmi-fgsm", "vni-fgsm"}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("eps", [0.0, 0.03, 0.3, 1.0])
def test_bounds_and_inputs_untouched(name, eps):
    x = images()
    before = x.clone()
    atk = FACTORIES[name](tiny(), eps)
    x_adv = atk(x)
    check_attack_output(x, before, x_adv, eps)
    d = x_adv.double() - x.double()
    assert (x_adv - x).abs().max() <= eps                       # also in float32
    if name == "mim-l2":
        assert (d.flatten(1).norm(dim=1) <= 0.5).all()
    json.dumps(atk.params())                                     # JSON-able
    assert atk.name == name


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_same_chunks_same_bytes(name):
    """An image's result depends only on its fixed chunk (global offsets), not on the call it
    came in: the same chunk shapes run the same kernels on any CPU, so bytes are equal."""
    x, model = images(8), tiny()
    full = FACTORIES[name](model, 0.1, seed=3, batch_size=4)(x)
    first4 = FACTORIES[name](model, 0.1, seed=3, batch_size=4)(x[:4])
    later = FACTORIES[name](model, 0.1, seed=3, batch_size=4)(x[4:], start_index=4)
    assert torch.equal(full[:4], first4)
    assert torch.equal(full[4:], later)
    # a call that starts mid-chunk is cut at the global chunk boundary (4), not at its start
    mid = FACTORIES[name](model, 0.1, seed=3, batch_size=4)(x[2:], start_index=2)
    assert torch.equal(full[4:], mid[2:])


def _nearly_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to the rounding of different convolution kernels: within 1e-4 everywhere, or
    (sign-quantised steps, where an ulp can flip a near-zero gradient's sign) at most 2% of
    the pixels differ."""
    if torch.allclose(a, b, rtol=0, atol=1e-4):
        return
    assert (a != b).float().mean() <= 0.02


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_other_chunkings_agree_within_rounding(name):
    """Different chunk sizes may run different kernels (oneDNN picks them by shape on some
    CPUs): equal up to rounding, never asserted bit for bit."""
    x, model = images(8), tiny()
    full = FACTORIES[name](model, 0.1, seed=3)(x)
    chunked = FACTORIES[name](model, 0.1, seed=3, batch_size=3)(x)
    first4 = FACTORIES[name](model, 0.1, seed=3)(x[:4])
    for a, b in ((full, chunked), (full[:4], first4)):
        _nearly_equal(a, b)


def test_chunk_bounds_follow_global_offsets():
    assert chunk_bounds(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(6, 7, 4) == [(0, 2), (2, 6), (6, 7)]      # examples 6-7, 8-11, 12
    assert chunk_bounds(8, 0, 4) == []
    assert default_chunk("cpu") == 128 and default_chunk("cuda") == 1024


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_seed_determinism(name):
    x, model = images(4), tiny()
    a = FACTORIES[name](model, 0.2, seed=5)(x)
    b = FACTORIES[name](model, 0.2, seed=5)(x)
    assert torch.equal(a, b)
    if name in RANDOM:
        assert not torch.equal(a, FACTORIES[name](model, 0.2, seed=6)(x))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_zero_gradients_no_nan(name):
    x = images(4)
    x_adv = FACTORIES[name](Constant(), 0.3)(x)
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= 0.3
    if name not in {"pgd", "spsa", "eco"}:                     # no random start / corners
        assert torch.equal(x_adv, x)


def test_mim_mu0_is_iterative_fgsm():
    x, model = images(8), tiny()
    mim = MIM(model, eps=0.2, steps=7, alpha=0.03, mu=0.0)(x)
    ifgsm = PGD(model, eps=0.2, steps=7, alpha=0.03, random_start=False)(x)
    assert torch.equal(mim, ifgsm)
    # and one step of size eps is FGSM
    assert torch.equal(PGD(model, eps=0.2, steps=1, alpha=0.2, random_start=False)(x),
                       FGSM(model, eps=0.2)(x))


def test_counting_and_labels():
    x, model = images(6), tiny()
    atk = MIM(model, eps=0.1, steps=4, alpha=0.02)
    atk(x)
    assert (atk.n_forward, atk.n_backward, atk.n_queries) == (5, 4, 30)    # + label query
    atk(x, torch.zeros(6, dtype=torch.long))
    assert (atk.n_forward, atk.n_backward, atk.n_queries) == (4, 4, 24)
    atk = MIM(model, eps=0.1, steps=4, alpha=0.02, batch_size=4)
    atk(x, torch.zeros(6, dtype=torch.long))
    assert (atk.n_forward, atk.n_backward, atk.n_queries) == (8, 8, 24)


def test_model_mode_and_grads_restored():
    model = tiny().train()
    model[0].weight.requires_grad_(False)
    PGD(model, eps=0.1, steps=2)(images(2))
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_eps_validation(bad):
    with pytest.raises(LuringError, match="eps"):
        MIM(tiny(), eps=bad)


def test_input_validation():
    atk = FGSM(tiny(), eps=0.1)
    x = images(2)
    for bad in (x * 2, x - 1, x.masked_fill(x > 0.5, float("nan")), x[0]):
        with pytest.raises(LuringError):
            atk(bad)
    with pytest.raises(LuringError, match="labels"):
        atk(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(LuringError, match="eps_l2"):
        MIM(tiny(), eps=0.3, norm="l2")
    with pytest.raises(LuringError, match="unknown attack"):
        create("nope", tiny())
    with pytest.raises(LuringError, match="does not take mu"):
        create("spsa", tiny(), mu=1.0)


def test_l2_bound_without_linf_clip():
    x, model = images(4), tiny()
    atk = MIM(model, eps=0.05, steps=10, alpha=0.5, norm="l2", eps_l2=1.0, clip_linf=False)
    d = (atk(x).double() - x.double()).flatten(1)
    assert (d.norm(dim=1) <= 1.0).all() and d.abs().max() > 0.05        # l∞ not clipped
    assert atk.params()["clip_linf"] is False


def test_enforce_bounds_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 5, 5, generator=g)
    wild = x + torch.randn(x.shape, generator=g)
    for eps in (0.0, 1e-7, 0.1, 0.3, 1 / 3):
        out = enforce_bounds(wild, x, linf=eps)
        assert ((out.double() - x.double()).abs() <= eps).all()
        assert out.min() >= 0 and out.max() <= 1
    out = enforce_bounds(wild, x, l2=0.01)
    assert ((out.double() - x.double()).flatten(1).norm(dim=1) <= 0.01).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_ti_kernel(channels):
    for size in (1, 3, 5, 10, 15):
        k = gaussian_kernel(size)
        assert k.shape == (size, size)
        assert abs(float(k.double().sum()) - 1) < 1e-6
        assert torch.allclose(k, k.T)
    g = torch.randn(2, channels, 28, 28)
    assert torch.equal(GaussianSmoothing(1)(g), g)
    for size in (3, 5, 10, 15):
        assert GaussianSmoothing(size)(g).shape == g.shape
    # an impulse in the middle of one channel comes back as the kernel, in that channel only
    imp = torch.zeros(1, channels, 21, 21)
    imp[0, -1, 10, 10] = 1
    out = GaussianSmoothing(5)(imp)
    assert torch.allclose(out[0, -1, 8:13, 8:13], gaussian_kernel(5))
    assert out[0, :-1].abs().sum() == 0
    # even size 10: padding 4 before and 5 after (TF's SAME); output i reads inputs
    # i-4 .. i+5, so the impulse at 10 spreads over 5 .. 14
    out = GaussianSmoothing(10)(imp)
    assert torch.allclose(out[0, -1, 5:15, 5:15], gaussian_kernel(10))
    assert out[0, -1].sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_diverse_input_matches_resize_and_pad(channels):
    x = torch.rand(3, channels, 28, 28, requires_grad=True)
    shrink, top, left = torch.tensor([1, 2, 2]), torch.tensor([0, 2, 1]), torch.tensor([1, 0, 2])
    out = diverse_input(x, shrink, top, left, torch.tensor([True, True, False]))
    assert out.shape == x.shape
    for i in range(2):
        size = 28 - int(shrink[i])
        ref = F.interpolate(x[i:i + 1], size=(size, size), mode="nearest")
        ref = F.pad(ref, (int(left[i]), int(shrink[i] - left[i]), int(top[i]),
                          int(shrink[i] - top[i])))
        assert torch.equal(out[i:i + 1], ref)
    assert torch.equal(out[2], x[2])                 # not applied: identity
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0                         # gradient flows through the transform


def test_di_offset_is_drawn_below_the_shrink():
    # issue #11: the padding before the shrunk image is in {0, ..., shrink-1} (Xie et al.'s
    # and the authors' randint(0, shrink)); read it off the zero rows and columns of ones
    n = 400
    di = DiverseInput(1.0)
    di.setup(n, 1, 0, 0, torch.device("cpu"))
    out = di(torch.ones(n, 1, 8, 8), 0)
    rows, cols = out[:, 0].amax(2) == 0, out[:, 0].amax(1) == 0            # (n, 8) empty lines
    for empty in (rows, cols):
        shrink = empty.sum(1)
        before = empty.long().cumprod(1).sum(1)                           # leading empty lines
        assert set(shrink.tolist()) == {1, 2}
        assert (before < shrink).all()                                    # never `shrink`
        assert (before[shrink == 1] == 0).all()
        two = before[shrink == 2].float()
        assert 0.35 < float(two.mean()) < 0.65                            # 0 and 1 both drawn
    assert (rows.sum(1) == cols.sum(1)).all()                             # square shrink


def test_dim_p0_is_mim_and_variants_compose():
    x, model = images(4), tiny()
    mim = MIM(model, eps=0.2, steps=4, alpha=0.05)(x)
    assert torch.equal(DIM(model, eps=0.2, steps=4, alpha=0.05, p=0.0)(x), mim)
    assert torch.equal(MIMTI(model, eps=0.2, steps=4, alpha=0.05, kernel_size=1)(x), mim)
    assert torch.equal(DIMTI(model, eps=0.2, steps=4, alpha=0.05, p=0.0, kernel_size=1)(x), mim)
    p = DIMTI(model, eps=0.2, steps=4, p=0.5, kernel_size=10).params()
    assert p["p"] == 0.5 and p["kernel_size"] == 10 and p["mu"] == 1.0


def test_paper_defaults():
    m = tiny()
    assert PGD(m).params() == PGD(m, eps=0.3, steps=1000, alpha=0.01, random_start=True).params()
    assert MIM(m).params()["steps"] == 1000 and MIM(m).params()["mu"] == 1.0
    s = SPSA(m).params()
    assert (s["steps"], s["samples"], s["delta"], s["lr"]) == (100, 128, 0.01, 0.1)
    e = ECO(m).params()
    assert (e["max_queries"], e["block_size"], e["early_stop"]) == (20000, 4, False)
    c = CWL2(m).params()
    assert (c["binary_steps"], c["lr"], c["const"], c["steps"]) == (10, 0.1, 0.5, 500)
