"""``reproduce``: train (or reuse) M and the four P, run every experiment, write the report.

Layout of a run directory::

    config.json          the run's identity (data set and split fingerprints, profile
                         settings, seeds, target M) and the experiments run so far
    results.json         every figure of the report, machine-readable (deterministic)
    timings.json         wall times (kept out of results.json so that reruns compare equal)
    table_*.csv          the report's tables
    report.md, *.png     the human report and its figures
    models/target/       M (train-target layout)
    models/<approach>-s<seed>/   each defense (train-defense layout)
    units/<experiment>/  one file per finished unit (see store.py)

Everything is resumable: a rerun with the same command skips finished models and units.
Under ``torchrun`` (several processes, one run directory on a shared file system), rank 0
checks the directory and trains the models, every process then runs the units of its share of
the (approach, seed) pairs, and rank 0 aggregates: results.json is what one process writes. A
rerun with another identity (data set, data, settings, seed, seeds, target) is refused with a
one-line error naming what differs; ``restart=True`` (``--restart``) clears the directory and
starts over. Units and models carry fingerprints of what made them and are never reused for
something else.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from luring import precision as prec
from luring.attacks.base import default_chunk
from luring.data import get_spec, load
from luring.errors import LuringError
from luring.experiments import shards
from luring.experiments.adaptive import every_attack_rows, run_adaptive
from luring.experiments.analysis import logits_lines, run_distortion, run_logits, run_saliency
from luring.experiments.characterize import run_characterize
from luring.experiments.common import select_images
from luring.experiments.defend import run_defend
from luring.experiments.diagnostics import paired_verdict, run_diagnostics
from luring.experiments.models import prepare_attackers, prepare_models
from luring.experiments.profiles import (
    EXPERIMENTS,
    EXTRA_EXPERIMENTS,
    USER_TARGET_FAMILIES,
    differences_from_paper,
    resolve_profile,
)
from luring.experiments.store import RunDir
from luring.metrics import agreement, clean_accuracy, false_alarm_rate, rate
from luring.models import build, default_architectures
from luring.utils import atomic_write_json, fingerprint, read_json, resolve_device, versions

__all__ = ["reproduce", "EXPERIMENTS"]



def reproduce(dataset: str, out: str | Path, *, profile: str = "quick", seed: int = 0,
              seeds: int = 1, device: str = "auto", data_dir: str | None = None,
              experiments: tuple[str, ...] = EXPERIMENTS, target_dir: str | None = None,
              restart: bool = False, log=print, precision: str | None = None
              ) -> dict[str, Any]:
    """Run the paper's protocol on ``dataset`` into ``out`` and return the results dict.

    ``seeds`` > 1 trains each P with seeds ``seed, seed+1, ...`` and reports, per row, the
    value pooled over every seed's examples (with its interval), the mean and sample std over
    seeds and the per-seed values. ``target_dir`` reuses a trained M (a ``train-target``
    directory) instead of training one. ``restart`` clears ``out`` first. ``precision``
    (:mod:`luring.precision`; default the process default): gradient work of every model
    and attack of the run; ``auto`` is resolved once, on the family's target architecture
    (a resumed run keeps the precision its ``config.json`` recorded), and the concrete choice
    and the attacks' chunk size are part of the run's identity.
    """
    unknown = set(experiments) - set(EXPERIMENTS) - set(EXTRA_EXPERIMENTS)
    if unknown:
        raise LuringError(f"unknown experiment(s) {', '.join(sorted(unknown))}; choose from "
                          f"{', '.join(EXPERIMENTS + EXTRA_EXPERIMENTS)}")
    if seeds < 1:
        raise LuringError(f"--seeds must be ≥ 1, got {seeds}")
    spec = get_spec(dataset)
    settings = resolve_profile(profile, spec.family)
    if spec.family in USER_TARGET_FAMILIES and not target_dir:
        raise LuringError(f"a run on {dataset} does not train M; import yours with `luring "
                          f"import-target --dataset {dataset} --weights FILE --out DIR` (or "
                          "train one) and pass --target DIR")
    dev = resolve_device(device)
    seed_list = list(range(seed, seed + seeds))
    started = time.perf_counter()
    x_train, y_train = load(dataset, "train", data_dir)
    x_test, y_test = load(dataset, "test", data_dir)
    fps = {"train": fingerprint(x_train, y_train), "test": fingerprint(x_test, y_test)}
    user_target = None
    if target_dir:
        from luring.models import load_checkpoint

        user_target = fingerprint(load_checkpoint(target_dir, "model", device="cpu")[0])
    p = run_precision(precision, None if restart else Path(out), dev, spec)
    identity = {"dataset": dataset, "data": fps, "profile": profile, "settings": settings,
                "seed": seed, "seeds": seed_list,
                "target": user_target or "trained in models/target",
                "precision": p, "chunk": default_chunk(dev)}
    with prec.using(p):  # every model and attack of the run computes in p
        return _run(out, restart, identity, dataset, spec, profile, seed, seed_list,
                    experiments, settings, dev, data_dir, target_dir, x_train, y_train,
                    x_test, y_test, fps, log, started)


def run_precision(precision: str | None, out: Path | None, dev: torch.device,
                  spec: Any) -> str:
    """The concrete precision of a run: ``precision`` (default the process default);
    ``auto`` takes what ``out``'s config.json recorded, else times the family's target
    architecture on ``dev`` (:func:`luring.precision.resolve`)."""
    want = prec.requested(precision)
    if want != "auto":
        return prec.resolve(want, None, dev)
    cfg = out / "config.json" if out is not None else None
    if cfg is not None and cfg.is_file():
        try:
            recorded = read_json(cfg).get("identity", {}).get("precision")
        except (LuringError, OSError, AttributeError):
            recorded = None
        if recorded in ("fp32", "bf16", "fp16"):
            try:
                return prec.resolve(recorded, None, dev)
            except LuringError:
                pass
    arch = default_architectures(spec.family, tuple(spec.shape))[0]
    try:
        model = build(arch, in_channels=spec.shape[0], num_classes=spec.num_classes).to(dev)
    except (LuringError, TypeError, ValueError):
        return "fp32"
    return prec.resolve("auto", model, dev, tuple(spec.shape))


def precision_lines(precision: str) -> list[str]:
    """The departure a lower precision makes (none for float32)."""
    if precision == "fp32":
        return []
    return [f"gradients computed in {prec.describe(precision)} (`--precision {precision}`): "
            "the attacks' input gradients and the training steps of M, P, Stack's head, the "
            "substitute and the Trapdoor model; every judgement (accuracy, agreement, AC_MoP, "
            "AC_M, DAC, detection, checkpoint selection) is float32 on the real models (the "
            "paper: float32 throughout)"]


def _run(out, restart, identity, dataset, spec, profile, seed, seed_list, experiments,
         settings, dev, data_dir, target_dir, x_train, y_train, x_test, y_test, fps, log,
         started) -> dict[str, Any]:
    """The body of :func:`reproduce` once the run's identity is known."""
    rank, world = shards.rank_world()
    train_split = [x_train, y_train]  # P's training images: dropped once the models exist
    del x_train, y_train
    with RunDir(out, restart=restart and rank == 0, lock=rank == 0) as run:
        def models_stage() -> tuple[torch.nn.Module, dict]:
            if rank == 0:
                old = run.check_identity(identity) or {}
                done = [e for e in EXPERIMENTS + EXTRA_EXPERIMENTS
                        if e in set(old.get("experiments", [])) | set(experiments)]
                config = {"dataset": dataset, "family": spec.family, "profile": profile,
                          "seed": seed, "seeds": seed_list, "experiments": done,
                          "settings": settings, "identity": identity,
                          "target_dir": str(target_dir) if target_dir else None}
                atomic_write_json(run.path / "config.json", config | {
                    "device": str(dev), "versions": versions(), "processes": world})
            # only the appendix experiments (advtrain, trapdoor): of the approaches, they need
            # Luring alone (the others are trained by a later run that asks for them)
            need = settings if set(experiments) & set(EXPERIMENTS) else \
                settings | {"approaches": [a for a in settings["approaches"] if a == "luring"]}
            models = prepare_models(run, dataset, need, seed_list, dev, data_dir, target_dir,
                                    tuple(train_split), (x_test, y_test), log=log)
            attackers = {}
            if "adaptive" in experiments and _wants_attacker(settings):
                attackers = prepare_attackers(run, dataset, settings, seed_list, dev,
                                              data_dir, tuple(train_split), log=log)
            return (*models, attackers)

        # rank 0 checks the directory and trains what is missing; then every rank loads
        target, defenses, attackers = shards.rank0_first(models_stage)
        train_split.clear()
        ctx = _Context(run, target, defenses, settings, seed, seed_list, x_test, y_test, dev,
                       fps, log)
        ctx.dataset, ctx.profile = dataset, profile
        ctx.precision = identity["precision"]
        ctx.data_dir = data_dir
        ctx.attackers = attackers
        if world > 1:
            # each process runs the units of its share of (approach, seed) pairs; rank 0 then
            # finds every unit stored and aggregates exactly what one process would
            mine = shards.my_share([(a, s) for a in defenses for s in seed_list], rank, world)
            part = {a: {s: d for s, d in per.items() if (a, s) in mine}
                    for a, per in defenses.items()}
            part = {a: per for a, per in part.items() if per}
            shards.run_everywhere(lambda: _experiments(ctx, part, experiments, final=False)
                                  if part else None)
            if rank != 0:
                return {}
        results = _experiments(ctx, defenses, experiments, final=True)
        atomic_write_json(run.path / "results.json", results)
        wall = time.perf_counter() - started
        atomic_write_json(run.path / "timings.json", {
            "wall_time_s": wall, "units_run": run.ran, "units_reused": run.reused,
            "units_recomputed": run.recomputed, "processes": world,
            "attacker_train_seconds": {str(s): a["seconds"]
                                       for s, a in ctx.attackers.items()}})
        from luring.report import render_report

        render_report(results | {"wall_time_s": wall}, run.path)
    return results


