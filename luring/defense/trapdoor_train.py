"""Trapdoor training, clean evaluation, and the one call from a training split to a written
defense directory (:func:`build_trapdoor`, ``luring train-defense --method trapdoor``). The
method itself (settings, triggers, :class:`TrappedModel`) is in :mod:`luring.defense.trapdoor`;
writing and loading the directory in :mod:`luring.defense.trapdoor_store` (its functions
re-exported here).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring import precision as prec
from luring.defense.trapdoor import (
    TrappedModel,
    Triggers,
    batched_features,
    calibrate_threshold,
    make_triggers,
    penultimate_layer,
    resolve_trapdoor_settings,
    trapdoor_settings,
)
from luring.defense.trapdoor_store import check_out, load_trapdoor, save_trapdoor
from luring.errors import LuringError
from luring.models import arch_spec, build
from luring.utils import (
    check_images,
    make_generator,
    progress,
    resolve_device,
    wilson_interval,
)

__all__ = ["train_trapdoor", "evaluate_trapdoor", "save_trapdoor", "load_trapdoor",
           "build_trapdoor", "check_out"]


def _split(n: int, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n_val = min(max(int(round(fraction * n)), 1), n - 2)
    perm = torch.randperm(n, generator=gen)
    return perm[:n_val].sort().values, perm[n_val:].sort().values


def _other_labels(y: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly drawn label ≠ y for each entry of y (N,)."""
    return (y + 1 + torch.randint(k - 1, y.shape, generator=gen)) % k


