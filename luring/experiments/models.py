"""The models stage of a run: M in ``models/target`` and each approach's defense in
``models/<approach>-s<seed>``, trained when missing and reused when present. Each directory
is built under a temporary name and renamed into place when complete, so a killed run never
leaves a half-written model behind. Each holds ``identity.json``: what it was trained from
(data fingerprint, settings, seed and, for a defense, the fingerprint of M). A model is reused
only when that identity matches, and a defense only when its copy of M is the run's M."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from luring.data import get_spec
from luring.errors import LuringError
from luring.experiments.profiles import approach_method, defense_profile
from luring.experiments.store import RunDir, identity_differences
from luring.models import load_checkpoint
from luring.models.train import target_settings, train_target_run
from luring.utils import atomic_write_json, fingerprint, read_json, to_jsonable

IDENTITY = "identity.json"

__all__ = ["prepare_models", "prepare_attackers", "attacker_seed", "build_dir", "check_reuse",
           "train_defense_dir"]


def _build_dir(final: Path, build: Callable[[Path], None], identity: dict[str, Any]) -> None:
    """Run ``build(tmp)`` into a fresh temporary directory, record ``identity`` in it and
    rename it to ``final``."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    tmp.mkdir(parents=True)
    build(tmp)
    atomic_write_json(tmp / IDENTITY, identity)
    os.replace(tmp, final)


def _check_reuse(run: RunDir, d: Path, identity: dict[str, Any]) -> None:
    """Refuse to reuse model directory ``d`` when it was trained from something else."""
    old = read_json(d / IDENTITY) if (d / IDENTITY).exists() else None
    diffs = identity_differences(old, to_jsonable(identity))
    if diffs:
        raise LuringError(f"{d.relative_to(run.path)} in {run.path} was trained from something "
                          f"else ({'; '.join(diffs)}); use another --out, or --restart to clear "
                          "the directory and retrain")


