"""Bare PyTorch at the hardware's best precision: the plain loops of
:mod:`luring.benchmarks.workloads` (sign-gradient attack, P's luring step, M's step) run
under autocast in the best lower precision the device runs fast, with channels-last
weights — the ceiling luring's own attacks and trainers are held to. Without a faster
precision (``env.best == "fp32"``) they are the float32 loops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from luring import precision as prec
from luring.benchmarks.env import Env, attack_batch, epoch_batches, p_settings, seeded_build
from luring.models import Stacked

__all__ = ["bare_loop_best", "bare_step_p_best", "bare_step_m_best"]


def bare_loop_best(env: Env) -> Callable[[], float]:
    """The plain sign-gradient loop on M in ``env.best`` (autocast + channels-last twin)."""
    x, y = attack_batch(env, env.cfg.batch)
    p = env.best
    model = prec.gradient_twin(env.target, p)
    eps, alpha = env.cfg.eps, env.cfg.alpha

    def run() -> float:
        x_adv = x.clone()
        for _ in range(env.cfg.steps):
            x_adv.requires_grad_(True)
            with prec.autocast(p, env.device):
                out = model(prec.batch_format(x_adv, p))
            loss = F.cross_entropy(out.float(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
        return float(len(x) * env.cfg.steps)

    return run


def bare_step_p_best(env: Env) -> Callable[[], float]:
    """``workloads._bare_step_p`` in ``env.best``."""
    from luring.defense.loss import luring_loss

    s = p_settings(env)
    x = env.x_train[:env.cfg.train_images].to(env.device)
    batches = epoch_batches(len(x), s["batch_size"])
    lam, lr, p = float(s["lambda"]), float(s["lr"]), env.best
    target = prec.gradient_twin(env.target, p)

    def run() -> float:
        with torch.no_grad():
            m_logits = env.target(x)
        comp = seeded_build("mnist-component", env.seed).to(env.device).train()
        if p != "fp32":
            prec.to_channels_last(comp)
        t = Stacked(comp, target)
        opt = torch.optim.Adam(comp.parameters(), lr=lr)
        for _ in range(s["epochs"]):
            for a, b in batches:
                opt.zero_grad(set_to_none=True)
                with prec.autocast(p, env.device):
                    out = t(prec.batch_format(x[a:b], p))
                luring_loss(out.float(), m_logits[a:b], lam).backward()
                opt.step()
        return float(sum(b - a for a, b in batches) * s["epochs"])

    return run


def bare_step_m_best(env: Env) -> Callable[[], float]:
    """Plain Adam steps on a fresh M with cross-entropy, in ``env.best``."""
    c, p = env.cfg, env.best
    x = env.x_train[:c.train_images].to(env.device)
    y = env.y_train[:c.train_images].to(env.device)

    def run() -> float:
        model = seeded_build("mnist-target", env.seed).to(env.device).train()
        if p != "fp32":
            prec.to_channels_last(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(c.m_epochs):
            for i in range(0, len(x), c.m_batch):
                opt.zero_grad(set_to_none=True)
                with prec.autocast(p, env.device):
                    out = model(prec.batch_format(x[i:i + c.m_batch], p))
                F.cross_entropy(out.float(), y[i:i + c.m_batch]).backward()
                opt.step()
        return float(len(x) * c.m_epochs)

    return run
