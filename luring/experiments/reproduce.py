"""``reproduce``: train (or reuse) M and the four P, run every experiment, write results.json
(and, through ``on_results``, the report: the CLI passes :func:`luring.report.render_report`;
a Python caller who wants ``report.md``, the CSV tables and the figures passes it too).

Layout of a run directory::

    config.json          the run's identity (data set and split fingerprints, profile
                         settings, seeds, target M) and the experiments run so far
    results.json         every figure of the report, machine-readable (deterministic)
    timings.json         wall times (kept out of results.json so that reruns compare equal)
    table_*.csv          the report's tables
    report.md, *.png     the human report and its figures (written by ``on_results``)
    models/target/       M (train-target layout)
    models/<approach>-s<seed>/   each defense (train-defense layout)
    units/<experiment>/  one file per finished unit (see store.py)

The experiments are those of :mod:`luring.experiments.registry`, each ``run(ctx)`` on one
:class:`~luring.experiments.context.RunContext`; this module merges what they return (rows,
sections, per-example outcomes, ROC curves, departures) into results.json, adds the clean
table and the paired verdict, and hands the results to ``on_results`` (the CLI renders the
report there). Everything is resumable: a rerun with the same command skips finished models
and units. Under ``torchrun`` (several processes, one run directory on a shared file system), rank 0
checks the directory and trains the models, every process then runs the units of its share of
the (approach, seed) pairs, and rank 0 aggregates: results.json is what one process writes. A
rerun with another identity (data set, data, settings, seed, seeds, target) is refused with a
one-line error naming what differs; ``restart=True`` (``--restart``) clears the directory and
starts over. Units and models carry fingerprints of what made them and are never reused for
something else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from luring import distributed
from luring import precision as prec
from luring.attacks.base import default_chunk
from luring.data import get_spec, load
from luring.errors import LuringError
from luring.experiments import registry
from luring.experiments.common import mean_std
from luring.experiments.context import RunContext
from luring.experiments.diagnostics import VERDICT_ATTACKS, paired_verdict
from luring.experiments.disclosure import differences_from_paper
from luring.experiments.models import prepare_attackers, prepare_models
from luring.experiments.profiles import USER_TARGET_FAMILIES, resolve_profile
from luring.experiments.store import RunDir
from luring.metrics import Rate, agreement, clean_accuracy, false_alarm_rate, rate
from luring.models import build, default_architectures, load_checkpoint, predict_labels
from luring.utils import atomic_write_json, fingerprint, read_json, versions

__all__ = ["reproduce", "run_precision", "precision_lines"]


def reproduce(dataset: str, out: str | Path, *, profile: str = "quick", seed: int = 0,
              seeds: int = 1, device: str = "auto", data_dir: str | None = None,
              experiments: tuple[str, ...] | None = None, target_dir: str | None = None,
              restart: bool = False, log: Callable[[str], None] = print,
              precision: str | None = None,
              on_results: Callable[[dict[str, Any], Path], None] | None = None
              ) -> dict[str, Any]:
    """Run the paper's protocol on ``dataset`` into ``out`` and return the results dict.

    ``experiments``: names of :mod:`~luring.experiments.registry` (default: its default
    ones). ``seeds`` > 1 trains each P with seeds ``seed, seed+1, ...`` and reports, per row,
    the value pooled over every seed's examples (with its interval), the mean and sample std
    over seeds and the per-seed values. ``target_dir`` reuses a trained M (a ``train-target``
    directory) instead of training one. ``restart`` clears ``out`` first. ``precision``
    (:mod:`luring.precision`; default the process default): gradient work of every model
    and attack of the run; ``auto`` is resolved once, on the family's target architecture
    (a resumed run keeps the precision its ``config.json`` recorded), and the concrete choice
    and the attacks' chunk size are part of the run's identity. ``on_results(results |
    {"wall_time_s", "reused": {"units", "models"}}, run directory)`` is called once
    results.json is written, while the directory is still held (the CLI writes the report
    and figures there); ``reused`` counts what earlier invocations stored.
    """
    chosen = registry.names(default=True) if experiments is None else tuple(experiments)
    if not chosen:
        raise LuringError("no experiment chosen; name at least one of "
                          f"{', '.join(registry.names())}")
    unknown = set(chosen) - set(registry.names())
    if unknown:
        raise LuringError(f"unknown experiment(s) {', '.join(sorted(unknown))}; choose from "
                          f"{', '.join(registry.names())}")
    if seeds < 1:
        raise LuringError(f"--seeds must be ≥ 1, got {seeds}")
    spec = get_spec(dataset)
    settings = resolve_profile(profile, spec.family)
    if spec.family in USER_TARGET_FAMILIES and not target_dir:
        raise LuringError(f"a run on {dataset} does not train M; import yours with `luring "
                          f"import-target --dataset {dataset} --weights FILE --out DIR` (or "
                          "train one) and pass --target DIR")
    with distributed.process_group(device) as dev:
        started = time.perf_counter()
        train_split = list(load(dataset, "train", data_dir))  # dropped once the models exist
        x_test, y_test = load(dataset, "test", data_dir)
        fps = {"train": fingerprint(*train_split), "test": fingerprint(x_test, y_test)}
        user_target = None
        if target_dir:
            user_target = fingerprint(load_checkpoint(target_dir, "model", device="cpu")[0])
        p = run_precision(precision, None if restart else Path(out), dev, spec)
        seed_list = list(range(seed, seed + seeds))
        identity = {"dataset": dataset, "data": fps, "profile": profile,
                    "settings": settings, "seed": seed, "seeds": seed_list,
                    "target": user_target or "trained in models/target",
                    "precision": p, "chunk": default_chunk(dev)}
        job = _Job(dataset=dataset, profile=profile, settings=settings, seeds=seed_list,
                   experiments=[registry.get(n) for n in registry.names() if n in chosen],
                   device=dev, data_dir=data_dir, target_dir=target_dir, fps=fps,
                   identity=identity, log=log, started=started, on_results=on_results)
        with prec.using(p):  # every model and attack of the run computes in p
            return job.run(Path(out), restart, train_split, (x_test, y_test))


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


@dataclass
class _Job:
    """One call of :func:`reproduce` once its identity is known."""

    dataset: str
    profile: str
    settings: dict[str, Any]
    seeds: list[int]
    experiments: list[registry.Experiment]
    device: torch.device
    data_dir: str | None
    target_dir: str | None
    fps: dict[str, str]
    identity: dict[str, Any]
    log: Callable[[str], None]
    started: float
    on_results: Callable[[dict[str, Any], Path], None] | None

    def run(self, out: Path, restart: bool, train_split: list[torch.Tensor],
            test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        rank, world = distributed.rank(), distributed.world_size()
        with RunDir(out, restart=restart and rank == 0, lock=rank == 0) as run:
            # rank 0 checks the directory and trains what is missing; then every rank loads
            target, defenses, attackers = distributed.main_first(
                lambda: self._models(run, rank, world, train_split, test))
            train_split.clear()  # P's training images: dropped once the models exist
            ctx = RunContext(run=run, dataset=self.dataset, profile=self.profile,
                             settings=self.settings, seeds=self.seeds, target=target,
                             defenses=defenses, test=test, device=self.device,
                             data_dir=self.data_dir, fps=self.fps,
                             precision=self.identity["precision"], attackers=attackers,
                             log=self.log)
            if world > 1:
                # each process runs the units of its share of (approach, seed) pairs; rank 0
                # then finds every unit stored and aggregates exactly what one process would
                mine = distributed.strided_share(
                    [(a, s) for a in defenses for s in self.seeds], rank, world)
                part = {a: {s: d for s, d in per.items() if (a, s) in mine}
                        for a, per in defenses.items()}
                part = {a: per for a, per in part.items() if per}
                distributed.everywhere(lambda: self._experiments(ctx.share(part))
                                       if part else None)
                if rank != 0:
                    return {}
            results = self._experiments(ctx)
            atomic_write_json(run.path / "results.json", results)
            wall = time.perf_counter() - self.started
            atomic_write_json(run.path / "timings.json", {
                "wall_time_s": wall, "units_run": run.ran, "units_reused": run.reused,
                "units_recomputed": run.recomputed, "models_reused": run.models_reused,
                "processes": world,
                "attacker_train_seconds": {str(s): a["seconds"] for s, a in attackers.items()}})
            if self.on_results is not None:
                self.on_results(results | {"wall_time_s": wall, "reused": {
                    "units": len(run.reused), "models": len(run.models_reused)}}, run.path)
        return results

    def _models(self, run: RunDir, rank: int, world: int, train_split: list[torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        """M, the defenses and the attacker's models (trained by rank 0, loaded by all)."""
        settings = self.settings
        if rank == 0:
            old = run.check_identity(self.identity) or {}
            asked = {e.name for e in self.experiments}
            done = [n for n in registry.names() if n in set(old.get("experiments", [])) | asked]
            config = {"dataset": self.dataset, "family": get_spec(self.dataset).family,
                      "profile": self.profile, "seed": self.seeds[0], "seeds": self.seeds,
                      "experiments": done, "settings": settings, "identity": self.identity,
                      "target_dir": str(self.target_dir) if self.target_dir else None}
            atomic_write_json(run.path / "config.json", config | {
                "device": str(self.device), "versions": versions(), "processes": world})
        # the approaches the chosen experiments need (the others are trained by a later run
        # that asks for them)
        needed = {a for e in self.experiments for a in e.approaches(settings)}
        need = settings | {"approaches": [a for a in settings["approaches"] if a in needed]}
        target, defenses = prepare_models(run, self.dataset, need, self.seeds, self.device,
                                          self.data_dir, self.target_dir, tuple(train_split),
                                          test, log=self.log)
        attackers = {}
        if any(e.wants_attacker(settings) for e in self.experiments):
            attackers = prepare_attackers(run, self.dataset, settings, self.seeds,
                                          self.device, self.data_dir, tuple(train_split),
                                          log=self.log)
        return target, defenses, attackers

    def _experiments(self, ctx: RunContext) -> dict[str, Any]:
        """Run (or reuse) the units of the chosen experiments on ``ctx``'s defenses and merge
        what they return (meaningful when ``ctx.final``: every approach and seed)."""
        settings = ctx.settings
        results: dict[str, Any] = {"rows": []}
        if ctx.final:
            results |= {
                "dataset": ctx.dataset, "family": settings["family"], "profile": ctx.profile,
                "seed": ctx.seed, "seeds": ctx.seeds, "settings": settings,
                "differences_from_paper": differences_from_paper(settings, ctx.dataset)
                + precision_lines(ctx.precision),
                "precision": ctx.precision, "chunk": default_chunk(ctx.device),
                "clean": _clean(ctx.target, ctx.defenses, ctx.x_test, ctx.y_test),
                "fingerprints": {"data": ctx.fps, "models": ctx.model_fps},
                "versions": versions()}
        outcomes: dict[tuple, dict[str, torch.Tensor]] = {}
        roc: dict[str, Any] = {}
        for exp in self.experiments:
            if not ctx.final and not exp.sharded:
                continue
            res = exp.run(ctx.with_outcomes(outcomes))
            results["rows"] += res.rows
            clash = set(res.sections) & (set(results) | {"rows", "roc", "verdict"})
            if clash:
                raise LuringError(f"experiment {exp.name} returned section(s) "
                                  f"{', '.join(sorted(clash))}, which the run's results "
                                  "already hold; name its sections after the experiment")
            results |= res.sections
            outcomes |= res.outcomes
            for attack, per_eps in res.roc.items():
                for e, per_approach in per_eps.items():
                    roc.setdefault(attack, {}).setdefault(e, {}).update(per_approach)
            if ctx.final:
                results["differences_from_paper"] += exp.departures(settings) + res.departures
        if roc:
            results["roc"] = roc
        if outcomes and ctx.final:
            results["verdict"] = paired_verdict(outcomes, list(VERDICT_ATTACKS), settings["eps"],
                                                list(ctx.defenses), ctx.seeds)
        return results


def _clean(target, defenses, x, y) -> dict[str, Any]:
    """Table 8: test accuracy of M and of each T, agreement (T = M = y), the paper rule's false
    alarms (T ≠ M) and the detector's at each defense's stored operating point (calibrated on
    held-out training images), each with its Wilson interval; several seeds are pooled (and
    their mean, std and per-seed values kept)."""
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
