"""Small models shared by several test modules (imported as ``tests.helpers``)."""

from __future__ import annotations

import torch
from torch import nn


def tiny(seed: int = 0) -> nn.Module:
    """Conv(4, 3x3)-ReLU-Dense(10) on 1×8×8 images, weights drawn from N(0, 0.5²) with
    ``seed``, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``luring`` with ``argv`` in this process: (exit code, stdout, stderr)."""
    from luring.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    """Is ``err`` a single line without a traceback (the CLI's error contract)?"""
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def check_attack_output(x, before, x_adv, eps: float) -> None:
    """The pitfall checks every attack's output passes: inputs untouched, float32 of the
    input's shape, finite, in [0, 1], within the l∞ ε (in float64), equal to x when ε = 0."""
    import torch

    assert torch.equal(x, before)
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv.double() - x.double()).abs().max() <= eps
    if eps == 0:
        assert torch.equal(x_adv, x)
