"""The models stage of a run: M in ``models/target`` and each approach's defense in
``models/<approach>-s<seed>``, trained when missing and reused when present. Each directory
is built under a temporary name and renamed into place when complete, so a killed run never
leaves a half-written model behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from luring.data import get_spec, load
from luring.experiments.store import RunDir
from luring.models import load_checkpoint
from luring.models.train import target_settings, train_target_run

__all__ = ["prepare_models"]


def _build_dir(final: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` into a fresh temporary directory and rename it to ``final``."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    tmp.mkdir(parents=True)
    build(tmp)
    os.replace(tmp, final)


def prepare_models(run: RunDir, dataset: str, settings: dict[str, Any], seeds: list[int],
                   device: torch.device, data_dir: str | None, target_dir: str | None,
                   test: tuple[torch.Tensor, torch.Tensor],
                   log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Train or reuse M and every approach's defense; ``test`` (the test split the caller
    already holds) gives each new defense its clean evaluation. Returns ``(M, {approach:
    {seed: Defense}})`` with all models on ``device`` in eval mode."""
    from luring.defense import load as load_defense

    spec = get_spec(dataset)
    models = run.path / "models"
    models.mkdir(exist_ok=True)
    if target_dir:
        tdir = Path(target_dir)
    else:
        tdir = models / "target"
        if not (tdir / "model.json").exists():
            log("training the target M ...")
            ts = target_settings(spec.family, **settings["target"])
            _build_dir(tdir, lambda d: train_target_run(dataset, d, ts, seed=seeds[0],
                                                        device=device, data_dir=data_dir))
    target, meta = load_checkpoint(tdir, "model", device=device)
    for p in target.parameters():
        p.requires_grad_(False)
    log(f"target M: {meta['architecture']}, test accuracy {meta.get('test_accuracy')}")
    train: list = []  # (x_train, y_train), loaded on first use
    defenses: dict[str, dict[int, Any]] = {}
    for approach in settings["approaches"]:
        defenses[approach] = {}
        for s in seeds:
            ddir = models / f"{approach}-s{s}"
            if not (ddir / "defense.json").exists():
                if not train:
                    train.extend(load(dataset, "train", data_dir))
                log(f"training the {approach} defense (seed {s}) ...")
                _build_dir(ddir, lambda d, a=approach, s=s: _train_defense(
                    target, meta, tdir, d, a, spec, settings, s, device, (*train, *test)))
            defenses[approach][s] = load_defense(ddir, device=device)
    return target, defenses


def _train_defense(target, tmeta, tdir, out, method, spec, settings, seed, device, data):
    from luring.defense import build_defense, defense_settings, resolve_settings

    x_tr, y_tr, x_te, y_te = data
    limit = settings.get("defense_train_images")
    if limit:  # the smoke profile trains on a seeded subset, to keep tests short
        keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:limit]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    profile = "quick" if settings["profile"] == "smoke" else settings["profile"]
    s = resolve_settings(defense_settings(spec.family, method, profile), **settings["defense"])
    build_defense(out, target, tmeta, x_tr, (x_te, y_te), method=method, settings=s,
                  family=spec.family, dataset=spec.name, seed=seed, device=device, labels=y_tr,
                  target_dir=str(tdir))