def train_trapdoor(x_train: torch.Tensor, y_train: torch.Tensor, *, family: str = "mnist",
                   settings: dict[str, Any] | None = None, num_classes: int | None = None,
                   seed: int = 0, device: str | torch.device = "cpu",
                   desc: str = "train trapdoor", precision: str | None = None
                   ) -> TrappedModel:
    """Train a trapdoored model of ``settings["architecture"]`` (M's; default: the family's
    target) from scratch, then compute its signatures and calibrate its threshold.

    x_train: float32 (N, C, H, W) in [0, 1]; y_train: int64 (N,) in [0, K). A held-out
    ``val_fraction`` of them is never trained on: it gives the signatures (stamped copies)
    and the threshold (clean copies, label-free). ``settings``: from
    :func:`trapdoor_settings` (default: the family's paper profile). Every random choice
    derives from ``seed``. ``precision`` (:mod:`luring.precision`, default the process
    default): the training steps' autocast type (``settings["precision"]`` records it);
    signatures and the threshold are float32. Returns a :class:`TrappedModel` in eval mode.
    """
    s = resolve_trapdoor_settings(settings if settings is not None else
                                  trapdoor_settings(family, "paper"))
    check_images(x_train, name="training images")
    if not isinstance(y_train, torch.Tensor) or y_train.dtype != torch.int64 \
            or y_train.shape != (len(x_train),):
        raise LuringError(f"training labels must be an int64 tensor of shape ({len(x_train)},)")
    if len(x_train) < 3:
        raise LuringError(f"need at least 3 training images, got {len(x_train)}")
    k = int(num_classes or int(y_train.max()) + 1)
    if int(y_train.min()) < 0 or int(y_train.max()) >= k or k < 2:
        raise LuringError(f"training labels must be in [0, {k - 1}] with at least 2 classes")
    dev = resolve_device(device)
    shape = tuple(int(v) for v in x_train.shape[1:])
    if shape[1:] != arch_spec(s["architecture"]).input_shape[1:]:
        raise LuringError(f"training images have shape {tuple(x_train.shape)}; architecture "
                          f"{s['architecture']} takes {arch_spec(s['architecture']).input_shape}")
    triggers = make_triggers(k, shape, squares=s["squares"], square_size=s["square_size"],
                             mask_ratio=float(s["mask_ratio"]), seed=seed)
    gen = make_generator(seed + 1)
    val_idx, train_idx = _split(len(x_train), float(s["val_fraction"]), gen)
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_val_trap_t = _other_labels(y_val, k, gen)
    x_val_trap = triggers.apply(x_val, x_val_trap_t)
    arch_kwargs = {"dropout": float(s["dropout"])} if s["dropout"] else {}
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # weight initialisation and dropout
        model = build(s["architecture"], in_channels=shape[0], num_classes=k,
                      **arch_kwargs).to(dev)
        s["precision"] = prec.resolve(precision, model, dev, shape)
        with prec.training_format(s["precision"], model):
            history = _fit(model, x_train, y_train, train_idx, triggers, s, gen, dev, desc,
                           (x_val, y_val, x_val_trap, x_val_trap_t))
    seconds = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    layer = penultimate_layer(model)[0]
    meta = {"settings": s, "seed": seed, "history": history, "training_seconds": seconds,
            "architecture": s["architecture"], "arch_kwargs": arch_kwargs,
            "num_classes": k, "signature_layer": f"input of {layer} (last nn.Linear)",
            "held_out_indices": val_idx}  # rows of x_train (not saved)
    bs = s["eval_batch_size"]
    signatures = torch.stack([batched_features(model, triggers.apply(x_val, t), bs, dev)[1]
                              .mean(0) for t in range(k)])
    trapped = TrappedModel(model, triggers, signatures, 0.0, meta, shape, dev)
    clean = trapped.detect(x_val, bs).scores
    trapped.threshold = calibrate_threshold(clean, float(s["false_alarm"]))
    flagged = int((clean > trapped.threshold).sum())
    meta["calibration"] = {
        "rule": "lower (1 - false_alarm) quantile of clean held-out scores (label-free)",
        "false_alarm_target": float(s["false_alarm"]), "n": len(clean), "flagged": flagged,
        "false_alarm_rate": flagged / len(clean), "threshold": trapped.threshold,
        "signature_images": "held-out images stamped with each trigger (n each)"}
    return trapped


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, train_idx: torch.Tensor,
         triggers: Triggers, s: dict[str, Any], gen: torch.Generator, dev: torch.device,
         desc: str, val: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    """The clean phase then the trapdoor phase (one Adam, as the reference's two fit calls);
    returns one history row per epoch with held-out clean accuracy and trapdoor success."""
    opt = torch.optim.Adam(model.parameters(), lr=float(s["lr"]))
    b, n, k = s["batch_size"], len(train_idx), triggers.num_classes
    p = s.get("precision", "fp32")
    steps = n // b + (1 if n % b > 1 else 0)  # a last batch of one image is dropped (BN)
    phases = [("clean", s["clean_epochs"]), ("trap", s["trap_epochs"])]
    bar = progress(total=steps * (s["clean_epochs"] + s["trap_epochs"]), desc=desc,
                   unit="step")
    history: list[dict[str, Any]] = []
    try:
        for phase, epochs in phases:
            for epoch in range(epochs):
                lr = float(s["lr"])
                for start, value in sorted(s.get("lr_milestones", []), key=lambda m: m[0]):
                    lr = float(value) if epoch >= start else lr
                for group in opt.param_groups:
                    group["lr"] = lr
                model.train()
                order = train_idx[torch.randperm(n, generator=gen)]
                tot, correct = 0.0, 0
                for i in range(steps):
                    idx = order[i * b:(i + 1) * b]
                    xb, yb = x[idx], y[idx]
                    if phase == "trap":
                        inject = torch.rand(len(idx), generator=gen) < float(s["inject_ratio"])
                        t = torch.randint(k, (len(idx),), generator=gen)
                        xb = torch.where(inject[:, None, None, None], triggers.apply(xb, t), xb)
                        yb = torch.where(inject, t, yb)
                    xb, yb = xb.to(dev), yb.to(dev)
                    xb = prec.batch_format(xb, p)
                    with prec.autocast(p, dev):
                        logits = model(xb).float()
                    loss = F.cross_entropy(logits, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += loss.item() * len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
                    bar.update(1)
                history.append({"phase": phase, "epoch": epoch + 1, "lr": lr,
                                "loss": tot / n, "train_accuracy": correct / n,
                                **_held_out(model, val, s["eval_batch_size"], dev)})
    finally:
        bar.close()
    return history


@torch.no_grad()
def _held_out(model: nn.Module, val: tuple[torch.Tensor, ...], batch_size: int,
              dev: torch.device) -> dict[str, float]:
    x_val, y_val, x_trap, t_trap = val
    model.eval()

    def labels(xs: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(xs[i:i + batch_size].to(dev)).argmax(1).cpu()
                          for i in range(0, len(xs), batch_size)])

    out = {"val_accuracy": (labels(x_val) == y_val).float().mean().item(),
           "val_trapdoor_success": (labels(x_trap) == t_trap).float().mean().item()}
    model.train()
    return out