def prepare_models(run: RunDir, dataset: str, settings: dict[str, Any], seeds: list[int],
                   device: torch.device, data_dir: str | None, target_dir: str | None,
                   train: tuple[torch.Tensor, torch.Tensor],
                   test: tuple[torch.Tensor, torch.Tensor],
                   log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Train or reuse M and every approach's defense; ``train`` and ``test`` are the splits
    the caller already holds (P trains on the first; the second gives each new defense its
    clean evaluation). Returns ``(M, {approach: {seed: Defense}})`` with all models on
    ``device`` in eval mode. A model directory trained from other data, settings, seed or
    (for a defense) another M is refused, never reused."""
    from luring.defense import load as load_defense

    spec = get_spec(dataset)
    models = run.path / "models"
    models.mkdir(exist_ok=True)
    data_fp = fingerprint(*train)
    if target_dir:
        tdir = Path(target_dir)
    else:
        tdir = models / "target"
        ts = target_settings(spec.family, **settings["target"])
        t_ident = {"dataset": dataset, "data": data_fp, "seed": seeds[0],
                   "settings": to_jsonable(asdict(ts))}
        _train_or_reuse(run, tdir, t_ident, ts, dataset, seeds[0], device, data_dir,
                        lambda: log("training the target M ..."))
    target, meta = _load_frozen(tdir, device)
    target_fp = fingerprint(target)
    log(f"target M: {meta['architecture']}, test accuracy {meta.get('test_accuracy')}")
    defenses: dict[str, dict[int, Any]] = {}
    for approach in settings["approaches"]:
        defenses[approach] = {}
        for s in seeds:
            ddir = models / f"{approach}-s{s}"
            d_ident = {"method": approach, "seed": s, "dataset": dataset, "data": data_fp,
                       "profile": settings["profile"],
                       "settings": _resolved_defense(spec, approach, settings),
                       "train_images": settings.get("defense_train_images"),
                       "target": target_fp}
            if not (ddir / "defense.json").exists():
                log(f"training the {approach} defense (seed {s}) ...")
                _build_dir(ddir, lambda d, a=approach, s=s: _train_defense(
                    target, meta, tdir, d, a, spec, settings, s, device, (*train, *test)),
                    d_ident)
            else:
                _check_reuse(run, ddir, d_ident)
            defense = load_defense(ddir, device=device)
            if fingerprint(defense.target) != target_fp:
                raise LuringError(f"{ddir} holds a defense trained for another M (its copy of "
                                  "M differs from the run's); use another --out, or --restart")
            defenses[approach][s] = defense
    return target, defenses


def _train_or_reuse(run: RunDir, d: Path, ident: dict[str, Any], ts, dataset: str, seed: int,
                    device: torch.device, data_dir: str | None,
                    announce: Callable[[], None]) -> None:
    """Train a classifier with settings ``ts`` and ``seed`` into ``d`` (as
    ``luring train-target`` does) unless ``d`` already holds one trained from ``ident``;
    refuse a ``d`` trained from something else."""
    if (d / "model.json").exists():
        _check_reuse(run, d, ident)
        return
    announce()
    _build_dir(d, lambda p: train_target_run(dataset, p, ts, seed=seed, device=device,
                                             data_dir=data_dir), ident)


def _load_frozen(d: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The classifier in ``d`` on ``device``, eval mode, no parameter requiring gradients."""
    model, meta = load_checkpoint(d, "model", device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta


def attacker_seed(seed: int) -> int:
    """The training seed of the attacker's model S for the run's defense seed ``seed``:
    derived from it, never M's seed (0 .. 2^32 − 1)."""
    from luring.experiments.common import unit_seed

    return unit_seed(seed, "attacker")


def prepare_attackers(run: RunDir, dataset: str, settings: dict[str, Any], seeds: list[int],
                      device: torch.device, data_dir: str | None,
                      train: tuple[torch.Tensor, torch.Tensor],
                      log: Callable[[str], None] = print) -> dict[int, dict[str, Any]]:
    """Train or reuse the attacker's own model S per seed in ``models/attacker-s<seed>``:
    the family's M architecture trained with labels exactly as M is (the run's ``target``
    settings) on the training split (M uses all of it, so S differs by its seed,
    :func:`attacker_seed`), never from M's weights. Returns ``{seed: {"model": S on
    device, eval, frozen; "meta": its sidecar; "seconds": its training time; "test_accuracy";
    "n_train"}}``; empty when the family's M is not trained by runs (a user's M: no
    architecture or settings to train S from)."""
    from luring.experiments.profiles import USER_TARGET_FAMILIES

    spec = get_spec(dataset)
    if spec.family in USER_TARGET_FAMILIES:
        return {}
    ts = target_settings(spec.family, **settings["target"])
    out: dict[int, dict[str, Any]] = {}
    for s in seeds:
        d = run.path / "models" / f"attacker-s{s}"
        ident = {"role": "attacker", "dataset": dataset, "data": fingerprint(*train),
                 "seed": attacker_seed(s), "settings": to_jsonable(asdict(ts))}
        _train_or_reuse(run, d, ident, ts, dataset, attacker_seed(s), device, data_dir,
                        lambda s=s: log(f"training the attacker's model S (seed {s}) ..."))
        model, meta = _load_frozen(d, device)
        # the training time from the directory's results.json (absent from a copied
        # model: None); the accuracy from the model's own sidecar
        res = read_json(d / "results.json") if (d / "results.json").exists() else {}
        out[s] = {"model": model, "meta": meta, "seconds": res.get("seconds"),
                  "test_accuracy": meta.get("test_accuracy"), "n_train": len(train[0])}
    return out


def _resolved_defense(spec, approach: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The fully resolved P settings a run trains ``approach`` with (what identifies it): its
    method's settings for the run's profile, the run's ``defense`` overrides, then the
    approach's own (:data:`~luring.experiments.profiles.VARIANTS`)."""
    from luring.defense import defense_settings, resolve_settings

    method, extra = approach_method(approach)
    base = resolve_settings(defense_settings(spec.family, method,
                                             defense_profile(settings["profile"]),
                                             dataset=spec.name), **settings["defense"])
    return resolve_settings(base, **extra)


def _train_defense(target, tmeta, tdir, out, approach, spec, settings, seed, device, data):
    from luring.defense import build_defense

    x_tr, y_tr, x_te, y_te = data
    limit = settings.get("defense_train_images")
    if limit:  # the smoke profile trains on a seeded subset, to keep tests short
        keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:limit]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    method, _ = approach_method(approach)
    s = _resolved_defense(spec, approach, settings)
    build_defense(out, target, tmeta, x_tr, (x_te, y_te), method=method, settings=s,
                  family=spec.family, dataset=spec.name, seed=seed, device=device, labels=y_tr,
                  target_dir=str(tdir))


#: Public names of the helpers above, for the experiments that train models of their own
#: (``advtrain``: ``models/advtrain-*``; ``trapdoor``: ``models/trapdoor-s<seed>``).
build_dir, check_reuse, train_defense_dir = _build_dir, _check_reuse, _train_defense
