"""Algorithm 1 (training the luring component P) and the shared training loop of the baselines
(what each method trains — its :class:`~luring.defense.plans.Plan` — is in
:mod:`luring.defense.plans`).

The loop reads unlabelled images only: :class:`ImageBatches` yields ``(images, index)``
batches and the luring/C_E losses take M's logits, computed once per training image before
the first step (no gradient, M in eval mode), as their only supervision. The one exception is
the ``stack`` baseline (:mod:`luring.defense.plans`), which is trained with labels by
definition; ``train_defense`` reads ``labels`` only for that method.

Checkpoint selection is label-free: every epoch (or every ``eval_every`` steps) T = M∘P is
evaluated on a held-out part of the unlabelled images and the checkpoint whose predictions
agree most with M's is kept (Auto: the lowest held-out reconstruction loss).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from luring import distributed
from luring import precision as prec
from luring.data.lazy import subset
from luring.defense import parallel as pmod
from luring.defense.baselines import auto_plan, stack_plan
from luring.defense.loss import reconstruction_loss
from luring.defense.plans import Plan, init_parameters, luring_plan
from luring.defense.schedule import averaged_tensors, averaged_weights, budget, lr_at
from luring.defense.settings import METHODS, defense_settings, resolve_settings
from luring.errors import LuringError
from luring.models import Stacked, build, default_architectures
from luring.models.augment import random_affine
from luring.models.predict import predict_logits
from luring.utils import check_images, make_generator, progress, resolve_device

__all__ = ["train_defense", "TrainedDefense", "ImageBatches", "lr_at", "budget",
           "component_kwargs"]


@dataclass
class TrainedDefense:
    """The result of :func:`train_defense`: the trained (selected) component P in eval mode,
    for ``stack`` the retrained head, the frozen target M, the resolved settings, the
    selection record, the per-evaluation history and the training time in seconds."""

    method: str
    target: nn.Module
    component: nn.Module
    head: nn.Module | None
    settings: dict[str, Any]
    selection: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    component_arch: str
    component_kwargs: dict[str, Any] = field(default_factory=dict)
    head_arch: str | None = None
    head_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def augmented(self) -> nn.Module:
        """T = M∘P (``head``∘P for stack), in eval mode."""
        return Stacked(self.component, self.head if self.head is not None else self.target).eval()


class ImageBatches:
    """The training data loader: images only, never labels. Each epoch yields
    ``(images (B, C, H, W) on device, index (B,))`` in a fresh seeded order, optionally with
    random label-free augmentation; ``index`` selects rows of per-image tensors computed
    from the images (M's logits). A final batch of a single image is dropped."""

    def __init__(self, images: torch.Tensor, indices: torch.Tensor, batch_size: int,
                 generator: torch.Generator, device: torch.device,
                 augment: dict[str, Any] | None = None) -> None:
        self.images, self.indices, self.batch_size = images, indices, batch_size
        self.generator, self.device, self.augment = generator, device, augment

    def __len__(self) -> int:
        n, b = len(self.indices), self.batch_size
        return n // b + (1 if n % b > 1 else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.images[idx]
            if self.augment:
                xb = random_affine(xb, rotation_deg=float(self.augment.get("rotate", 0.0)),
                                   shift=float(self.augment.get("shift", 0.0)),
                                   fill=self.augment.get("fill", "zeros"),
                                   generator=self.generator)
            yield xb.to(self.device, non_blocking=True), idx


def train_defense(target: nn.Module, images: torch.Tensor, *, method: str = "luring",
                  settings: dict[str, Any] | None = None, family: str = "mnist",
                  labels: torch.Tensor | None = None, component_arch: str | None = None,
                  head_arch: str | None = None, head_kwargs: dict[str, Any] | None = None,
                  seed: int = 0, device: str | torch.device = "cpu",
                  desc: str | None = None, parallel: bool = False,
                  precision: str | None = None) -> TrainedDefense:
    """Train the defense component P for the frozen target M (Algorithm 1 for ``luring``).

    ``target``: M, returns (N, K) logits; it is moved to ``device``, kept in eval mode with
    its parameters frozen during training and restored (mode, ``requires_grad``) afterwards;
    its weights are never changed. ``images``: the unlabelled training images, float32
    (N, C, H, W) in [0, 1] (a held-out ``val_fraction`` of them is used only for checkpoint
    selection). ``method``: ``luring``, ``ce``, ``auto`` or ``stack``. ``settings``: a dict
    from :func:`defense_settings` (default: the paper profile of ``family``), validated with
    :func:`resolve_settings`. ``labels``: int64 (N,), read only when ``method == "stack"``
    (the one baseline trained with labels); for every other method it is never read.
    ``component_arch``: P's architecture (default: the family's); ``head_arch`` /
    ``head_kwargs``: the freshly initialised classifier of ``stack`` (required for stack).
    Every random choice derives from ``seed``. ``parallel=True`` (every rank of a torchrun
    process group calls this together; :mod:`luring.defense.parallel`): each rank computes
    the loss of its slice of every batch, the trained modules' gradients are averaged by
    DistributedDataParallel, and every rank returns the same P. ``precision``
    (:mod:`luring.precision`; default the process default): the optimisation steps run under
    autocast in that type with channels-last weights; M's logits, the held-out agreement and
    the checkpoint selection are float32. Returns a :class:`TrainedDefense` (its
    ``settings["precision"]`` says what trained it).
    """
    s = resolve_settings(settings if settings is not None else
                         defense_settings(family, method, "paper"))
    if s.get("method", method) != method:
        raise LuringError(f"settings are for method {s['method']!r}, not {method!r}")
    if method not in METHODS:
        raise LuringError(f"unknown method {method!r}; choose luring, ce, auto or stack")
    s["method"] = method
    check_images(images, name="training images")
    dev = resolve_device(device)
    c_in = images.shape[1]
    comp_arch = component_arch or default_architectures(s.get("family", family),
                                                         tuple(images.shape[1:]))[1]
    comp_kwargs = component_kwargs(s, comp_arch)
    gen = make_generator(seed)
    # Held-out split (label-free selection) and the training indices.
    n = len(images)
    if n < 2:
        raise LuringError(f"need at least 2 training images, got {n}")
    n_val = int(round(float(s["val_fraction"]) * n)) if s["val_fraction"] > 0 else 0
    n_val = min(max(n_val, 1 if s["val_fraction"] > 0 else 0), n - 2)
    perm = torch.randperm(n, generator=gen)
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values

    was_training = target.training
    grad_flags = [p.requires_grad for p in target.parameters()]
    target.to(dev).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout only; everything else uses ``gen``
            component = init_parameters(build(comp_arch, in_channels=c_in, **comp_kwargs),
                                        s["init"], gen).to(dev)
            if hasattr(component, "init_identity"):
                component.init_identity()  # residual P starts as the identity
            need_all = method in ("luring", "ce")
            m_logits = predict_logits(target, images if need_all else subset(images, val_idx),
                                      s["eval_batch_size"], dev)
            m_val = m_logits[val_idx] if need_all else m_logits
            if need_all:
                plan = luring_plan(target, component, m_logits.to(dev), method,
                                   s.get("lambda"), s.get("cap"),
                                   float(s.get("margin") or 0.0))
            elif method == "auto":
                plan = auto_plan(target, component)
            else:  # stack
                plan = stack_plan(component, labels, head_arch, head_kwargs or {}, c_in,
                                  int(m_val.shape[1]) if n_val else None, s["init"], gen, dev)
            world = distributed.world_size() if parallel else 1
            p = prec.resolve(precision, plan.augmented, dev, tuple(images.shape[1:]))
            s["precision"] = p
            with prec.training_format(p, *plan.modules, target):
                net = pmod.wrap(plan.modules, plan.loss, dev, s["batch_size"], seed) \
                    if world > 1 else None
                history, selection = _loop(plan, component, images, train_idx, val_idx,
                                           m_val, s, gen, dev, desc or f"train {method}", net)
            if net is not None:  # every rank returns rank 0's choice
                pmod.broadcast_state(plan.modules)
                history, selection = pmod.broadcast_object((history, selection))
    finally:
        for p, flag in zip(target.parameters(), grad_flags, strict=True):
            p.requires_grad_(flag)
        target.train(was_training)
    seconds = time.perf_counter() - t0
    component.eval()
    if plan.head is not None:
        plan.head.eval()
    return TrainedDefense(method=method, target=target, component=component, head=plan.head,
                          settings=s, selection=selection, history=history, seconds=seconds,
                          component_arch=comp_arch, component_kwargs=comp_kwargs,
                          head_arch=plan.head_arch, head_kwargs=plan.head_kwargs)


def component_kwargs(settings: dict[str, Any], arch: str) -> dict[str, Any]:
    """P's constructor options from the settings: ``dropout`` always, ``width`` and
    ``residual`` only when they differ from table 5 (so earlier sidecars are unchanged); those
    two exist for ``mnist-component`` only (LuringError otherwise)."""
    kw: dict[str, Any] = {"dropout": float(settings.get("dropout", 0.0))}
    extra = {k: v for k, v in (("width", int(settings.get("width") or 1)),
                               ("residual", bool(settings.get("residual", False))))
             if v != {"width": 1, "residual": False}[k]}
    if extra and arch != "mnist-component":
        raise LuringError(f"P options {', '.join(sorted(extra))} exist for mnist-component "
                          f"only, not {arch!r}; leave width 1 and residual false")
    kw.update(extra)
    return kw


def _evaluate(plan: Plan, component: nn.Module, x_val: torch.Tensor, m_val: torch.Tensor,
              batch_size: int, dev: torch.device) -> dict[str, float]:
    """Held-out agreement of T with M (and P's reconstruction loss), all modules in eval.
    One pass of P per chunk serves both figures (T = ``plan.augmented`` = head∘P)."""
    for m in plan.modules:
        m.eval()
    head = plan.augmented.head
    preds, rec = [], 0.0
    with torch.no_grad():
        for i in range(0, len(x_val), batch_size):
            xb = x_val[i:i + batch_size].to(dev)
            p = component(xb)
            preds.append(head(p).float().cpu().argmax(1))
            rec += reconstruction_loss(p, xb).item() * len(xb)
    for m in plan.modules:
        m.train()
    t_pred = torch.cat(preds)
    return {"val_agreement": (t_pred == m_val.argmax(1)).float().mean().item(),
            "val_reconstruction": rec / len(x_val)}


def _loop(plan: Plan, component: nn.Module, images: torch.Tensor, train_idx: torch.Tensor,
          val_idx: torch.Tensor, m_val: torch.Tensor, s: dict[str, Any],
          gen: torch.Generator, dev: torch.device, desc: str, net: nn.Module | None = None
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The optimisation loop with periodic held-out evaluation and best-checkpoint keeping.
    ``net``: the DistributedDataParallel wrapper of :func:`luring.defense.parallel.wrap`
    when several processes train together (None: one process)."""
    batches = ImageBatches(images, train_idx, s["batch_size"], gen, dev, s.get("augment"))
    p = s.get("precision", "fp32")
    spe = len(batches)
    total, frac = budget(s, spe)
    eff = spe * frac  # optimisation steps per nominal epoch of the schedule
    opt = torch.optim.SGD(plan.params, lr=lr_at(s, 0.0), momentum=0.9) \
        if s.get("optimizer") == "sgd" else torch.optim.Adam(plan.params, lr=lr_at(s, 0.0))
    every = s["eval_every"] or max(1, int(round(eff)))
    x_val = subset(images, val_idx)  # a lazy view stays lazy
    by_rec = s["selection"] == "reconstruction"
    by_last = s["selection"] == "last"
    best: tuple[float, dict[str, Any], list[dict[str, torch.Tensor]]] | None = None
    history: list[dict[str, Any]] = []
    step, loss_n, t0 = 0, 0, time.perf_counter()
    loss_sum = torch.zeros((), device=dev)
    ema = float(s.get("ema") or 0.0)
    averaged = averaged_tensors(plan.params, plan.modules) if ema else []
    shadow = [t.detach().clone() for t in averaged] if ema else None
    for m in plan.modules:
        m.train()
    bar = progress(total=total, desc=desc, unit="step")
    try:
        while step < total:
            for xb, idx in batches:
                if step >= total:
                    break
                lr = lr_at(s, step / eff)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                with prec.autocast(p, dev):
                    if net is None:
                        loss = plan.loss(prec.batch_format(xb, p), idx)
                    else:  # this rank's slice, weighted so the averaged gradient is the batch's
                        xs, ids, weight = pmod.rank_slice(xb, idx)
                        loss = net(prec.batch_format(xs, p), ids) * weight
                loss.float().backward()
                opt.step()
                step += 1
                if shadow is not None:
                    w = 1 - min(ema, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for sh, t in zip(shadow, averaged, strict=True):
                            sh.lerp_(t.detach(), w)
                loss_sum += loss.detach()
                loss_n += 1
                bar.update(1)
                if step % every and step != total:
                    continue
                total_loss = loss_sum.item()
                if net is not None:  # the ranks' weighted losses sum to K × the batch mean
                    total_loss = distributed.all_sum([total_loss])[0] / distributed.world_size()
                    pmod.broadcast_buffers(plan.modules)  # evaluate rank 0's statistics
                    if shadow is not None:
                        for sh in shadow:
                            torch.distributed.broadcast(sh, 0)
                rec = {"epoch": round(step / spe, 4), "step": step, "lr": lr,
                       "loss": total_loss / max(loss_n, 1),
                       "seconds": round(time.perf_counter() - t0, 3)}
                loss_sum, loss_n = torch.zeros((), device=dev), 0
                if len(val_idx):
                    with averaged_weights(averaged, shadow):
                        rec.update(_evaluate(plan, component, x_val, m_val,
                                             s["eval_batch_size"], dev))
                        score = -rec["val_reconstruction"] if by_rec else \
                            float(step) if by_last else rec["val_agreement"]
                        if best is None or score >= best[0]:
                            best = (score, dict(rec), [{k: v.detach().clone() for k, v in
                                                        m.state_dict().items()}
                                                       for m in plan.modules])
                history.append(rec)
    finally:
        bar.close()
    if best is None:
        if shadow is not None:
            with torch.no_grad():
                for sh, t in zip(shadow, averaged, strict=True):
                    t.copy_(sh)
        last = history[-1]
        return history, {"rule": "last", "epoch": last["epoch"], "step": last["step"], "n": 0}
    for m, state in zip(plan.modules, best[2], strict=True):
        m.load_state_dict(state)
    chosen = best[1]
    selection = {"rule": "min-reconstruction" if by_rec else "last" if by_last else
                 "max-agreement",
                 "epoch": chosen["epoch"], "step": chosen["step"],
                 "agreement": chosen["val_agreement"],
                 "reconstruction": chosen["val_reconstruction"], "n": len(val_idx)}
    return history, selection
