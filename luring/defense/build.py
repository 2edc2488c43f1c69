"""One call from a frozen target M and a data split to a written defense directory: carve the
calibration split off the training images, train P on the rest
(:func:`~luring.defense.train_defense`), choose the detector's operating point on the
calibration images (:mod:`luring.defense.calibrate`), evaluate on clean test images
(:func:`~luring.defense.evaluate_clean`) and save it all (:func:`~luring.defense.save_defense`).
Used by ``luring train-defense`` and by the experiments stage.

The calibration images are held out *before* P trains: neither P's training nor its
checkpoint selection (which holds out ``val_fraction`` of the remaining images) sees them, so
the held-out false-alarm rate is not optimistic. With the default 10% this changes P's
training set (90% of the given images) compared with training on all of them.

A weak defense is not published silently: with ``agreement_floor`` (``luring train-defense``
passes :data:`AGREEMENT_FLOOR`, 0.5), a T that agrees with M on fewer held-out images than
that (it would flag most clean inputs) is refused with a LuringError naming the measured
agreement, unless ``on_weak`` is given (``--allow-weak``: it receives the warning line and
the defense is written)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from luring import distributed
from luring.data.lazy import is_lazy, subset
from luring.defense.calibrate import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RULE,
    DEFAULT_TARGET_FPR,
    calibration_split,
    fingerprint,
    operating_point,
)
from luring.defense.deploy import save_defense
from luring.defense.evaluate import evaluate_clean
from luring.defense.scores import SCORES
from luring.defense.train import TrainedDefense, train_defense
from luring.errors import LuringError
from luring.models.predict import predict_logits

__all__ = ["build_defense", "heldout_agreement", "AGREEMENT_FLOOR", "CALIBRATION_FRACTION",
           "CALIBRATION_SEED"]

CALIBRATION_FRACTION = 0.1
CALIBRATION_SEED = 0  # one split per training set, shared by every approach and seed
#: The least held-out agreement of T with M that ``luring train-defense`` publishes without
#: ``--allow-weak``: below it, the paper rule (flag when T and M disagree) flags most clean
#: inputs, so the defense is useless as deployed (a failed or far too short training, or a
#: target that does not fit the data).
AGREEMENT_FLOOR = 0.5


def build_defense(out: str | os.PathLike, target: nn.Module, target_meta: dict[str, Any],
                  x_train: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], *,
                  method: str, settings: dict[str, Any], family: str, dataset: str,
                  seed: int, device: str | torch.device = "cpu", labels: torch.Tensor | None = None,
                  target_dir: str | None = None, config: dict[str, Any] | None = None,
                  stage: Path | None = None, desc: str | None = None,
                  detector_rule: str = DEFAULT_RULE, target_fpr: float = DEFAULT_TARGET_FPR,
                  confidence: float | None = DEFAULT_CONFIDENCE,
                  calibration_fraction: float = CALIBRATION_FRACTION,
                  calibration_seed: int = CALIBRATION_SEED, parallel: bool = False,
                  agreement_floor: float | None = None,
                  on_weak: Callable[[str], None] | None = None, precision: str | None = None
                  ) -> tuple[Path, TrainedDefense, dict[str, Any]]:
    """Train ``method`` for ``target`` on the unlabelled ``x_train`` (float32 (N, C, H, W) in
    [0, 1]) minus its calibration split, calibrate the detector, evaluate on ``test`` =
    (images, int64 labels) and write the defense directory ``out``. ``family``: the data set
    family (``mnist``, ``svhn``, ``cifar10``: P's default architecture); ``target_meta``: M's
    checkpoint sidecar (its architecture is also the head of ``stack``); ``settings``:
    resolved defense settings; ``labels`` (int64 (N,)) are read for ``stack`` only.
    ``config``/``stage``: see :func:`save_defense`.

    Detector: ``calibration_fraction`` (in (0, 0.5]; 0 = no split, the paper rule) of the
    training images, drawn with ``calibration_seed`` (:func:`~luring.defense.calibrate.
    calibration_split`), are held out unlabelled; ``detector_rule`` (a score of
    :data:`~luring.defense.scores.SCORES`) gets the smallest threshold whose false-alarm rate
    on them is ≤ ``target_fpr`` and, with ``confidence`` c (default 0.9), whose rate on new
    clean images is ≤ ``target_fpr`` with probability c
    (:func:`~luring.defense.calibrate.exceedances`; ``paper`` keeps its fixed threshold 0).
    The test images never choose anything. ``parallel=True``: every rank of a torchrun
    process group calls this together and trains its share
    (:func:`~luring.defense.train.train_defense`); rank 0 alone calibrates, evaluates and
    writes (the other ranks return empty clean figures). ``agreement_floor``/``on_weak``:
    see the module docstring (the agreement is :func:`heldout_agreement`'s; nothing is
    written when it is refused). Returns (directory, trained defense, clean figures)."""
    if detector_rule not in SCORES:
        raise LuringError(f"unknown detection score {detector_rule!r}; choose one of "
                          f"{', '.join(SCORES)}")
    n = len(x_train)
    if calibration_fraction:
        fit_idx, cal_idx = calibration_split(n, calibration_fraction, calibration_seed)
        x_fit = subset(x_train, fit_idx)
        y_fit = labels[fit_idx] if method == "stack" and labels is not None else None
    else:
        fit_idx, cal_idx, x_fit = None, None, x_train
        y_fit = labels if method == "stack" else None
    trained = train_defense(
        target, x_fit, method=method, settings=settings, family=family, labels=y_fit,
        head_arch=target_meta["architecture"], head_kwargs=target_meta.get("arch_kwargs") or {},
        seed=seed, device=device, desc=desc or f"train {method}", parallel=parallel,
        precision=precision)
    if parallel and not distributed.is_main():
        return Path(out), trained, {}
    detector, calibration = None, None
    if cal_idx is not None:
        x_cal = subset(x_train, cal_idx)
        bs = int(settings.get("eval_batch_size", 1000))
        t_logits = predict_logits(trained.augmented, x_cal, bs)  # on the models' device
        m_logits = predict_logits(trained.target, x_cal, bs)
        op = operating_point(t_logits, m_logits, detector_rule,
                             None if detector_rule == "paper" else target_fpr, confidence)
        detector = {**op, "split": {
            "kind": "calibration split", "source": "training images", "labels_read": False,
            "fraction": float(calibration_fraction), "seed": int(calibration_seed),
            "n": len(cal_idx), "n_training_images": n, "n_fit": len(fit_idx),
            "fingerprint": x_cal.fingerprint() if is_lazy(x_cal) else fingerprint(x_cal),
            "file": "calibration.safetensors",
            "note": "held out before P trained; never used for P's training or checkpoint "
                    "selection"}}
        calibration = {"t_logits": t_logits, "m_logits": m_logits, "index": cal_idx}
    clean = evaluate_clean(trained, *test, detector=detector)
    weak = None if agreement_floor is None else _check_agreement(
        heldout_agreement(trained, calibration, clean), agreement_floor, on_weak is not None)
    path = save_defense(out, trained, target_meta=target_meta, dataset=dataset, seed=seed,
                        clean=clean, target_dir=target_dir, config=config, stage=stage,
                        detector=detector, calibration=calibration)
    if weak is not None and on_weak is not None:
        on_weak(weak)  # once written: a failed write stays a single line
    return path, trained, clean


def heldout_agreement(trained: TrainedDefense, calibration: dict[str, torch.Tensor] | None,
                      clean: dict[str, Any]) -> tuple[float, int, str]:
    """(agreement of T's labels with M's in [0, 1], n, which images): on the calibration
    images (held out before P trained) when there are any, else on the checkpoint
    selection's held-out training images, else on the clean test images."""
    if calibration is not None and len(calibration["t_logits"]):
        same = calibration["t_logits"].argmax(1) == calibration["m_logits"].argmax(1)
        return float(same.float().mean()), len(same), "calibration images held out before P " \
            "trained"
    sel = trained.selection or {}
    if sel.get("agreement") is not None and sel.get("n"):
        return float(sel["agreement"]), int(sel["n"]), "held-out training images"
    return float(clean["agreement"]), int(clean["n"]), "clean test images"


def _check_agreement(measured: tuple[float, int, str], floor: float,
                     allow_weak: bool) -> str | None:
    """None for an agreement ≥ ``floor``; below it a LuringError, or with ``allow_weak`` the
    warning line."""
    agreement, n, where = measured
    if agreement >= floor:
        return None
    what = (f"T agrees with M on only {100 * agreement:.1f}% of {n} {where}, below the "
            f"{100 * floor:g}% floor: deployed, it would flag most clean inputs")
    if not allow_weak:
        raise LuringError(f"{what}; nothing was written: train longer (--epochs), check the "
                          "target and the data set, or pass --allow-weak to publish it anyway")
    return f"{what}; published anyway (--allow-weak): do not deploy it as it is"
