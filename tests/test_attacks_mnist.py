"""Every attack against the trained mnist-5k target M at ε = 0.4 (reduced budgets), and the
worst-case search on tiny models."""

from __future__ import annotations

import pytest
import torch

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
    bpda,
    default_settings,
    worst_case_search,
)
from luring.errors import LuringError
from tests.helpers import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


EPS = 0.4
# name → (number of test images, factory). Gradient attacks: 10 steps of 0.05 (reaches the
# corner of the 0.4-ball); the query attacks, CW and the transfer attacks with several
# gradient evaluations per step (SI's copies, VT's neighbours) run on fewer images to keep
# CPU time low.
CONFIGS = {
    "fgsm": (100, lambda m: FGSM(m, eps=EPS)),
    "pgd": (100, lambda m: PGD(m, eps=EPS, steps=10, alpha=0.05)),
    "mim": (100, lambda m: MIM(m, eps=EPS, steps=10, alpha=0.05)),
    "mim-l2": (100, lambda m: MIM(m, eps=EPS, steps=10, alpha=1.0, norm="l2", eps_l2=30.0)),
    "dim": (100, lambda m: DIM(m, eps=EPS, steps=10, alpha=0.05, p=1.0)),
    "mim-ti": (100, lambda m: MIMTI(m, eps=EPS, steps=10, alpha=0.05, kernel_size=5)),
    "dim-ti": (100, lambda m: DIMTI(m, eps=EPS, steps=10, alpha=0.05, kernel_size=5)),
    "spsa": (32, lambda m: SPSA(m, eps=EPS, steps=30, samples=16)),
    "eco": (32, lambda m: ECO(m, eps=EPS, max_queries=150, block_size=4)),
    "cw-l2": (32, lambda m: CWL2(m, steps=30, binary_steps=4)),
    "mim-margin-bpda": (100, lambda m: MIM(m, eps=EPS, steps=10, alpha=0.05, loss="margin",
                                           kappa=5.0, grad_model=bpda(m))),
    "ni-fgsm": (100, lambda m: NIFGSM(m, eps=EPS, steps=10, alpha=0.05)),
    "si-ni-fgsm": (40, lambda m: SINIFGSM(m, eps=EPS, steps=10, alpha=0.05, scales=3)),
    "vmi-fgsm": (32, lambda m: VMIFGSM(m, eps=EPS, steps=8, alpha=0.05, neighbors=3)),
    "vni-fgsm": (32, lambda m: VNIFGSM(m, eps=EPS, steps=8, alpha=0.05, neighbors=3)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fools_trained_mnist_target(name, trained_mnist_target):
    model, x_test, y_test = trained_mnist_target
    n, factory = CONFIGS[name]
    x, y = x_test[:n], y_test[:n]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    atk = factory(model)
    x_adv = atk(x)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    rate = float(fooled[correct].float().mean())
    print(f"\n{name}: fooled {rate:.3f} of {int(correct.sum())} correctly classified "
          f"({atk.n_queries} queries)")
    if name == "cw-l2":
        assert atk.success[correct].all()
        mean_l2 = float(atk.l2[correct].mean())
        print(f"cw-l2 mean l2 {mean_l2:.3f}")
        assert 0.3 < mean_l2 < 4.0
        assert rate == 1.0
    else:
        assert (x_adv - x).abs().max() <= EPS
        assert rate >= 0.95


# ---- worst-case search (tiny models) ------------------------------------------------------
_tiny = tiny


def test_default_grid_is_the_papers():
    grid = default_settings()
    assert len(grid) == 1 + 10 + 4 + 40
    assert grid[0] == {"attack": "mim"}
    assert {s["kernel_size"] for s in grid if s["attack"] == "dim-ti"} == {3, 5, 10, 15}
    assert sorted({s["p"] for s in grid if s["attack"] == "dim"}) == [
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_worst_case_search_bookkeeping():
    source, target = _tiny(0), _tiny(1)
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = target(x).argmax(1)
    settings = [{"attack": "mim"}, {"attack": "dim", "p": 0.5},
                {"attack": "mim-ti", "kernel_size": 3},
                {"attack": "dim-ti", "p": 1.0, "kernel_size": 10}]
    res = worst_case_search(source, target, x, y, 0.2, steps=3, alpha=0.05, settings=settings,
                            progress=False)
    assert [s.attack for s in res.settings] == ["mim", "dim", "mim-ti", "dim-ti"]
    # recompute every setting by hand
    attacks = [MIM(source, eps=0.2, steps=3, alpha=0.05),
               DIM(source, eps=0.2, steps=3, alpha=0.05, p=0.5),
               MIMTI(source, eps=0.2, steps=3, alpha=0.05, kernel_size=3),
               DIMTI(source, eps=0.2, steps=3, alpha=0.05, p=1.0, kernel_size=10)]
    defended_all = torch.ones(12, dtype=torch.bool)
    ac_m_all = torch.ones(12, dtype=torch.bool)
    keys = []
    for i, (atk, summary) in enumerate(zip(attacks, res.settings, strict=True)):
        x_adv = atk(x)
        with torch.no_grad():
            pm, pt = target(x_adv).argmax(1), source(x_adv).argmax(1)
        defended = (pm == y) | (pt != pm)
        assert summary.dac == pytest.approx(float(defended.float().mean()))
        assert summary.ac_m == pytest.approx(float((pm == y).float().mean()))
        assert summary.ac_mop == pytest.approx(float((pt == y).float().mean()))
        assert summary.params == atk.params()
        defended_all &= defended
        ac_m_all &= pm == y
        keys.append((summary.dac, summary.ac_m, i))
    assert torch.equal(res.defended_all, defended_all)
    assert torch.equal(res.ac_m_all, ac_m_all)
    assert res.best_index == min(keys)[2]
    assert torch.equal(res.best_x_adv, attacks[res.best_index](x))
    assert res.dac_worst <= min(s.dac for s in res.settings)
    summary = res.summary()
    assert summary["best"]["attack"] == res.best.attack and len(summary["settings"]) == 4


def test_worst_case_search_rejects_bad_settings():
    with pytest.raises(LuringError, match="unknown worst-case setting"):
        worst_case_search(_tiny(0), _tiny(1), torch.rand(2, 1, 8, 8), torch.zeros(2), 0.1,
                          steps=1, settings=[{"attack": "spsa"}], progress=False)
    with pytest.raises(LuringError, match="eps"):
        worst_case_search(_tiny(0), _tiny(1), torch.rand(2, 1, 8, 8), torch.zeros(2), 1.1,
                          steps=1, progress=False)
