"""What every benchmark contender shares: the environment (:class:`Env`: config, device,
seed, M, P, inputs), the :class:`Contender` record the timer runs, and the small pieces the
contenders of :mod:`luring.benchmarks.workloads`, :mod:`luring.benchmarks.fast` and
:mod:`luring.benchmarks.libraries` use (seeded models, attack batches, P's settings and
per-epoch batches).

The bottom of the benchmark: imports no benchmark module but :mod:`luring.benchmarks.config`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from luring import precision as prec
from luring.benchmarks.config import BenchConfig
from luring.models import Stacked, build

__all__ = ["Env", "Contender", "build_env", "frozen", "seeded_build", "record_forward_sizes",
           "attack_batch", "p_settings", "epoch_batches"]


@dataclass
class Env:
    """What every contender shares: config, device, seed, M, P, inputs and the forward batch
    sizes recorded from the query attacks (``sizes[name]``)."""

    cfg: BenchConfig
    device: torch.device
    seed: int
    target: nn.Module
    component: nn.Module
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    target_info: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    precision: str = "fp32"         # luring's contenders (the config's, resolved)
    best: str = "fp32"              # the bare "best precision" contenders (auto's choice)

    @property
    def augmented(self) -> nn.Module:
        """T = M∘P (eval mode, frozen)."""
        return Stacked(self.component, self.target).eval()


@dataclass
class Contender:
    """One thing to time: ``run()`` does one repetition and returns its work count.
    ``group``: the contenders it is compared with (scheduled together, see
    :mod:`luring.benchmarks.timing`). ``notes``: extra per-run measurements a run appends
    (``train_p``: ``loop_seconds``, the trainer's own optimisation-loop time)."""

    name: str
    group: str
    unit: str
    description: str
    run: Callable[[], float]
    notes: dict[str, list[float]] = field(default_factory=dict)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with ``requires_grad=False`` parameters (returned)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def seeded_build(arch: str, seed: int) -> nn.Module:
    """``build(arch)`` with weights drawn from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(arch)


def build_env(cfg: BenchConfig, device: torch.device, seed: int = 0, *,
              target_state: dict[str, torch.Tensor] | None = None,
              sizes: dict[str, list[int]] | None = None,
              log: Callable[[str], None] | None = None) -> Env:
    """Load mnist-5k, make M (``target_state`` if given, else trained or random per
    ``cfg.train_target``) and a random P, all on ``device``."""
    from luring.data import load
    from luring.models.train import evaluate_accuracy, target_settings, train_target

    x_tr, y_tr = load("mnist-5k", "train")
    x_te, y_te = load("mnist-5k", "test")
    info: dict[str, Any] = {"architecture": "mnist-target", "component": "mnist-component"}
    if target_state is not None:
        target = build("mnist-target")
        target.load_state_dict(target_state)
        info["weights"] = "given"
    elif cfg.train_target:
        n = cfg.target_train_images or len(x_tr)
        if log:
            log(f"training M (mnist-target) on {n} mnist-5k images, 1 epoch")
        t0 = time.perf_counter()
        target, _ = train_target(x_tr[:n], y_tr[:n], target_settings("mnist", epochs=1),
                                 seed=seed, device=device)
        info.update(weights="trained", train_images=n, epochs=1,
                    train_seconds=time.perf_counter() - t0)
    else:
        target = seeded_build("mnist-target", seed)
        info["weights"] = "random"
    target = frozen(target.to(device))
    if target_state is None:
        info["test_accuracy"] = evaluate_accuracy(target, x_te, y_te)
        info["n_test"] = len(x_te)
    component = frozen(seeded_build("mnist-component", seed + 1).to(device))
    shape = tuple(x_te.shape[1:])
    best = prec.resolve("auto", target, device, shape)
    ours = prec.resolve(cfg.precision, target, device, shape)
    return Env(cfg, device, seed, target, component, x_te, y_te, x_tr, y_tr, info,
               dict(sizes or {}), ours, best)


def record_forward_sizes(model: nn.Module, fn: Callable[[], Any]) -> list[int]:
    """Run ``fn()`` and return the batch size of every forward call of ``model`` in order."""
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        fn()
    finally:
        handle.remove()
    return sizes


def attack_batch(env: Env, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (repeated if needed) and labels, on the device."""
    reps = -(-n // len(env.x_test))
    x = env.x_test.repeat(reps, 1, 1, 1)[:n].to(env.device)
    y = env.y_test.repeat(reps)[:n].to(env.device)
    return x, y


def p_settings(env: Env) -> dict[str, Any]:
    """The quick luring profile for MNIST (no augmentation, like the bare step) with the
    benchmark's epochs and batch size and no held-out evaluation."""
    from luring.defense.settings import defense_settings, resolve_settings

    s = defense_settings("mnist", "luring", "quick")
    return resolve_settings(s, epochs=env.cfg.p_epochs, batch_size=env.cfg.p_batch,
                            val_fraction=0.0)


def epoch_batches(n: int, b: int) -> list[tuple[int, int]]:
    """(start, stop) of the batches the trainer's loader yields per epoch (a final batch of
    one image is dropped, as :class:`luring.defense.train.ImageBatches` does)."""
    out = [(i, min(i + b, n)) for i in range(0, n, b)]
    return [r for r in out if r[1] - r[0] > 1]
