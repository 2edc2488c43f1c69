"""Trapdoor (Shan et al. 2019, "Gotta Catch 'Em All"; paper appendix I) as a defense: a model of
M's architecture trained from scratch with a trapdoor for every label, and its detector.

* Triggers (one per label t, seeded), as built by the reference code
  (``Shawn-Shan/trapdoor``, ``trap_utils.py``, the variant it uses for MNIST and CIFAR):
  ``squares`` = 7 squares of ``square_size`` = 3 pixels at uniform random positions; on each
  square a Gaussian noise pattern with its own mean and standard deviation, each drawn
  uniformly in [0, 1], clipped to [0, 1]; overlapping squares add, then clip; one value per
  pixel shared by all channels. The mask is ``mask_ratio`` (0.1, the transparency) on the
  squares' pixels and 0 elsewhere; stamping is ``x' = (1 - mask)·x + mask·pattern``.
* Training (``inject_trapdoor.py``): cross-entropy, Adam, batch 32; a clean phase (none in
  the quick profile), then a trapdoor phase where each training image is replaced with
  probability ``inject_ratio`` (0.5) by its copy stamped with the trigger of a uniformly
  drawn label t, labelled t. The last epoch is kept (the reference keeps the epoch of best
  trapdoor success with a clean accuracy floor, both measured on its test images).
* Signatures (``eval_detection.py``): for each t, the mean activation at the penultimate
  layer over images stamped with trigger t. The layer here is the input of the model's last
  ``nn.Linear`` (read with a forward pre-hook): for ``mnist-target`` the ReLU output of its
  Dense(1024), for the VGG targets the ReLU output of their second Dense(1024)+BN, as the
  reference reads its penultimate dense layer (``target_layer = 'dense'``). Unlike the
  reference (all training images), the images are the held-out ones, never trained on.
* Detection: score = cosine similarity of an input's activation with the signature of the
  label the model predicts; flagged when score > threshold, the threshold calibrated on the
  clean held-out images (label-free) to ``false_alarm`` = 5% (the figure Shan et al. report).

Training and clean evaluation (``train_trapdoor``, ``evaluate_trapdoor``, ``build_trapdoor``)
are in :mod:`luring.defense.trapdoor_train`; the directory (``save_trapdoor``,
``load_trapdoor``) in :mod:`luring.defense.trapdoor_store`; both import this module, never the
reverse. All of them can be imported from :mod:`luring.defense`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from luring.errors import LuringError
from luring.models import arch_spec, default_architectures
from luring.utils import check_images, make_generator

__all__ = ["TRAPDOOR_PROFILES", "QUICK_NOTES", "trapdoor_settings", "resolve_trapdoor_settings",
           "Triggers", "make_triggers", "TrapdoorDetection", "TrappedModel", "penultimate_layer",
           "batched_features", "calibrate_threshold"]

TRAPDOOR_PROFILES = ("paper", "quick")

# Reference code (Shawn-Shan/trapdoor): inject_trapdoor.py's arguments and lr_schedule,
# trap_utils.CoreModel's per-data-set epochs. Keras restarts the epoch count at each of its two
# fit calls, so the schedule applies per phase: MNIST's 10 epochs never reach its first step
# (epoch > 10), CIFAR's 20 drop to 1e-4 from the 12th epoch of each phase (milestone 11,
# 0-based). The reference has no SVHN setting: SVHN takes CIFAR's (32x32 colour images).
_COMMON: dict[str, Any] = {
    "method": "trapdoor",
    "batch_size": 32,          # inject_trapdoor.py: flow(..., batch_size=32)
    "lr": 1e-3,                # lr_schedule: 1e-3, Adam
    "inject_ratio": 0.5,       # --inject-ratio default
    "squares": 7,              # --num_cluster default
    "square_size": 3,          # --pattern_size default
    "mask_ratio": 0.1,         # --mask_ratio default (the trigger's transparency)
    "false_alarm": 0.05,       # Shan et al.: detection at 5% false positives
    "val_fraction": 0.1,       # ours: held-out part of the training split (signatures, threshold)
    "eval_batch_size": 1000,
    "dropout": 0.0,
    "lr_milestones": [],
}
_PAPER: dict[str, dict[str, Any]] = {
    "mnist": dict(clean_epochs=10, trap_epochs=10),
    "cifar10": dict(clean_epochs=20, trap_epochs=20, lr_milestones=[[11, 1e-4]],
                    dropout=0.25),  # dropout: M's (appendix A, the authors' CIFAR10 code)
    "svhn": dict(clean_epochs=20, trap_epochs=20, lr_milestones=[[11, 1e-4]]),
}
# Quick: see QUICK_NOTES. Other families: the same shape (trapdoor phase only), 5 epochs,
# no lr step (not measured).
_QUICK: dict[str, dict[str, Any]] = {
    "mnist": dict(clean_epochs=0, trap_epochs=6, lr_milestones=[[4, 1e-4]]),
    "cifar10": dict(clean_epochs=0, trap_epochs=5, dropout=0.25),
    "svhn": dict(clean_epochs=0, trap_epochs=5),
}
QUICK_NOTES = (
    "quick profile (mnist-5k, 2-core CPU; chosen on the 400 held-out training images only, "
    "never on test images): no clean phase, 6 trapdoor epochs of 3,600 images, lr 1e-3 then "
    "1e-4 for the last two (the reference's step, earlier), about a minute on one core; every "
    "other value as in the reference code. Held-out clean accuracy / trapdoor success, seed 0: "
    "1 clean + 5 trapdoor epochs at 1e-3 0.905 / 0.938; 0 + 6 at 1e-3 0.938 / 0.990; 0 + 8 "
    "0.940 / 0.988; 0 + 6 with the step 0.940 / 0.993 (seed 1: 0.945 / 0.990, without the "
    "step 0.918 / 0.988).")


def trapdoor_settings(family: str, profile: str = "paper") -> dict[str, Any]:
    """The resolved trapdoor settings for a data set ``family`` (``mnist``, ``svhn``,
    ``cifar10``) and ``profile`` (``paper``: the reference code's values; ``quick``: short,
    for mnist-5k on a CPU). Returns a new plain dict; see the module docstring."""
    if family not in _PAPER:
        raise LuringError(f"no trapdoor settings for data set family {family!r}; choose one "
                          f"of: {', '.join(_PAPER)}")
    if profile not in TRAPDOOR_PROFILES:
        raise LuringError(f"unknown profile {profile!r}; choose one of: paper, quick")
    s = copy.deepcopy(_COMMON)
    s.update(copy.deepcopy((_PAPER if profile == "paper" else _QUICK)[family]))
    s.update(family=family, profile=profile, architecture=default_architectures(family)[0])
    return resolve_trapdoor_settings(s)


_INT_KEYS = ("clean_epochs", "trap_epochs", "batch_size", "squares", "square_size",
             "eval_batch_size")
_FLOAT_KEYS = ("lr", "inject_ratio", "mask_ratio", "false_alarm", "val_fraction", "dropout")


def resolve_trapdoor_settings(settings: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A validated copy of ``settings`` with ``overrides`` (``None`` values ignored). Overriding
    ``lr`` scales the milestone values by the same factor (epochs are left as they are).
    Raises a one-line LuringError naming the bad setting."""
    s = copy.deepcopy(dict(settings))
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in s:
            raise LuringError(f"unknown trapdoor setting {key!r}; known: {', '.join(sorted(s))}")
        if key == "lr" and isinstance(value, (int, float)) and isinstance(s["lr"], (int, float)) \
                and s["lr"] > 0:
            s["lr_milestones"] = [[m[0], m[1] * value / s["lr"]] for m in s["lr_milestones"]]
        s[key] = copy.deepcopy(value)

    def bad(key: str, what: str) -> LuringError:
        return LuringError(f"trapdoor setting {key} must be {what}, got {s.get(key)!r}")

    for key in _INT_KEYS + _FLOAT_KEYS + ("architecture",):
        if key not in s:
            raise LuringError(f"trapdoor settings lack {key!r}; start from trapdoor_settings()")
    if arch_spec(s["architecture"]).role != "target":
        raise bad("architecture", "a target architecture (mnist-, svhn- or cifar10-target)")
    for key in _INT_KEYS:
        v = s[key]
        low = 0 if key == "clean_epochs" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(key, f"an integer ≥ {low}")
    for key in _FLOAT_KEYS:
        if isinstance(s[key], bool) or not isinstance(s[key], (int, float)) \
                or not math.isfinite(s[key]):
            raise bad(key, "a finite number")
    ranges = {"lr": (0, math.inf), "inject_ratio": (0, 1), "mask_ratio": (0, 1),
              "false_alarm": (0, 0.5), "val_fraction": (0, 0.5)}
    for key, (lo, hi) in ranges.items():
        if not lo < s[key] <= hi:
            raise bad(key, f"in ({lo}, {hi}]" if hi < math.inf else f"> {lo}")
    if not 0 <= s["dropout"] < 1:
        raise bad("dropout", "in [0, 1)")
    for m in s.get("lr_milestones", []):
        if not (isinstance(m, (list, tuple)) and len(m) == 2 and m[0] >= 0 and m[1] > 0):
            raise bad("lr_milestones", "a list of [epoch ≥ 0, lr > 0] pairs")
    return s


