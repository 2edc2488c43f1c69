"""Training of target models M (paper appendix A), optionally with PGD adversarial training
(Madry et al. 2018; paper appendix H.2).

Defaults follow the authors' code where the paper's text disagrees with it (the paper's
Adam learning rates are ten times those the code used: MNIST and SVHN 1e-3 not 1e-2; CIFAR10
1e-2/1e-3/1e-4 not 1e-1/1e-2/1e-3), and CIFAR10's M has dropout 0.25 and random rotations
(±10°) and shifts (±5/32) of its training images, which appendix A does not mention. Every
default is in :func:`target_settings` and each can be overridden; the report lists each
departure from appendix A (``luring.experiments.disclosure``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring import distributed
from luring import precision as prec
from luring.errors import LuringError
from luring.models.appendix import APPENDIX_A_TEXT, APPENDIX_H2_TEXT
from luring.models.architectures import default_architectures
from luring.models.augment import random_affine
from luring.models.lookup import build
from luring.models.predict import predict_labels
from luring.utils import (
    atomic_write_json,
    atomic_write_text,
    ensure_dir,
    make_generator,
    progress,
    versions,
)

__all__ = ["TargetSettings", "target_settings", "train_target", "train_target_run",
           "evaluate_accuracy", "pgd_linf_train", "budget_epochs"]


@dataclass(frozen=True)
class TargetSettings:
    """Resolved training settings of a target M. ``milestones`` are epochs at which the
    learning rate becomes the next value of ``lrs``. ``max_steps`` (``None``: no bound) caps
    the optimisation steps whatever the data set size: training stops after
    ``min(epochs × steps per epoch, max_steps)`` steps, the milestones scaled by the same
    fraction (see :func:`budget_epochs`). ``adv_ramp_epochs`` (0: none; not in H.2) makes the
    adversarial training's ε rise linearly from 0 to ``adv_eps`` over that many epochs (scaled
    like the milestones), its PGD step size in proportion: a curriculum that lets short runs
    leave the chance-level plateau that PGD training at MNIST's ε = 0.3 starts on."""

    architecture: str
    epochs: int
    batch_size: int
    lrs: tuple[float, ...]
    milestones: tuple[int, ...] = ()
    dropout: float = 0.0
    rotation_deg: float = 0.0
    shift: float = 0.0
    adv_train: bool = False
    adv_eps: float = 0.0
    adv_steps: int = 0
    adv_step_size: float = 0.0
    adv_ramp_epochs: float = 0.0
    max_steps: int | None = None  # step budget: at most this many optimisation steps
    source: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Where M is trained as the authors' code does (module docstring).
_RUN_CHOICES: dict[str, dict[str, Any]] = {
    "mnist": dict(lrs=(1e-3,)), "svhn": dict(lrs=(1e-3,)),
    "cifar10": dict(lrs=(1e-2, 1e-3, 1e-4), dropout=0.25, rotation_deg=10.0, shift=5 / 32),
}
_PAPER = {f: dict(text) | _RUN_CHOICES.get(f, {}) for f, text in APPENDIX_A_TEXT.items()}
_ADV = dict(APPENDIX_H2_TEXT)  # H.2 trained as stated


def target_settings(family: str, *, adv_train: bool = False, **overrides: Any) -> TargetSettings:
    """The paper's settings for a data set family (``mnist``, ``svhn``, ``cifar10``), with
    ``overrides`` (``None`` values ignored). ``lr`` overrides every value of ``lrs``."""
    if family not in _PAPER:
        raise LuringError(f"no target settings for data set family {family!r}")
    base = dict(_PAPER[family])
    base["architecture"] = default_architectures(family)[0]
    if adv_train:
        eps, steps, step = _ADV[family]
        base.update(adv_train=True, adv_eps=eps, adv_steps=steps, adv_step_size=step)
    ov = {k: v for k, v in overrides.items() if v is not None}
    if "lr" in ov:
        lr = float(ov.pop("lr"))
        base["lrs"] = tuple(lr for _ in base.get("lrs", (lr,)))
    base.update(ov)
    s = TargetSettings(**base)
    if s.epochs < 0 or s.batch_size < 1 or any(lr <= 0 for lr in s.lrs):
        raise LuringError("epochs must be ≥ 0, batch size ≥ 1 and learning rates > 0")
    if s.max_steps is not None and (isinstance(s.max_steps, bool)
                                    or not isinstance(s.max_steps, int) or s.max_steps < 1):
        raise LuringError(f"max_steps must be an integer ≥ 1 (or None), got {s.max_steps!r}")
    if s.adv_train and not (0 <= s.adv_eps <= 1):
        raise LuringError(f"--adv-eps must be in [0, 1], got {s.adv_eps}")
    if not s.adv_ramp_epochs >= 0:
        raise LuringError(f"adv_ramp_epochs must be ≥ 0, got {s.adv_ramp_epochs}")
    return replace(s, source={"paper": "appendix A" + (", H.2" if adv_train else "")})


