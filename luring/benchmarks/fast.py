"""The bare PyTorch loops luring's attacks and trainers are held to — the plain sign-gradient
attack, P's luring step and M's step — written once for a precision ``p``.

In ``"fp32"`` they are the plain float32 NCHW loops (autocast is a no-op, the model is M
itself and batches keep their layout): the ``bare_loop`` / ``bare_step_p`` / ``bare_step_m``
contenders. In ``env.best``, the best lower precision the device runs fast, they run under
autocast with channels-last weights — the ceiling the hardware gives (the ``*_best``
contenders); without a faster precision (``env.best == "fp32"``) those are the float32 loops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from luring import precision as prec
from luring.benchmarks.env import Env, attack_batch, epoch_batches, p_settings, seeded_build
from luring.models import Stacked

__all__ = ["bare_loop", "bare_step_p", "bare_step_m", "bare_loop_best", "bare_step_p_best",
           "bare_step_m_best"]


def bare_loop(env: Env, p: str) -> Callable[[], float]:
    """The plain sign-gradient loop on M (requires_grad, CE, autograd.grad, sign step,
    clamp) in precision ``p`` (below float32: autocast + the channels-last twin of M)."""
    x, y = attack_batch(env, env.cfg.batch)
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


def bare_step_p(env: Env, p: str) -> Callable[[], float]:
    """The minimal plain loop of Algorithm 1 in precision ``p``: M's logits on the training
    images once (one no_grad forward: the luring loss needs them), then plain Adam steps on
    P through T = M∘P with the luring loss, over the same batches as the trainer."""
    from luring.defense.loss import luring_loss

    s = p_settings(env)
    x = env.x_train[:env.cfg.train_images].to(env.device)
    batches = epoch_batches(len(x), s["batch_size"])
    lam, lr = float(s["lambda"]), float(s["lr"])
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


def bare_step_m(env: Env, p: str) -> Callable[[], float]:
    """Plain Adam steps on a fresh M with cross-entropy (lr 1e-3, the paper's), in ``p``."""
    c = env.cfg
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


def bare_loop_best(env: Env) -> Callable[[], float]:
    """:func:`bare_loop` in ``env.best``."""
    return bare_loop(env, env.best)


def bare_step_p_best(env: Env) -> Callable[[], float]:
    """:func:`bare_step_p` in ``env.best``."""
    return bare_step_p(env, env.best)


def bare_step_m_best(env: Env) -> Callable[[], float]:
    """:func:`bare_step_m` in ``env.best``."""
    return bare_step_m(env, env.best)
