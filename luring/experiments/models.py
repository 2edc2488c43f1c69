"""The models stage of a run: M in ``models/target``, each approach's defense in
``models/<approach>-s<seed>`` and the attacker's own model S in ``models/attacker-s<seed>``,
trained when missing and reused when present, each stored through the run directory
(:meth:`luring.experiments.store.RunDir.model`: built under a temporary name and renamed into
place, with ``identity.json``: data fingerprint, settings, seed and, for a defense, the
fingerprint of M). A model is reused only when that identity matches, and a defense only when
its copy of M is the run's M."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from luring.data import get_spec
from luring.defense import build_defense, defense_settings, resolve_settings
from luring.defense import load as load_defense
from luring.errors import LuringError
from luring.experiments.common import unit_seed
from luring.experiments.profiles import USER_TARGET_FAMILIES, approach_method, defense_profile
from luring.experiments.store import RunDir
from luring.models import load_checkpoint
from luring.models.train import target_settings, train_target_run
from luring.utils import fingerprint, read_json, to_jsonable

__all__ = ["prepare_models", "prepare_attackers", "attacker_seed", "resolved_defense",
           "train_defense_dir", "load_frozen"]


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
    spec = get_spec(dataset)
    data_fp = fingerprint(*train)
    if target_dir:
        tdir = Path(target_dir)
    else:
        ts = target_settings(spec.family, **settings["target"])
        t_ident = {"dataset": dataset, "data": data_fp, "seed": seeds[0],
                   "settings": to_jsonable(asdict(ts))}
        tdir = _classifier(run, "target", t_ident, ts, dataset, seeds[0], device, data_dir,
                           lambda: log("training the target M ..."))
    target, meta = load_frozen(tdir, device)
    target_fp = fingerprint(target)
    log(f"target M: {meta['architecture']}, test accuracy {meta.get('test_accuracy')}")
    defenses: dict[str, dict[int, Any]] = {}
    for approach in settings["approaches"]:
        defenses[approach] = {}
        for s in seeds:
            d_ident = {"method": approach, "seed": s, "dataset": dataset, "data": data_fp,
                       "profile": settings["profile"],
                       "settings": resolved_defense(spec, approach, settings),
                       "train_images": settings.get("defense_train_images"),
                       "target": target_fp}
            ddir = run.model(
                f"{approach}-s{s}", d_ident, lambda d, a=approach, s=s: train_defense_dir(
                    target, meta, tdir, d, a, spec, settings, s, device, (*train, *test)),
                marker="defense.json",
                announce=lambda a=approach, s=s: log(f"training the {a} defense (seed {s}) ..."))
            defense = load_defense(ddir, device=device, augmented=True)
            if fingerprint(defense.target) != target_fp:
                raise LuringError(f"{ddir} holds a defense trained for another M (its copy of "
                                  "M differs from the run's); use another --out, or --restart")
            defenses[approach][s] = defense
    return target, defenses


def _classifier(run: RunDir, name: str, ident: dict[str, Any], ts, dataset: str, seed: int,
                device: torch.device, data_dir: str | None,
                announce: Callable[[], None]) -> Path:
    """``models/<name>``: a classifier trained with settings ``ts`` and ``seed`` (as ``luring
    train-target`` does), or the one already there when trained from ``ident``."""
    return run.model(name, ident, lambda p: train_target_run(
        dataset, p, ts, seed=seed, device=device, data_dir=data_dir), marker="model.json",
        announce=announce)


def load_frozen(d: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The classifier in ``d`` on ``device``, eval mode, no parameter requiring gradients."""
    model, meta = load_checkpoint(d, "model", device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta


def attacker_seed(seed: int) -> int:
    """The training seed of the attacker's model S for the run's defense seed ``seed``:
    derived from it, never M's seed (0 .. 2^32 − 1)."""
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
    spec = get_spec(dataset)
    if spec.family in USER_TARGET_FAMILIES:
        return {}
    ts = target_settings(spec.family, **settings["target"])
    out: dict[int, dict[str, Any]] = {}
    for s in seeds:
        ident = {"role": "attacker", "dataset": dataset, "data": fingerprint(*train),
                 "seed": attacker_seed(s), "settings": to_jsonable(asdict(ts))}
        d = _classifier(run, f"attacker-s{s}", ident, ts, dataset, attacker_seed(s), device,
                        data_dir,
                        lambda s=s: log(f"training the attacker's model S (seed {s}) ..."))
        model, meta = load_frozen(d, device)
        # the training time from the directory's results.json (absent from a copied
        # model: None); the accuracy from the model's own sidecar
        res = read_json(d / "results.json") if (d / "results.json").exists() else {}
        out[s] = {"model": model, "meta": meta, "seconds": res.get("seconds"),
                  "test_accuracy": meta.get("test_accuracy"), "n_train": len(train[0])}
    return out


def resolved_defense(spec, approach: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The fully resolved P settings a run trains ``approach`` with (what identifies it): its
    method's settings for the run's profile, the run's ``defense`` overrides, then the
    approach's own (:data:`~luring.experiments.profiles.VARIANTS`)."""
    method, extra = approach_method(approach)
    base = resolve_settings(defense_settings(spec.family, method,
                                             defense_profile(settings["profile"]),
                                             dataset=spec.name), **settings["defense"])
    return resolve_settings(base, **extra)


def train_defense_dir(target: torch.nn.Module, tmeta: dict[str, Any], tdir: Path, out: Path,
                      approach: str, spec: Any, settings: dict[str, Any], seed: int,
                      device: torch.device, data: tuple[torch.Tensor, ...]) -> None:
    """Train ``approach``'s P for M = ``target`` (its sidecar ``tmeta``, directory ``tdir``)
    with the run's settings and ``seed`` into defense directory ``out``; ``data``: (train
    images, labels, test images, labels) on the CPU (labels only for Stack's head)."""
    x_tr, y_tr, x_te, y_te = data
    limit = settings.get("defense_train_images")
    if limit:  # the smoke profile trains on a seeded subset, to keep tests short
        keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:limit]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    method, _ = approach_method(approach)
    s = resolved_defense(spec, approach, settings)
    build_defense(out, target, tmeta, x_tr, (x_te, y_te), method=method, settings=s,
                  family=spec.family, dataset=spec.name, seed=seed, device=device, labels=y_tr,
                  target_dir=str(tdir))
