"""Other libraries' MIM on the same model, batch and device: torchattacks' ``MIFGSM`` and
ART's ``MomentumIterativeMethod`` (both optional; skipped when not installed), and the check
that their adversarial examples agree with luring's.

All three are the same algorithm (Dong et al. 2018, l∞, decay 1, no random start, the
same ε, step and iterations, true labels): the momentum normalisations differ only by a
constant factor (mean |g| in luring and torchattacks, the l1 norm in ART), which the sign
step ignores, so success rates should match to within float rounding.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from luring.benchmarks.env import Env, attack_batch

__all__ = ["available", "LIBRARY_CONTENDERS", "LIBRARIES", "agreement"]

#: contender name → distribution name (as pip spells it) and import name.
LIBRARIES = {
    "torchattacks_mifgsm": ("torchattacks", "torchattacks"),
    "art_mim": ("adversarial-robustness-toolbox", "art"),
}


def available() -> dict[str, str | None]:
    """``{contender: installed version or None}`` for the optional libraries (found without
    importing them)."""
    out: dict[str, str | None] = {}
    for name, (dist, module) in LIBRARIES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        version = None
        if found:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        out[name] = version
    return out


def _torchattacks_attack(env: Env, steps: int) -> Callable[[torch.Tensor, torch.Tensor],
                                                              torch.Tensor]:
    import torchattacks

    atk = torchattacks.MIFGSM(env.target, eps=env.cfg.eps, alpha=env.cfg.alpha, steps=steps,
                              decay=1.0)
    return lambda x, y: atk(x, y)


def _art_attack(env: Env, steps: int, batch: int) -> Callable[[torch.Tensor, torch.Tensor],
                                                              torch.Tensor]:
    import numpy as np
    from art.attacks.evasion import MomentumIterativeMethod
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=env.target, loss=nn.CrossEntropyLoss(),
                            input_shape=tuple(env.x_test.shape[1:]), nb_classes=10,
                            clip_values=(0.0, 1.0),
                            device_type="gpu" if env.device.type == "cuda" else "cpu")
    atk = MomentumIterativeMethod(clf, norm=np.inf, eps=env.cfg.eps, eps_step=env.cfg.alpha,
                                  decay=1.0, max_iter=steps, batch_size=batch, verbose=False)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = atk.generate(x.cpu().numpy(), y.cpu().numpy())
        return torch.from_numpy(out).to(x.device)

    return run


def _contender(make: Callable[[Env], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
               ) -> Callable[[Env], Callable[[], float]]:
    def build(env: Env) -> Callable[[], float]:
        attack = make(env)
        x, y = attack_batch(env, env.cfg.batch)

        def run() -> float:
            attack(x, y)
            return float(len(x) * env.cfg.steps)

        return run

    return build


#: name → (group, unit, description, builder(env) -> run); same shape as CONTENDERS.
LIBRARY_CONTENDERS: dict[str, tuple[str, str, str, Callable[[Env], Callable[[], float]]]] = {
    "torchattacks_mifgsm": ("gradient", "image-iterations/s",
                            "torchattacks.MIFGSM on M (same ε, step, iterations)",
                            _contender(lambda e: _torchattacks_attack(e, e.cfg.steps))),
    "art_mim": ("gradient", "image-iterations/s",
                "ART MomentumIterativeMethod on M via PyTorchClassifier (numpy in/out)",
                _contender(lambda e: _art_attack(e, e.cfg.steps, e.cfg.batch))),
}


def agreement(env: Env, names: list[str]) -> dict[str, Any]:
    """Run luring's MIM and each library in ``names`` once on ``cfg.agree_images`` test
    images (true labels, ``cfg.agree_steps`` iterations) and compare: success rate (percent
    of images misclassified after the attack), the difference in points, the fraction of
    images with the same outcome and the largest pixel difference to luring's examples."""
    from luring.attacks import MIM
    from luring.models import predict_labels

    c = env.cfg
    x, y = attack_batch(env, c.agree_images)
    model = env.target

    def success(x_adv: torch.Tensor) -> torch.Tensor:
        return predict_labels(model, x_adv, c.batch) != y.cpu()

    ours = MIM(model, eps=c.eps, steps=c.agree_steps, alpha=c.alpha, batch_size=c.batch)(x, y)
    ok_ours = success(ours)
    clean = success(x)
    out: dict[str, Any] = {
        "n": len(x), "eps": c.eps, "alpha": c.alpha, "steps": c.agree_steps,
        "labels": "true", "trained_model": env.target_info.get("weights") != "random",
        "clean_error_rate": 100 * clean.float().mean().item(),
        "mim": {"success_rate": 100 * ok_ours.float().mean().item()},
    }
    for name in names:
        if name == "torchattacks_mifgsm":
            attack = _torchattacks_attack(env, c.agree_steps)
            theirs = torch.cat([attack(x[i:i + c.batch], y[i:i + c.batch])
                                for i in range(0, len(x), c.batch)])
        else:
            theirs = _art_attack(env, c.agree_steps, c.batch)(x, y)
        ok = success(theirs)
        rate = 100 * ok.float().mean().item()
        diff = rate - out["mim"]["success_rate"]
        out[name] = {"success_rate": rate, "difference_points": diff,
                     "same_outcome": (ok == ok_ours).float().mean().item(),
                     "max_abs_pixel_difference": (theirs - ours).abs().max().item(),
                     "pixels_differing": ((theirs - ours).abs() > 1e-6).float().mean().item()}
    return out
