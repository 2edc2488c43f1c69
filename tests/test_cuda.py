"""CUDA checks (marker ``cuda``; skipped without a GPU). tools/gpu_check.sh runs them on a
lent GPU machine: precision choice, bf16 attacks judged in float32, batched settings equal to
one at a time in float32, fixed chunks giving the same bytes, and bf16 training of P."""

from __future__ import annotations

import pytest
import torch

from luring import precision as prec
from luring.attacks import MIM, PGD
from luring.attacks.batched import run_together
from luring.models import build, predict_labels

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def trained(mnist5k):
    """The paper's MNIST M trained one epoch on mnist-5k, on the GPU."""
    from luring.models.train import target_settings, train_target

    x_tr, y_tr, x_te, y_te = mnist5k
    m, info = train_target(x_tr, y_tr, target_settings("mnist", epochs=1), device="cuda",
                           x_test=x_te, y_test=y_te, precision="auto")
    return m.eval(), info, x_te, y_te


def test_auto_resolves_to_a_lower_precision_on_the_gpu(trained):
    m, info, _, _ = trained
    p = prec.resolve("auto", m, "cuda", (1, 28, 28))
    assert p in ("bf16", "fp16"), prec._cache
    assert info["precision"] == p and info["test_accuracy"] > 0.9


def test_bf16_mim_as_strong_as_float32_on_the_gpu(trained):
    m, _, x_te, y_te = trained
    x, y = x_te[:512].cuda(), y_te[:512].cuda()
    rates = {}
    for p in ("fp32", "bf16"):
        x_adv = MIM(m, eps=0.15, steps=10, alpha=0.02, precision=p)(x, y)
        assert (x_adv - x).abs().max() <= 0.15
        rates[p] = float((predict_labels(m, x_adv) != y.cpu()).float().mean())
    assert abs(rates["fp32"] - rates["bf16"]) <= 0.03, rates


def test_float32_batched_settings_equal_one_at_a_time_on_the_gpu(trained):
    m, _, x_te, _ = trained
    x = x_te[:64].cuda()
    y = predict_labels(m, x).cuda()
    atks = [MIM(m, eps=e, steps=3, alpha=0.05, precision="fp32") for e in (0.1, 0.2)]
    together = run_together(atks, x, y)
    alone = [MIM(m, eps=e, steps=3, alpha=0.05, precision="fp32")(x, y) for e in (0.1, 0.2)]
    for a, b in zip(together, alone, strict=True):
        assert (a != b).float().mean() <= 0.02   # cuDNN may pick other kernels per shape


def test_fixed_chunks_give_the_same_bytes_on_the_gpu(trained):
    m, _, x_te, _ = trained
    x = x_te[:96].cuda()
    full = PGD(m, eps=0.1, steps=3, alpha=0.04, batch_size=32, precision="bf16")(x)
    part = PGD(m, eps=0.1, steps=3, alpha=0.04, batch_size=32, precision="bf16")(
        x[32:], start_index=32)
    assert torch.equal(full[32:], part)


def test_bf16_training_of_p_on_the_gpu(trained, mnist5k):
    from luring.defense.settings import defense_settings
    from luring.defense.train import train_defense

    m, _, _, _ = trained
    x_tr = mnist5k[0][:1024]
    s = defense_settings("mnist", "luring", "quick") | {"max_steps": 50, "eval_every": 25}
    d = train_defense(m, x_tr, method="luring", settings=s, device="cuda", precision="bf16")
    assert d.settings["precision"] == "bf16" and 0 <= d.selection["agreement"] <= 1
    assert all(p.is_contiguous() for p in d.component.parameters())


def test_build_on_cuda_is_channels_last_only_while_training():
    m = build("mnist-target").cuda()
    with prec.training_format("bf16", m):
        assert m.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert m.features[0].weight.is_contiguous()