@torch.no_grad()
def evaluate_trapdoor(trapped: TrappedModel, x: torch.Tensor, y: torch.Tensor, *,
                      batch_size: int = 1000) -> dict[str, Any]:
    """Clean figures of a trapdoored model on labelled images x (N, C, H, W) in [0, 1], y
    int64 (N,): ``accuracy``; ``false_alarm_rate`` (clean images flagged); for each label t,
    ``trapdoor_success_per_label[t]`` (images of other labels stamped with trigger t and
    classified t; None when there are none) and ``trigger_detection_per_label[t]`` (the same
    images flagged), their means over labels (``trapdoor_success``, ``trigger_detection``)
    and ``trapdoor_success_min``. Rates in [0, 1]; ``intervals``: Wilson 95% of the pooled
    counts (``n_stamped`` images)."""
    trapped.check(x)
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        raise LuringError(f"evaluation labels must be an int64 tensor of shape ({len(x)},)")
    det = trapped.detect(x, batch_size)
    n, yc = len(x), y.cpu()
    counts = {"accuracy": int((det.labels == yc).sum()),
              "false_alarm_rate": int(det.flagged.sum())}
    succ, found, sizes = [], [], []
    for t in range(trapped.triggers.num_classes):
        others = x[yc != t]
        d = trapped.detect(trapped.apply_trigger(others, t), batch_size) if len(others) else None
        succ.append(int((d.labels == t).sum()) if d else 0)
        found.append(int(d.flagged.sum()) if d else 0)
        sizes.append(len(others))
    per_s = [a / b for a, b in zip(succ, sizes, strict=True) if b]
    per_f = [a / b for a, b in zip(found, sizes, strict=True) if b]
    out: dict[str, Any] = {"n": n, **{k: v / n for k, v in counts.items()},
                           "n_stamped": sum(sizes),
                           "trapdoor_success_per_label": [a / b if b else None for a, b in
                                                          zip(succ, sizes, strict=True)],
                           "trigger_detection_per_label": [a / b if b else None for a, b in
                                                           zip(found, sizes, strict=True)],
                           "trapdoor_success": sum(per_s) / len(per_s),
                           "trapdoor_success_min": min(per_s),
                           "trigger_detection": sum(per_f) / len(per_f)}
    out["intervals"] = {**{k: wilson_interval(v, n) for k, v in counts.items()},
                        "trapdoor_success": wilson_interval(sum(succ), sum(sizes)),
                        "trigger_detection": wilson_interval(sum(found), sum(sizes))}
    return out


def build_trapdoor(out: str | os.PathLike, x_train: torch.Tensor, y_train: torch.Tensor,
                   test: tuple[torch.Tensor, torch.Tensor], *, settings: dict[str, Any],
                   family: str, dataset: str, classes: list[str] | None = None, seed: int = 0,
                   device: str | torch.device = "cpu", config: dict[str, Any] | None = None,
                   stage: Path | None = None, desc: str = "train-defense trapdoor"
                   ) -> tuple[Path, TrappedModel, dict[str, Any]]:
    """Train (:func:`train_trapdoor`, labelled images x_train
    (N, C, H, W) in [0, 1], y_train int64 (N,)), evaluate on ``test`` = (images, int64 labels)
    and write the directory ``out``. Returns (directory, trapped model, clean figures)."""
    check_out(out)
    check_images(test[0], name="test images")
    if not isinstance(test[1], torch.Tensor) or test[1].dtype != torch.int64 \
            or test[1].shape != (len(test[0]),):
        raise LuringError(f"test labels must be an int64 tensor of shape ({len(test[0])},)")
    num_classes = len(classes) if classes else None
    trapped = train_trapdoor(x_train, y_train, family=family, settings=settings,
                             num_classes=num_classes, seed=seed, device=device, desc=desc)
    clean = evaluate_trapdoor(trapped, *test, batch_size=settings["eval_batch_size"])
    path = save_trapdoor(out, trapped, dataset=dataset, classes=classes, clean=clean,
                         config=config, stage=stage)
    return path, trapped, clean