def _wants_attacker(settings: dict[str, Any]) -> bool:
    """Does the adaptive experiment use the attacker's own model S (ensembles, public row)?"""
    att = settings.get("adaptive", {}).get("attacker") or {}
    return bool(att.get("ensemble") or att.get("public"))


class _Context:
    """What every experiment of one run shares: the run directory, the models, the test
    split, the seeds and the fingerprints."""

    def __init__(self, run, target, defenses, settings, seed, seed_list, x_test, y_test, dev,
                 fps, log) -> None:
        self.run, self.target, self.defenses, self.settings = run, target, defenses, settings
        self.seed, self.seed_list, self.x_test, self.y_test = seed, seed_list, x_test, y_test
        self.dev, self.fps, self.log = dev, fps, log
        self.attackers: dict[int, dict[str, Any]] = {}
        self.model_fps = {"target": fingerprint(target)} | {
            a: {s: fingerprint(d.augmented) for s, d in per.items()}
            for a, per in defenses.items()}
        all_models = [target]
        if settings["images_correct_for"] == "all":
            all_models += [d.augmented for per in defenses.values() for d in per.values()]
        # Test images every model classifies correctly, in the run's seeded order: predicted
        # once here, each experiment takes the first n.
        self.eligible = select_images(x_test, y_test, all_models, len(x_test), seed)

    def images(self, n: int, tag: str, quiet: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The first n eligible test images, their labels, and what identifies them (test
        split fingerprint and indices) with the run seed and model fingerprints, for the
        units' identities."""
        idx = self.eligible[:n]
        if len(idx) < n and not quiet:
            self.log(f"note: only {len(idx)} test images are classified correctly by every "
                     f"model; {tag} uses {len(idx)} instead of {n}")
        ident = {"data": self.fps["test"], "indices": idx, "seed": self.seed,
                 "models": self.model_fps}
        return self.x_test[idx].to(self.dev), self.y_test[idx].to(self.dev), ident


def _experiments(ctx: _Context, defenses: dict, experiments: tuple[str, ...], *,
                 final: bool) -> dict[str, Any]:
    """Run (or reuse) the units of ``experiments`` for ``defenses`` and return the results
    dict (only meaningful when ``final``: every approach and seed)."""
    run, target, settings, seed, seed_list = (ctx.run, ctx.target, ctx.settings, ctx.seed,
                                              ctx.seed_list)
    x_test, y_test = ctx.x_test, ctx.y_test
    first = {a: per_seed[seed_list[0]] for a, per_seed in defenses.items()
             if seed_list[0] in per_seed}
    results: dict[str, Any]
    if final:
        results = {
            "dataset": ctx.dataset, "family": settings["family"], "profile": ctx.profile,
            "seed": seed, "seeds": seed_list, "settings": settings,
            "differences_from_paper": differences_from_paper(settings, ctx.dataset)
            + precision_lines(ctx.precision),
            "precision": ctx.precision, "chunk": default_chunk(ctx.dev),
            "clean": _clean(target, defenses, x_test, y_test), "rows": [],
            "fingerprints": {"data": ctx.fps, "models": ctx.model_fps},
            "versions": versions(),
        }
    else:
        results = {"rows": []}
    images = ctx.images if final else (lambda n, tag: ctx.images(n, tag, quiet=True))
    if "characterize" in experiments:
        x, y, ident = images(settings["characterize"]["n"], "characterize")
        results["rows"] += run_characterize(run, target, defenses, x, y.cpu(), settings, seed,
                                            ident)
    outcomes: dict[tuple, dict] = {}
    roc: dict[str, Any] = {}
    if "defend" in experiments:
        x, y, ident = images(settings["defend"]["n"], "defend")
        results["rows"] += run_defend(run, target, defenses, x, y.cpu(), settings, seed,
                                      ident, outcomes, roc)
    if "adaptive" in experiments:
        # the defend experiment's images; the substitute attacker's pool is other test
        # images (never attacked), in the run's seeded order
        x, y, ident = images(settings["defend"]["n"], "adaptive")
        attacked = set(ctx.eligible[:settings["defend"]["n"]].tolist())
        order = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(seed))
        pool_idx = torch.tensor([i for i in order.tolist() if i not in attacked]
                                [:settings["adaptive"]["substitute"]["pool"]])
        rows, adaptive_outcomes = run_adaptive(run, target, defenses, x, y.cpu(),
                                               x_test[pool_idx], settings, seed,
                                               ident | {"pool": pool_idx}, roc,
                                               attackers=ctx.attackers)
        results["rows"] += rows
        outcomes |= adaptive_outcomes
        results["rows"] += every_attack_rows(outcomes, list(defenses), settings["eps"],
                                             seed_list)
        results["diagnostics"] = run_diagnostics(run, target, defenses, x, y.cpu(),
                                                 settings, seed, ident, outcomes)
    if roc:
        results["roc"] = roc
    if outcomes and final:
        results["verdict"] = paired_verdict(
            outcomes, ["mim-w", "worst-case", "adaptive-w", "adaptive-worst", "substitute",
                       "all-worst"],
            settings["eps"], list(defenses), seed_list)
    if "distortion" in experiments and (first or final):
        x, y, ident = images(settings["distortion"]["n"], "distortion")
        results["distortion"] = run_distortion(run, target, first, x, y.cpu(), settings,
                                               seed, ident)
    if "logits" in experiments and (first or final):
        x, _, ident = images(settings["logits"]["n"], "logits")
        results["logits"] = run_logits(run, target, first, x, settings, ident)
        if "differences_from_paper" in results:
            results["differences_from_paper"] += logits_lines(results["logits"])
    if "saliency" in experiments and final:
        x, y, ident = images(settings["saliency"]["n"], "saliency")
        run_saliency(run, target, first, x, y, ident)
        results["saliency"] = {"unit": "units/saliency/all.safetensors"}
    if final and set(experiments) & set(EXTRA_EXPERIMENTS):
        _extra_experiments(ctx, defenses, experiments, results)
    return results


