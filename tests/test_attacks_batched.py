"""Settings of the iterative loop batched into one pass per step give exactly the results
of running them one after another."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from luring.attacks import DIM, DIMTI, MIM, MIMTI, NIFGSM, PGD, SINIFGSM, bpda
from luring.attacks.batched import batchable, run_together
from luring.attacks.worst_case import default_settings, worst_case_search
from luring.errors import LuringError

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 8 * 8, 3), nn.Sigmoid(), nn.Linear(3, 3))
    return m.eval()


def _data(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_run_together_equals_one_at_a_time_exactly():
    model = _model()
    x, y = _data()
    kw = {"eps": 0.2, "steps": 4, "alpha": 0.05, "seed": 3}

    def make():
        return [MIM(model, **kw), DIM(model, p=0.7, **kw), MIMTI(model, kernel_size=3, **kw),
                DIMTI(model, p=1.0, kernel_size=3, **kw), PGD(model, random_start=True, **kw),
                NIFGSM(model, **kw)]

    alone = [a(x, y) for a in make()]
    batch = make()
    together = run_together(batch, x, y)
    for a, b, atk in zip(alone, together, batch, strict=True):
        assert torch.equal(a, b), type(atk).__name__
        assert atk.n_forward == atk.n_backward == 4 and atk.n_queries == 4 * len(x)
    # the same with the logit-margin loss and BPDA as the gradient source
    kw2 = kw | {"loss": "margin", "kappa": 5.0, "grad_model": bpda(model)}
    alone = [MIM(model, **kw2)(x, y), DIM(model, p=0.5, **kw2)(x, y)]
    together = run_together([MIM(model, **kw2), DIM(model, p=0.5, **kw2)], x, y)
    assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


def test_what_cannot_share_a_pass_is_refused():
    model = _model()
    x, y = _data()
    assert not batchable(SINIFGSM(model, eps=0.1, steps=2, scales=2))
    assert not batchable(MIM(model, eps=0.1, steps=2, alpha=0.05, batch_size=2))
    assert batchable(NIFGSM(model, eps=0.1, steps=2))
    with pytest.raises(LuringError, match="cannot share"):
        run_together([SINIFGSM(model, eps=0.1, steps=2, scales=2)], x, y)
    with pytest.raises(LuringError, match="share the model"):
        run_together([MIM(model, eps=0.1, steps=2, alpha=0.05),
                      MIM(_model(1), eps=0.1, steps=2, alpha=0.05)], x, y)
    assert run_together([], x, y) == []


def test_worst_case_search_together_gives_the_same_search():
    source, target = _model(0), _model(2)
    x, y = _data(8)
    grid = default_settings((0.5, 1.0), (3,)) + [{"attack": "si-ni-fgsm", "scales": 2},
                                                  {"attack": "ni-fgsm"}]
    kw = {"steps": 3, "alpha": 0.05, "settings": grid, "seed": 1, "progress": False}
    one = worst_case_search(source, target, x, y, 0.2, **kw)
    for together in (2, 100):
        many = worst_case_search(source, target, x, y, 0.2, together=together, **kw)
        assert [r.to_dict() for r in many.settings] == [r.to_dict() for r in one.settings]
        for k in ("best_x_adv", "ac_m_all", "ac_mop_all", "defended_all", "best_defended"):
            assert torch.equal(getattr(many, k), getattr(one, k)), k
    with pytest.raises(LuringError, match="together"):
        worst_case_search(source, target, x, y, 0.2, together=0, **kw)


def test_settings_per_pass_follow_the_device(monkeypatch):
    """The experiments group MIM-W settings up to 128 images per pass on a CPU (where larger
    passes run slower) and 1,024 on a GPU; $LURING_BATCH_IMAGES overrides both."""
    from luring.experiments.common import BATCH_IMAGES, together

    monkeypatch.delenv("LURING_BATCH_IMAGES", raising=False)
    model = _model(0)
    assert BATCH_IMAGES == {"cpu": 128, "cuda": 1024}
    assert [together(n, model) for n in (50, 64, 100, 200, 1000)] == [2, 2, 1, 1, 1]
    assert together(50) == 2 and together(0) == 128
    meta = nn.Linear(2, 2, device="meta")  # any non-CPU device gets the GPU default
    assert together(50, meta) == 20
    monkeypatch.setenv("LURING_BATCH_IMAGES", "1000")
    assert together(50, model) == 20 and together(2000, model) == 1
    monkeypatch.setenv("LURING_BATCH_IMAGES", "many")
    assert together(50, model) == 2
