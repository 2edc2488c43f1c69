"""Training the defense component: labels never read, M untouched, settings, schedule."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch

from luring.defense import defense_settings, resolve_settings, train_defense
from luring.defense.train import ImageBatches, lr_at
from luring.errors import LuringError
from luring.models.augment import random_affine


class Poison:
    """Stands in for labels: any use at all (attribute, length, indexing, iteration,
    conversion, comparison, torch function) fails the test."""

    def __getattribute__(self, name):
        raise AssertionError(f"labels were touched ({name})")

    def _boom(self, *a, **k):
        raise AssertionError("labels were touched")

    __len__ = __getitem__ = __iter__ = __bool__ = __array__ = __index__ = __int__ = _boom
    __float__ = __eq__ = __ne__ = __lt__ = __contains__ = __hash__ = _boom

    @classmethod
    def __torch_function__(cls, *a, **k):
        raise AssertionError("labels were touched (torch function)")


def _tiny(method: str, **over):
    s = defense_settings("mnist", method, "quick")
    return resolve_settings(s, **{"epochs": 1, "batch_size": 32, "eval_every": 4,
                                  "val_fraction": 0.25, **over})


@pytest.fixture(scope="module")
def small(mnist5k):
    x_tr, y_tr, _, _ = mnist5k
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(1))[:192]
    return x_tr[idx], y_tr[idx]


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", ["luring", "ce", "auto"])
def test_never_reads_labels(trained_mnist_target, small, method):
    m, _, _ = trained_mnist_target
    x, _ = small
    a = train_defense(m, x, method=method, settings=_tiny(method), labels=Poison(), seed=3)
    b = train_defense(m, x, method=method, settings=_tiny(method), labels=None, seed=3)
    sa, sb = a.component.state_dict(), b.component.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    rule = "min-reconstruction" if method == "auto" else "max-agreement"
    assert a.selection["rule"] == rule and a.head is None


def test_data_path_is_images_only():
    params = inspect.signature(ImageBatches).parameters
    assert not any("label" in p or p == "y" for p in params)
    x = torch.rand(10, 1, 28, 28)
    batches = ImageBatches(x, torch.arange(10), 4, torch.Generator().manual_seed(0),
                           torch.device("cpu"))
    got = list(batches)
    assert len(got) == len(batches) == 3
    for xb, idx in got:
        assert xb.dtype == torch.float32 and xb.shape[1:] == (1, 28, 28)
        assert torch.equal(xb, x[idx])
    assert sorted(torch.cat([i for _, i in got]).tolist()) == list(range(10))


def test_target_untouched_and_called_once_per_step(trained_mnist_target, small):
    m0, _, _ = trained_mnist_target
    m = copy.deepcopy(m0).train()
    for p in m.parameters():
        p.requires_grad_(True)
    before = _state(m)
    calls = []
    hook = m.register_forward_hook(lambda mod, inp, out: calls.append(mod.training))
    try:
        s = _tiny("luring", eval_every=0)
        r = train_defense(m, small[0], method="luring", settings=s, seed=0)
    finally:
        hook.remove()
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training and all(p.requires_grad for p in m.parameters())
    assert not any(calls), "M must run in eval mode during training"
    steps = r.history[-1]["step"]
    # one pass to cache M's logits, one forward per step (inside T), one held-out evaluation
    assert len(calls) == 1 + steps + 1


def test_deterministic_and_selection(trained_mnist_target, small):
    m, _, _ = trained_mnist_target
    s = _tiny("luring")
    a = train_defense(m, small[0], method="luring", settings=s, seed=5)
    b = train_defense(m, small[0], method="luring", settings=s, seed=5)
    assert all(torch.equal(v, b.component.state_dict()[k])
               for k, v in a.component.state_dict().items())
    sel = a.selection
    assert sel["n"] == 48 and 0 <= sel["agreement"] <= 1
    best = max(h["val_agreement"] for h in a.history)
    assert sel["agreement"] == best
    assert sel["step"] == max(h["step"] for h in a.history if h["val_agreement"] == best)
    assert not a.component.training
    json.dumps(a.history), json.dumps(a.selection), json.dumps(a.settings)


def test_stack_requires_labels(trained_mnist_target, small):
    m, _, _ = trained_mnist_target
    with pytest.raises(LuringError, match="labels"):
        train_defense(m, small[0], method="stack", settings=_tiny("stack"),
                      head_arch="mnist-target")
    r = train_defense(m, small[0], method="stack", settings=_tiny("stack"), labels=small[1],
                      head_arch="mnist-target")
    assert r.head is not None and r.head_arch == "mnist-target"


def test_paper_settings():
    s = defense_settings("mnist", "luring", "paper")
    assert (s["epochs"], s["batch_size"], s["lr"], s["lambda"], s["optimizer"]) == (
        64, 64, 1e-3, 1.0, "adam")
    assert s["lr_milestones"] == [[45, 2e-4], [58, 4e-4]] and s["dropout"] == 0.0
    c = defense_settings("cifar10", "luring", "paper")
    assert (c["epochs"], c["batch_size"], c["lr"], c["lambda"], c["dropout"]) == (
        216, 256, 1e-5, 0.15, 0.3)
    v = defense_settings("svhn", "luring", "paper")
    assert (v["epochs"], v["batch_size"], v["lambda"], v["dropout"]) == (210, 256, 1.0, 0.15)
    a = defense_settings("mnist", "auto", "paper")
    assert (a["epochs"], a["batch_size"], a["selection"], a["lambda"]) == (
        50, 128, "reconstruction", None)
    st = defense_settings("mnist", "stack", "paper")
    assert (st["epochs"], st["batch_size"], st["lr"]) == (5, 28, 1e-3)
    with pytest.raises(LuringError, match="auto-encoder"):
        defense_settings("cifar10", "auto", "paper")
    with pytest.raises(LuringError, match="unknown method"):
        defense_settings("mnist", "nope")
    for fam in ("mnist", "svhn", "cifar10"):
        for meth in ("luring", "ce", "stack"):
            q = defense_settings(fam, meth, "quick")
            assert json.loads(json.dumps(q)) == q and q["profile"] == "quick"


def test_overrides_rescale_schedule():
    s = resolve_settings(defense_settings("mnist", "luring", "paper"), epochs=32, lr=2e-3)
    assert s["lr_milestones"] == [[22.5, 4e-4], [29.0, 8e-4]]
    assert resolve_settings(s, epochs=None)["epochs"] == 32
    for bad in ({"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}, {"lambda": 0.0},
                {"dropout": 1.0}, {"val_fraction": 0.9}, {"ema": 1.0}, {"init": "zeros"}):
        with pytest.raises(LuringError):
            resolve_settings(s, **bad)


def test_lr_schedule():
    p = defense_settings("mnist", "luring", "paper")
    assert [lr_at(p, e) for e in (0, 44.9, 45, 57.9, 58, 63.9)] == [
        1e-3, 1e-3, 2e-4, 2e-4, 4e-4, 4e-4]
    q = {"lr": 1e-3, "epochs": 10, "warmup_epochs": 1.0, "lr_decay": "cosine", "min_lr": 0.0}
    assert lr_at(q, 0.5) == pytest.approx(5e-4)
    assert lr_at(q, 1.0) == pytest.approx(1e-3)
    assert lr_at(q, 5.5) == pytest.approx(5e-4)
    assert lr_at(q, 10.0) == pytest.approx(0.0, abs=1e-12)
    q["lr_decay"] = "linear"
    assert lr_at(q, 5.5) == pytest.approx(5e-4)


def test_image_batches_augment_with_the_models_affine_transform():
    """The defense's data loader applies luring.models.augment.random_affine (one
    implementation for M and P): same generator state, same images."""
    x = torch.rand(8, 1, 28, 28)
    aug = {"shift": 0.1, "rotate": 15.0, "fill": "border"}
    batches = ImageBatches(x, torch.arange(8), 8, torch.Generator().manual_seed(3),
                           torch.device("cpu"), aug)
    (xb, idx), = list(batches)
    g = torch.Generator().manual_seed(3)
    order = torch.arange(8)[torch.randperm(8, generator=g)]
    assert torch.equal(idx, order)
    want = random_affine(x[order], rotation_deg=15.0, shift=0.1, fill="border", generator=g)
    assert torch.equal(xb, want)
    assert xb.min() >= 0 and xb.max() <= 1 and not torch.equal(xb, x[order])


def test_build_defense_trains_evaluates_and_writes(trained_mnist_target, small, tmp_path):
    """build_defense = train_defense + evaluate_clean + save_defense: the written directory
    loads back to the trained P, its clean figures are those of the returned T on the given
    test split, and the training labels are never touched for a non-stack method."""
    from luring.defense import build_defense, load

    m, x_te, y_te = trained_mnist_target
    x, _ = small
    meta = {"architecture": "mnist-target", "input_shape": [1, 28, 28], "num_classes": 10}
    out, trained, clean = build_defense(
        tmp_path / "d", m, meta, x, (x_te[:200], y_te[:200]), method="luring",
        settings=_tiny("luring"), family="mnist", dataset="mnist-5k", seed=3, labels=Poison())
    assert out == tmp_path / "d" and clean["n"] == 200
    with torch.no_grad():
        t = trained.augmented(x_te[:200]).argmax(1)
        mm = m(x_te[:200]).argmax(1)
    assert clean["accuracy_t"] == pytest.approx((t == y_te[:200]).float().mean().item())
    assert clean["false_alarm_rate"] == pytest.approx((t != mm).float().mean().item())
    d = load(out)
    assert d.method == "luring" and d.meta["clean"] == json.loads(json.dumps(clean))
    assert torch.equal(d.predict(x_te[:200]), t)


def test_weight_averaging_also_averages_batch_norm_statistics(trained_mnist_target, small,
                                                              monkeypatch):
    """With ``ema``, the kept P's batch-norm running statistics are the moving average of the
    raw ones (same decay schedule as the weights), recomputed here by hand from the raw
    statistics after each step; they are not the raw model's."""
    from luring.models.architectures import ARCHITECTURES, ArchSpec, VggComponent

    raw: list[torch.Tensor] = []

    def record(module, inputs, output):
        if module.training:
            raw.append(module.running_mean.detach().clone())

    def make(c=1, k=None, **kw):
        net = VggComponent((4,), c, **kw)  # Conv(4)+BN+ReLU, Conv(1)+BN+Sigmoid
        net.net[1].register_forward_hook(record)  # the first BatchNorm2d
        return net

    monkeypatch.setitem(ARCHITECTURES, "tiny-bn-component",
                        ArchSpec("tiny-bn-component", "component", (1, 28, 28), make, 0, "test"))
    m, _, _ = trained_mnist_target
    ema = 0.6
    s = _tiny("luring", ema=ema, val_fraction=0.0, batch_size=16)
    trained = train_defense(m, small[0][:96], method="luring", settings=s, seed=2,
                            component_arch="tiny-bn-component")
    assert len(raw) == 6  # 96 images, batch 16, one epoch, no held-out part
    shadow = torch.zeros_like(raw[0])  # a fresh BatchNorm's running mean
    for step, r in enumerate(raw, start=1):
        shadow = shadow + (1 - min(ema, (1 + step) / (10 + step))) * (r - shadow)
    kept = trained.component.net[1].running_mean
    assert torch.allclose(kept, shadow, atol=1e-6)
    assert not torch.allclose(kept, raw[-1], atol=1e-3)
    assert trained.selection["rule"] == "last"