def budget_epochs(settings: TargetSettings, n: int) -> tuple[int, float]:
    """(total optimisation steps, fraction of the nominal schedule run) for ``n`` training
    images: ``epochs × ceil(n / batch_size)`` steps, cut to ``max_steps`` when set."""
    spe = (n + settings.batch_size - 1) // settings.batch_size
    nominal = settings.epochs * spe
    total = nominal if settings.max_steps is None else min(nominal, settings.max_steps)
    return total, (total / nominal if nominal else 1.0)


def pgd_linf_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                   step_size: float, generator: torch.Generator) -> torch.Tensor:
    """The inner maximisation of adversarial training: l∞ PGD with a uniform random start,
    ``steps`` signed-gradient steps of ``step_size`` on the cross-entropy with the true
    labels, projected to the ε-ball and [0, 1]. x: (N, C, H, W) in [0, 1]. Model in its
    current mode; only the input gradient is computed."""
    noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    x_adv = (x + (noise * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss.float(), x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on images x (N, C, H, W) in [0, 1]."""
    model.eval()
    correct = int((predict_labels(model, x, batch_size) == y.cpu()).sum())
    return correct / max(len(x), 1)


def train_target(x_train: torch.Tensor, y_train: torch.Tensor, settings: TargetSettings, *,
                 num_classes: int = 10, seed: int = 0, device: str | torch.device = "cpu",
                 x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                 amp: str = "off", parallel: bool = False, precision: str | None = None,
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Train a target M from scratch with cross-entropy and Adam.

    x_train: (N, C, H, W) float in [0, 1]; y_train: (N,) int64. Returns ``(model in eval
    mode, info)`` where ``info`` holds ``history`` (per-epoch loss, train accuracy and, when a
    test set is given, test accuracy), ``test_accuracy`` and ``seconds``. ``amp``: ``off``
    (float32), ``bf16`` or ``fp16`` (CUDA, with a GradScaler) autocast of the training steps
    (adversarial examples and evaluation stay float32). ``precision``
    (:mod:`luring.precision`, default the process default; used when ``amp`` is ``off``):
    ``bf16``/``fp16`` autocast of the training steps and of adversarial training's PGD, with
    channels-last weights; ``info["precision"]`` records what trained M. The final test
    accuracy is float32 on the contiguous model.

    ``parallel=True`` (every rank of a torchrun process group calls this together;
    :mod:`luring.distributed`): M is wrapped in DistributedDataParallel, every rank draws
    the same per-epoch permutation and augmentation from the same seeded generator (what
    ``DistributedSampler.set_epoch`` does), takes its contiguous slice of each global batch
    of ``batch_size`` images (per-rank batch ⌈B/K⌉ or ⌊B/K⌋), and its loss is its slice's
    summed cross-entropy × K / B, so the averaged gradient is the global batch's mean: one
    process's optimisation, split (a rank whose slice of a last batch smaller than K is
    empty steps on that batch with weight 0, so every rank's optimizer steps). Metrics are
    summed over the ranks; every rank returns the same model. BatchNorm statistics are per
    rank (rank 0's are kept).
    ``parallel=False`` (default): this process trains alone, even inside a process group.
    """
    dev = torch.device(device)
    torch.manual_seed(seed)  # weight initialisation
    arch_kwargs = {"dropout": settings.dropout} if settings.dropout else {}
    model = build(settings.architecture, in_channels=x_train.shape[1], num_classes=num_classes,
                  **arch_kwargs).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lrs[0])
    if amp == "off":
        p = prec.resolve(precision, model, dev, tuple(x_train.shape[1:]))
        amp = {"fp32": "off"}.get(p, p)
    p = {"off": "fp32"}.get(amp, amp)
    autocast, scaler = _amp(amp, dev)
    with prec.training_format(p, model):
        model, info = _train_loop(model, opt, autocast, scaler, x_train, y_train, settings,
                                  seed, dev, x_test, y_test, on_epoch, parallel, p)
    info["precision"] = p
    if x_test is not None and y_test is not None:
        world, rank = (distributed.world_size(), distributed.rank()) if parallel else (1, 0)
        info["test_accuracy"] = _accuracy(model, x_test, y_test, world, rank)
    return model, info


def _train_loop(model: nn.Module, opt: torch.optim.Optimizer, autocast: Callable[[], Any],
                scaler: Any, x_train: torch.Tensor, y_train: torch.Tensor,
                settings: TargetSettings, seed: int, dev: torch.device,
                x_test: torch.Tensor | None, y_test: torch.Tensor | None,
                on_epoch: Callable[[int, dict[str, float]], None] | None, parallel: bool,
                precision: str) -> tuple[nn.Module, dict[str, Any]]:
    """The epochs of :func:`train_target` (its arguments; ``precision`` the resolved one)."""
    arch_kwargs = {"dropout": settings.dropout} if settings.dropout else {}
    world, rank = (distributed.world_size(), distributed.rank()) if parallel else (1, 0)
    net = _parallel(model, dev, seed, settings.batch_size, world, rank)
    gen = make_generator(seed, "cpu")  # the same on every rank: permutations, augmentation
    adv_gen = make_generator(seed + 1 + 1_000_003 * rank, dev)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    n = len(x_train)
    total, frac = budget_epochs(settings, n)
    steps_per_epoch = (n + settings.batch_size - 1) // settings.batch_size
    n_epochs = -(-total // steps_per_epoch) if total else 0
    ramp = settings.adv_ramp_epochs * frac * steps_per_epoch  # steps of the ε curriculum
    bar = progress(total=total, desc="train target", unit="step")
    done = 0
    for epoch in range(n_epochs):
        k = sum(epoch >= m * frac for m in settings.milestones)
        for group in opt.param_groups:
            group["lr"] = settings.lrs[min(k, len(settings.lrs) - 1)]
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for i in range(0, n, settings.batch_size):
            if done >= total:
                break
            scale = min(1.0, (done / ramp) if ramp > 0 else 1.0)  # the ε curriculum
            done += 1
            idx = perm[i:i + settings.batch_size]
            xb, yb = _to(x_train[idx], dev), _to(y_train[idx], dev)
            xb = random_affine(xb, rotation_deg=settings.rotation_deg, shift=settings.shift,
                               generator=gen)
            weight = 1.0  # of this rank's summed loss (world > 1)
            if world > 1:  # this rank's slice (the whole batch was augmented: gen in step)
                lo, hi = distributed.shard_range(len(idx), rank, world)
                if hi > lo:
                    xb, yb, weight = xb[lo:hi], yb[lo:hi], world / len(idx)
                else:  # fewer images than ranks: step on the whole batch, with weight 0
                    weight = 0.0
            xb = prec.batch_format(xb, precision)
            if settings.adv_train:
                model.eval()
                with autocast():
                    xb = pgd_linf_train(model, xb, yb, settings.adv_eps * scale,
                                        settings.adv_steps, settings.adv_step_size * scale,
                                        adv_gen)
                model.train()
            with autocast():
                logits = net(xb)
                loss = F.cross_entropy(logits, yb) if world == 1 else \
                    F.cross_entropy(logits, yb, reduction="sum") * weight
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            tot_loss += loss.item() * len(idx) / world  # this rank's summed loss
            tot_correct += int((logits.argmax(1) == yb).sum()) if weight else 0
            seen += len(yb) if weight else 0
            bar.update(1)
        if world > 1:
            tot_loss, tot_correct, seen = distributed.all_sum([tot_loss, tot_correct, seen])
        row = {"epoch": epoch + 1, "loss": tot_loss / seen,
               "train_accuracy": tot_correct / seen}
        if x_test is not None and y_test is not None:
            row["test_accuracy"] = _accuracy(model, x_test, y_test, world, rank)
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if on_epoch:
            on_epoch(epoch + 1, row)
    bar.close()
    model.eval()
    info: dict[str, Any] = {"history": history, "seconds": time.perf_counter() - start,
                            "arch_kwargs": arch_kwargs}
    return model, info


def train_target_run(dataset: str, out: str | os.PathLike, settings: TargetSettings, *,
                     seed: int = 0, device: str | torch.device = "cpu",
                     data_dir: str | os.PathLike | None = None, amp: str = "off",
                     parallel: bool = False, precision: str | None = None
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """Train M on ``dataset`` and write a target run directory ``out``: ``model.safetensors``
    + ``model.json`` (written last: its presence marks a finished model), ``config.json``
    (with ``amp``, the resolved ``precision`` and the number of ``processes``),
    ``results.json`` and ``report.md``.
    Returns ``(model, info)``. ``parallel=True``: every rank of torchrun's process group
    calls this together, trains its share (:func:`train_target`), and rank 0 alone writes."""
    from luring.data import get_spec, load
    from luring.models.checkpoint import save_checkpoint

    spec = get_spec(dataset)
    writer = distributed.is_main() or not parallel
    out = ensure_dir(out) if writer else Path(out)
    x_tr, y_tr = load(dataset, "train", data_dir)
    x_te, y_te = load(dataset, "test", data_dir)
    model, info = train_target(x_tr, y_tr, settings, num_classes=spec.num_classes, seed=seed,
                               device=device, x_test=x_te, y_test=y_te, amp=amp,
                               parallel=parallel, precision=precision)
    config = {"command": "train-target", "dataset": dataset, "seed": seed,
              "device": str(device), "settings": settings.to_dict(),
              "n_train": len(x_tr), "n_test": len(x_te), "amp": amp,
              "precision": info["precision"],
              "processes": distributed.world_size() if parallel else 1}
    acc = info["test_accuracy"]
    info["n_test"] = len(x_te)
    if not writer:
        return model, info
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "results.json", {
        "test_accuracy": acc, "n_test": len(x_te), "seconds": info["seconds"],
        "history": info["history"], "versions": versions()})
    adv = (f"PGD ε={settings.adv_eps:g}, {settings.adv_steps} steps of "
           f"{settings.adv_step_size:g}" if settings.adv_train else "no")
    rows = "\n".join(f"| {h['epoch']} | {h['loss']:.4f} | {h['train_accuracy']:.4f} | "
                     f"{h['test_accuracy']:.4f} |" for h in info["history"])
    atomic_write_text(out / "report.md", (
        f"# Target model M — {dataset}\n\n"
        f"Architecture `{settings.architecture}`, seed {seed}, device {device}, "
        f"{len(x_tr)} training / {len(x_te)} test images. Adversarial training: {adv}.\n\n"
        f"**Test accuracy: {acc:.4f}** (n = {len(x_te)}), trained in "
        f"{info['seconds']:.1f} s.\n\n"
        "| epoch | loss | train accuracy | test accuracy |\n|---|---|---|---|\n" + rows + "\n"))
    save_checkpoint(model, out, "model", architecture=settings.architecture,
                    input_shape=spec.shape, classes=list(spec.classes), dataset=dataset,
                    test_accuracy=acc, config=config, seed=seed,
                    arch_kwargs=info["arch_kwargs"])
    return model, info


AMP_MODES = ("off", "bf16", "fp16")


def _amp(mode: str, dev: torch.device) -> tuple[Callable[[], Any], Any]:
    """(autocast context factory, GradScaler or None) for ``--amp``: ``off`` (float32),
    ``bf16`` (autocast to bfloat16, CPU or CUDA, no scaler) or ``fp16`` (autocast to float16
    with a GradScaler; CUDA only)."""
    if mode not in AMP_MODES:
        raise LuringError(f"unknown --amp {mode!r}; choose off, bf16 or fp16")
    if mode == "off":
        return contextlib.nullcontext, None
    if mode == "fp16" and dev.type != "cuda":
        raise LuringError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return (lambda: torch.autocast(dev.type, dtype=dtype)), scaler


def _to(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """``t`` on ``dev``; from pinned memory without blocking when copying to CUDA."""
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _parallel(model: nn.Module, dev: torch.device, seed: int, batch_size: int, world: int,
              rank: int) -> nn.Module:
    """``model`` itself for one process; for ``world`` > 1 a DistributedDataParallel wrapper
    (its gradients averaged over the processes), with dropout reseeded per rank."""
    if world == 1:
        return model
    if batch_size < world:
        raise LuringError(f"--batch-size {batch_size} is smaller than the {world} processes; "
                          f"pass --batch-size {world} or more")
    if rank:
        torch.manual_seed(seed + 1_000_003 * rank)  # dropout masks
    ids = [torch.cuda.current_device() if dev.index is None else dev.index] \
        if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, world: int,
              rank: int) -> float:
    """:func:`evaluate_accuracy`; for ``world`` > 1 each rank counts its shard of the images
    (no padding) and the counts are summed, so every rank gets the same value."""
    if world == 1:
        return evaluate_accuracy(model, x, y)
    lo, hi = distributed.shard_range(len(x), rank, world)
    model.eval()
    correct = int((predict_labels(model, x[lo:hi], 500) == y[lo:hi].cpu()).sum())
    return distributed.all_sum([correct])[0] / max(len(x), 1)