def _extra_experiments(ctx: _Context, defenses: dict, experiments: tuple[str, ...],
                       results: dict[str, Any]) -> None:
    """Appendices H.2 (``advtrain``) and I (``trapdoor``): their own models and units, run
    by one process (rank 0 under torchrun), results in ``results["advtrain"]`` and
    ``results["trapdoor"]``, their departures added to ``differences_from_paper``."""
    from luring.experiments.disclosure import extra_lines

    args = (ctx.run, ctx.dataset, ctx.target, defenses, ctx.settings, ctx.seed, ctx.seed_list,
            ctx.dev, ctx.data_dir, (ctx.x_test, ctx.y_test), ctx.fps, ctx.log)
    if "advtrain" in experiments:
        from luring.experiments.advtrain import run_advtrain

        results["advtrain"] = run_advtrain(*args)
    if "trapdoor" in experiments:
        from luring.experiments.trapdoor_exp import run_trapdoor_exp

        results["trapdoor"] = run_trapdoor_exp(*args)
    ran = tuple(e for e in EXTRA_EXPERIMENTS if e in experiments)
    results["differences_from_paper"] += extra_lines(ctx.settings, ctx.dataset, ran)


def _clean(target, defenses, x, y) -> dict[str, Any]:
    """Table 8: test accuracy of M and of each T, agreement (T = M = y), the paper rule's false
    alarms (T ≠ M) and the detector's at each defense's stored operating point (calibrated on
    held-out training images), each with its Wilson interval; several seeds are pooled (and
    their mean, std and per-seed values kept)."""
    from luring.experiments.common import mean_std
    from luring.metrics import Rate
    from luring.models import predict_labels

    m = predict_labels(target, x)
    acc = clean_accuracy(m, y)
    out: dict[str, Any] = {"target": {"accuracy": acc.value, "n": len(y),
                                      "ci": {"accuracy": [acc.ci_low, acc.ci_high]}}}
    keys = ("accuracy", "agreement", "false_alarm_rate", "detector_false_alarm_rate")
    for a, per_seed in defenses.items():
        vals, dets = [], []
        for d in per_seed.values():
            det = d.detect(x)
            t = det.t_label
            vals.append({"accuracy": clean_accuracy(t, y), "agreement": agreement(t, m, y),
                         "false_alarm_rate": false_alarm_rate(t, m),
                         "detector_false_alarm_rate": rate(det.flagged)})
            op = d.detector
            dets.append({k: op.get(k) for k in ("rule", "threshold", "target_fpr",
                                                "confidence", "heldout_fpr", "n")})
        row: dict[str, Any] = {"n": len(y), "ci": {}, "detector": dets[0],
                               "detector_per_seed": dets}
        for k in keys:
            pooled = Rate.of(sum(v[k].k for v in vals), sum(v[k].n for v in vals))
            row[k] = pooled.value
            row["ci"][k] = [pooled.ci_low, pooled.ci_high]
            if len(vals) > 1:
                row[f"{k}_std"] = mean_std([v[k].value for v in vals])[1]
                row.setdefault("per_seed", {})[k] = [v[k].value for v in vals]
        out[a] = row
    return out
