"""One call from a frozen target M and a data split to a written defense directory: train P
(:func:`~luring.defense.train_defense`), evaluate it on clean test images
(:func:`~luring.defense.evaluate_clean`) and save it (:func:`~luring.defense.save_defense`).
Used by ``luring train-defense`` and by the experiments stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from luring.defense.deploy import save_defense
from luring.defense.evaluate import evaluate_clean
from luring.defense.train import TrainedDefense, train_defense

__all__ = ["build_defense"]


def build_defense(out: str | os.PathLike, target: nn.Module, target_meta: dict[str, Any],
                  x_train: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], *,
                  method: str, settings: dict[str, Any], family: str, dataset: str,
                  seed: int, device: str | torch.device = "cpu", labels: torch.Tensor | None = None,
                  target_dir: str | None = None, config: dict[str, Any] | None = None,
                  stage: Path | None = None, desc: str | None = None
                  ) -> tuple[Path, TrainedDefense, dict[str, Any]]:
    """Train ``method`` for ``target`` on the unlabelled ``x_train`` (float32 (N, C, H, W) in
    [0, 1]), evaluate on ``test`` = (images, int64 labels) and write the defense directory
    ``out``. ``family``: the data set family (``mnist``, ``svhn``, ``cifar10``: P's default
    architecture); ``target_meta``: M's checkpoint sidecar (its architecture is also the head of
    ``stack``); ``settings``: resolved defense settings; ``labels`` (int64 (N,)) are passed to
    the trainer for ``stack`` only. ``config``/``stage``: see :func:`save_defense`.
    Returns (directory, trained defense, clean figures)."""
    trained = train_defense(
        target, x_train, method=method, settings=settings,
        family=family, labels=labels if method == "stack" else None,
        head_arch=target_meta["architecture"], head_kwargs=target_meta.get("arch_kwargs") or {},
        seed=seed, device=device, desc=desc or f"train {method}")
    clean = evaluate_clean(trained, *test)
    path = save_defense(out, trained, target_meta=target_meta, dataset=dataset, seed=seed,
                        clean=clean, target_dir=target_dir, config=config, stage=stage)
    return path, trained, clean