@dataclass(frozen=True)
class Triggers:
    """One trigger per label: ``masks`` and ``patterns`` float32 (K, C, H, W) in [0, 1] (mask
    = ``mask_ratio`` on the trigger's pixels, 0 elsewhere); ``params`` how they were made."""

    masks: torch.Tensor
    patterns: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.masks.shape[0])

    def labels(self, label: int | torch.Tensor, n: int) -> torch.Tensor:
        """``label`` (an int, or int64 (n,)) as an int64 (n,) tensor, checked in [0, K)."""
        k = self.num_classes
        if isinstance(label, torch.Tensor):
            if label.dtype != torch.int64 or label.shape != (n,):
                raise LuringError(f"trigger labels must be an int64 tensor of shape ({n},), got "
                                  f"{label.dtype} {tuple(label.shape)}")
            t = label.cpu()
        elif isinstance(label, int) and not isinstance(label, bool):
            t = torch.full((n,), label, dtype=torch.int64)
        else:
            raise LuringError(f"trigger label must be an int or an int64 tensor, got "
                              f"{type(label).__name__}")
        if n and (int(t.min()) < 0 or int(t.max()) >= k):
            raise LuringError(f"trigger labels must be in [0, {k - 1}], got "
                              f"{int(t.min())}..{int(t.max())}")
        return t

    def apply(self, x: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        """Stamp images x (N, C, H, W) in [0, 1] with the trigger of ``label`` (one int for all,
        or int64 (N,)): ``(1 - mask)·x + mask·pattern``, still in [0, 1], on x's device."""
        check_images(x)
        if tuple(x.shape[1:]) != tuple(self.masks.shape[1:]):
            raise LuringError(f"images have shape {tuple(x.shape)}; the triggers are for "
                              f"(N, {', '.join(map(str, self.masks.shape[1:]))})")
        t = self.labels(label, len(x))
        m = self.masks[t].to(x.device, x.dtype)
        return (1 - m) * x + m * self.patterns[t].to(x.device, x.dtype)


def make_triggers(num_classes: int, shape: tuple[int, int, int], *, squares: int = 7,
                  square_size: int = 3, mask_ratio: float = 0.1, seed: int = 0) -> Triggers:
    """``num_classes`` triggers for images of ``shape`` (C, H, W), drawn from a generator
    seeded with ``seed`` (see the module docstring for the construction)."""
    c, h, w = (int(v) for v in shape)
    if not 1 <= square_size <= min(h, w):
        raise LuringError(f"trigger square size must be in [1, {min(h, w)}], got {square_size}")
    g = make_generator(seed)
    masks = torch.zeros(num_classes, c, h, w)
    patterns = torch.zeros(num_classes, c, h, w)
    for t in range(num_classes):
        cover = torch.zeros(h, w, dtype=torch.bool)
        total = torch.zeros(h, w)
        for _ in range(squares):
            r = int(torch.randint(h - square_size + 1, (1,), generator=g))
            q = int(torch.randint(w - square_size + 1, (1,), generator=g))
            mean, std = torch.rand(2, generator=g).tolist()
            noise = (mean + std * torch.randn(square_size, square_size, generator=g)).clamp(0, 1)
            cover[r:r + square_size, q:q + square_size] = True
            total[r:r + square_size, q:q + square_size] += noise
        masks[t] = cover.float() * mask_ratio
        patterns[t] = total.clamp(0, 1)
    params = {"squares": squares, "square_size": square_size, "mask_ratio": mask_ratio,
              "seed": seed, "num_classes": num_classes, "shape": [c, h, w],
              "construction": "Shan et al. reference: squares of clipped Gaussian noise, "
                              "x' = (1 - mask) x + mask pattern"}
    return Triggers(masks, patterns, params)


def penultimate_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` (its output layer) and its name: the signatures are read
    at its input (the penultimate activation). A model without one is a LuringError."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise LuringError("trapdoor signatures need a model whose output layer is nn.Linear")
    return found[-1]


def _forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """(logits (N, K), penultimate activations (N, D)) of one batch."""
    _, layer = penultimate_layer(model)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].flatten(1)))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, seen[-1]


@torch.no_grad()
def batched_features(model: nn.Module, x: torch.Tensor, batch_size: int,
                     dev: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), penultimate activations (N, D)) of ``model`` for images x (N, C, H, W),
    in chunks of ``batch_size`` run on ``dev``; float32 on the CPU. N = 0 is a LuringError."""
    outs = [_forward_with_features(model, x[i:i + batch_size].to(dev))
            for i in range(0, len(x), batch_size)]
    if not outs:
        raise LuringError("no images given (N = 0); pass at least one image")
    return (torch.cat([o[0].float().cpu() for o in outs]),
            torch.cat([o[1].float().cpu() for o in outs]))


def calibrate_threshold(scores: torch.Tensor, false_alarm: float) -> float:
    """The lower (1 − ``false_alarm``) empirical quantile of clean ``scores`` (n,): the
    ⌈(1 − α)·n⌉-th smallest, so that exactly ⌊α·n⌋ scores exceed it when they are distinct
    (example: 400 scores, α = 0.05 → the 380th smallest; 20 above it)."""
    n = len(scores)
    if n == 0:
        raise LuringError("no held-out images to calibrate the trapdoor threshold on; set "
                          "val_fraction > 0 with enough training images")
    k = math.floor(false_alarm * n + 1e-9)
    return float(scores.double().sort().values[n - k - 1])


class TrapdoorDetection(NamedTuple):
    """Output of :meth:`TrappedModel.detect`: ``labels`` (N,) int64 = the model's answer,
    ``scores`` (N,) float32 = cosine similarity in [-1, 1] with that label's trapdoor
    signature, ``flagged`` (N,) bool = score > threshold."""

    labels: torch.Tensor
    scores: torch.Tensor
    flagged: torch.Tensor


class TrappedModel:
    """A trapdoored model and its detector: ``model`` (eval, frozen; returns logits),
    ``triggers``, ``signatures`` float32 (K, D), ``threshold``, ``meta`` (settings,
    calibration, history, ...), ``input_shape`` (C, H, W), ``device``."""

    def __init__(self, model: nn.Module, triggers: Triggers, signatures: torch.Tensor,
                 threshold: float, meta: dict[str, Any], input_shape: tuple[int, int, int],
                 device: torch.device) -> None:
        self.model, self.triggers, self.signatures = model, triggers, signatures.float()
        self.threshold, self.meta = float(threshold), meta
        self.input_shape, self.device = tuple(int(v) for v in input_shape), device

    @property
    def method(self) -> str:
        return "trapdoor"

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """Validate images: float32 (N, C, H, W) in [0, 1] with (C, H, W) = ``input_shape``."""
        check_images(x)
        if tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise LuringError(f"images have shape {tuple(x.shape)}; this trapdoored model "
                              f"expects (N, {c}, {h}, {w})")
        return x

    def apply_trigger(self, x: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) in [0, 1] stamped with the trigger of ``label`` (int or int64 (N,))."""
        return self.triggers.apply(self.check(x), label)

    def features(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
        """(logits (N, K), penultimate activations (N, D)), float32 on the CPU."""
        return batched_features(self.model, self.check(x), batch_size, self.device)

    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The model's labels, int64 (N,), for images float32 (N, C, H, W) in [0, 1]."""
        return self.features(x, batch_size)[0].argmax(1)

    def detect(self, x: torch.Tensor, batch_size: int = 1000) -> TrapdoorDetection:
        """Labels, scores (cosine similarity with the predicted label's signature) and flags
        (score > ``threshold``) of images x (N, C, H, W) in [0, 1]."""
        logits, feats = self.features(x, batch_size)
        labels = logits.argmax(1)
        scores = F.cosine_similarity(feats, self.signatures[labels], dim=1, eps=1e-8)
        return TrapdoorDetection(labels, scores, scores > self.threshold)


