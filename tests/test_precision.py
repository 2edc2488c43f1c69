"""Precision of gradient work (luring.precision): what is lower precision, what stays float32.

Gradients (attacks, training) may run under bf16 autocast with channels-last weights; every
judgement is float32 on the real model. bf16 autocast runs on any x86 CPU (emulated where the
CPU has no bf16 units: slower, same results), so these tests hold on AMD and Intel alike.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny

from luring import precision as prec
from luring.attacks import MIM, PGD, bpda
from luring.attacks.batched import run_together
from luring.cli.main import main
from luring.errors import LuringError
from luring.models import predict_labels


@pytest.fixture(autouse=True)
def _reset_default():
    yield
    prec.set_default(None)


def test_requested_reads_argument_default_then_environment(monkeypatch):
    monkeypatch.delenv("LURING_PRECISION", raising=False)
    assert prec.requested() == "fp32"                         # the Python API's default
    monkeypatch.setenv("LURING_PRECISION", "bf16")
    assert prec.requested() == "bf16"
    prec.set_default("auto")
    assert prec.requested() == "auto" and prec.requested("fp32") == "fp32"
    monkeypatch.setenv("LURING_PRECISION", "half")
    prec.set_default(None)
    with pytest.raises(LuringError, match="LURING_PRECISION"):
        prec.requested()
    with pytest.raises(LuringError, match="choose one of auto, fp32, bf16, fp16"):
        prec.requested("float8")


def test_fp16_on_a_cpu_is_a_one_line_error():
    with pytest.raises(LuringError, match="not available on cpu; use --precision bf16"):
        prec.resolve("fp16", tiny(), "cpu")


def test_auto_keeps_float32_unless_clearly_faster(monkeypatch):
    prec._cache.clear()
    model = tiny()
    monkeypatch.setattr(prec, "measure", lambda *a, **k: {"fp32": 1.0, "bf16": 0.9})
    assert prec.resolve("auto", model, "cpu", (1, 8, 8)) == "fp32"    # 1.11x < 1.3x
    prec._cache.clear()
    monkeypatch.setattr(prec, "measure", lambda *a, **k: {"fp32": 1.0, "bf16": 0.5})
    assert prec.resolve("auto", model, "cpu", (1, 8, 8)) == "bf16"    # 2x
    monkeypatch.setattr(prec, "measure", lambda *a, **k: {"fp32": 1.0, "bf16": 2.0})
    assert prec.resolve("auto", model, "cpu", (1, 8, 8)) == "bf16"    # measured once, cached
    prec._cache.clear()
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert prec.resolve("auto", linear, "cpu") == "fp32"              # nothing to speed up


def test_gradient_twin_leaves_the_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = prec.gradient_twin(model, "bf16")
    assert twin is not model
    assert twin[0].weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous()
    assert prec.gradient_twin(model, "fp32") is model


def test_bf16_attack_judges_in_float32_and_records_its_precision():
    model, x = tiny(), torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fast = PGD(model, eps=0.1, steps=3, alpha=0.04, precision="bf16")
    slow = PGD(model, eps=0.1, steps=3, alpha=0.04, precision="fp32")
    a, b = fast(x), slow(x)
    assert fast.precision == "bf16" and fast.params()["precision"] == "bf16"
    assert slow.params()["precision"] == "fp32"
    # the labels attacked (y=None) come from the float32 model in both
    assert torch.equal(fast.predict(x), predict_labels(model, x))
    assert (a - x).abs().max() <= 0.1 and a.min() >= 0 and a.max() <= 1
    assert not torch.isnan(a).any() and b.shape == a.shape


def test_bf16_works_with_bpda_and_batched_settings():
    model, x = tiny(), torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = predict_labels(model, x)
    gm = bpda(model)
    atks = [MIM(model, eps=0.1, steps=2, alpha=0.05, grad_model=gm, precision="bf16")
            for _ in range(2)]
    outs = run_together(atks, x, y)
    assert all(a.precision == "bf16" for a in atks)
    assert all((o - x).abs().max() <= 0.1 for o in outs)
    mixed = [MIM(model, eps=0.1, steps=2, alpha=0.05, precision="bf16"),
             MIM(model, eps=0.1, steps=2, alpha=0.05, precision="fp32")]
    with pytest.raises(LuringError, match="share the precision"):
        run_together(mixed, x, y)


@pytest.mark.slow
def test_bf16_mim_fools_a_trained_model_as_often_as_float32(trained_mnist_target):
    """MIM crafted with bf16 gradients (judged in float32) is as strong as the float32 one:
    n = 512 images of the same test split, paired. Tolerance: the two success rates differ by
    at most 3 points, about 3 standard errors of a paired difference whose discordant pairs
    are a few percent (measured: 0-1 points on two CPUs)."""
    model, x_te, y_te = trained_mnist_target
    x, y = x_te[:512], y_te[:512]
    ok = predict_labels(model, x) == y
    rates = {}
    for p in ("fp32", "bf16"):
        x_adv = MIM(model, eps=0.15, steps=10, alpha=0.02, precision=p)(x, y)
        rates[p] = float((predict_labels(model, x_adv) != y)[ok].float().mean())
    assert rates["fp32"] > 0.3                                 # the attack does something
    assert abs(rates["fp32"] - rates["bf16"]) <= 0.03, rates


def test_training_in_bf16_is_recorded_and_saved_contiguous(mnist5k):
    from luring.defense.settings import defense_settings
    from luring.defense.train import train_defense
    from luring.models.train import target_settings, train_target

    x_tr, y_tr, x_te, y_te = mnist5k
    m, info = train_target(x_tr[:256], y_tr[:256], target_settings("mnist", epochs=1),
                           x_test=x_te[:200], y_test=y_te[:200], precision="bf16")
    assert info["precision"] == "bf16"
    assert all(p.is_contiguous() for p in m.parameters())     # back to the stored format
    # the reported accuracy is float32 on the real (contiguous) model
    acc = float((predict_labels(m.eval(), x_te[:200]) == y_te[:200]).float().mean())
    assert info["test_accuracy"] == acc
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = defense_settings("mnist", "luring", "quick") | {"max_steps": 3, "eval_every": 3}
    d = train_defense(m, x_tr[:128], method="luring", settings=s, precision="bf16")
    assert d.settings["precision"] == "bf16"
    assert all(p.is_contiguous() for p in d.component.parameters())
    for k, v in m.state_dict().items():                       # M untouched, contiguous
        assert torch.equal(v, before[k]) and v.is_contiguous()


def test_judgements_are_float32_whatever_the_precision(mnist5k, tmp_path):
    """The same source attacked with --precision bf16 and fp32: the clean predictions and
    accuracy (judgements) are identical bytes; only the crafted pixels may differ."""
    from luring.models import build, save_checkpoint

    torch.manual_seed(0)
    m = build("mnist-target").eval()
    src = tmp_path / "m"
    save_checkpoint(m, src, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k")
    outs = {}
    for p in ("bf16", "fp32"):
        out = tmp_path / p
        assert main(["attack", "--source", str(src), "--attack", "mim", "--eps", "0.2",
                     "--steps", "2", "--images", "24", "--chunk", "8", "--precision", p,
                     "--device", "cpu", "--out", str(out)]) == 0
        outs[p] = json.loads((out / "attack.json").read_text())
        assert outs[p]["precision"] == p and outs[p]["params"]["precision"] == p
    assert outs["bf16"]["accuracy_clean"] == outs["fp32"]["accuracy_clean"]
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / p / "adversarial.safetensors") for p in ("bf16", "fp32"))
    assert torch.equal(a["pred_clean"], b["pred_clean"])


def test_cli_rejects_fp16_on_the_cpu_in_one_line(tmp_path, capsys):
    code = main(["attack", "--source", str(tmp_path), "--attack", "mim", "--eps", "0.1",
                 "--images", "2", "--precision", "fp16", "--device", "cpu",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_matmul_peak_and_flops_are_positive():
    from luring.benchmarks.peak import fractions, matmul_peak, work_flops
    from luring.models import build

    mm = matmul_peak(torch.device("cpu"), size=256, reps=1)
    assert mm["fp32"] > 0 and mm.get("bf16", 1) > 0
    flops = work_flops(build("mnist-target"), build("mnist-component"), (1, 28, 28))
    # M's forward: two convolutions and two dense layers, about 2·(0.6 + 10 + 3.2) MFLOPs
    assert 1e7 < flops["fwd_bwd_input_m"] < 1e8
    assert flops["train_step_m"] > flops["fwd_bwd_input_m"]
    assert flops["fwd_bwd_input_t"] > flops["fwd_bwd_input_m"]
    fr = fractions({"mim": 1000.0}, flops, {"fp32": 100.0, "bf16": 400.0}, "bf16", "bf16")
    assert math.isclose(fr["mim"]["fraction_of_peak"],
                        1000 * flops["fwd_bwd_input_m"] / 1e9 / 400.0)


def test_auto_timing_leaves_every_submodule_in_its_mode():
    """``auto`` times the model in eval mode and restores each submodule's own mode: a frozen
    M (eval, BatchNorm statistics fixed) inside T = M∘P stays in eval while P trains."""
    prec._cache.clear()
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                            torch.nn.LazyLinear(3)).eval()
    m(torch.rand(2, 1, 8, 8))
    p = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1)).train()
    t = torch.nn.Sequential(p, m)
    stats = m[1].running_mean.clone()
    prec.resolve("auto", t, "cpu", (1, 8, 8))
    assert t.training and p.training and not m.training and not m[1].training
    assert torch.equal(m[1].running_mean, stats)


def test_using_restores_the_previous_default(monkeypatch):
    monkeypatch.delenv("LURING_PRECISION", raising=False)
    prec.set_default(None)
    with prec.using("bf16"):
        assert prec.requested() == "bf16"
    assert prec._default is None and prec.requested() == "fp32"
    with pytest.raises(RuntimeError), prec.using("fp32"):
        raise RuntimeError
    assert prec._default is None
