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

Everything is resumable: a rerun with the same command skips finished models and units. A
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

from luring.data import get_spec, load
from luring.errors import LuringError
from luring.experiments.adaptive import run_adaptive
from luring.experiments.analysis import run_distortion, run_logits, run_saliency
from luring.experiments.characterize import run_characterize
from luring.experiments.common import select_images
from luring.experiments.defend import run_defend
from luring.experiments.diagnostics import paired_verdict, run_diagnostics
from luring.experiments.models import prepare_models
from luring.experiments.profiles import EXPERIMENTS, differences_from_paper, resolve_profile
from luring.experiments.store import RunDir
from luring.metrics import agreement, clean_accuracy, false_alarm_rate, rate
from luring.utils import atomic_write_json, fingerprint, resolve_device, versions

__all__ = ["reproduce", "EXPERIMENTS"]



def reproduce(dataset: str, out: str | Path, *, profile: str = "quick", seed: int = 0,
              seeds: int = 1, device: str = "auto", data_dir: str | None = None,
              experiments: tuple[str, ...] = EXPERIMENTS, target_dir: str | None = None,
              restart: bool = False, log=print) -> dict[str, Any]:
    """Run the paper's protocol on ``dataset`` into ``out`` and return the results dict.

    ``seeds`` > 1 trains each P with seeds ``seed, seed+1, ...`` and reports, per row, the
    value pooled over every seed's examples (with its interval), the mean and sample std over
    seeds and the per-seed values. ``target_dir`` reuses a trained M (a ``train-target``
    directory) instead of training one. ``restart`` clears ``out`` first.
    """
    unknown = set(experiments) - set(EXPERIMENTS)
    if unknown:
        raise LuringError(f"unknown experiment(s) {sorted(unknown)}; choose from {EXPERIMENTS}")
    if seeds < 1:
        raise LuringError(f"--seeds must be ≥ 1, got {seeds}")
    spec = get_spec(dataset)
    settings = resolve_profile(profile, spec.family)
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
    identity = {"dataset": dataset, "data": fps, "profile": profile, "settings": settings,
                "seed": seed, "seeds": seed_list,
                "target": user_target or "trained in models/target"}
    with RunDir(out, restart=restart) as run:
        old = run.check_identity(identity) or {}
        done = [e for e in EXPERIMENTS if e in set(old.get("experiments", [])) | set(experiments)]
        config = {"dataset": dataset, "family": spec.family, "profile": profile, "seed": seed,
                  "seeds": seed_list, "experiments": done, "settings": settings,
                  "target_dir": str(target_dir) if target_dir else None, "identity": identity}
        atomic_write_json(run.path / "config.json", config | {"device": str(dev),
                                                                "versions": versions()})
        target, defenses = prepare_models(run, dataset, settings, seed_list, dev, data_dir,
                                          target_dir, (x_train, y_train), (x_test, y_test),
                                          log=log)
        del x_train, y_train
        model_fps = {"target": fingerprint(target)} | {
            a: {s: fingerprint(d.augmented) for s, d in per.items()}
            for a, per in defenses.items()}
        first = {a: per_seed[seed_list[0]] for a, per_seed in defenses.items()}
        results: dict[str, Any] = {
            "dataset": dataset, "family": spec.family, "profile": profile, "seed": seed,
            "seeds": seed_list, "settings": settings,
            "differences_from_paper": differences_from_paper(settings, dataset),
            "clean": _clean(target, defenses, x_test, y_test), "rows": [],
            "fingerprints": {"data": fps, "models": model_fps},
            "versions": versions(),
        }
        all_models = [target]
        if settings["images_correct_for"] == "all":
            all_models += [d.augmented for per in defenses.values() for d in per.values()]

        # Test images every model classifies correctly, in the run's seeded order: predicted
        # once here, each experiment takes the first n.
        eligible = select_images(x_test, y_test, all_models, len(x_test), seed)

        def images(n: int, tag: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            """The first n eligible test images, their labels, and what identifies them
            (test split fingerprint and indices) with the run seed and model fingerprints,
            for the units' identities."""
            idx = eligible[:n]
            if len(idx) < n:
                log(f"note: only {len(idx)} test images are classified correctly by every "
                    f"model; {tag} uses {len(idx)} instead of {n}")
            ident = {"data": fps["test"], "indices": idx, "seed": seed, "models": model_fps}
            return x_test[idx].to(dev), y_test[idx].to(dev), ident

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
            attacked = set(eligible[:settings["defend"]["n"]].tolist())
            order = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(seed))
            pool_idx = torch.tensor([i for i in order.tolist() if i not in attacked]
                                    [:settings["adaptive"]["substitute"]["pool"]])
            rows, adaptive_outcomes = run_adaptive(run, target, defenses, x, y.cpu(),
                                                   x_test[pool_idx], settings, seed,
                                                   ident | {"pool": pool_idx}, roc)
            results["rows"] += rows
            outcomes |= adaptive_outcomes
            results["diagnostics"] = run_diagnostics(run, target, defenses, x, y.cpu(),
                                                     settings, seed, ident)
        if roc:
            results["roc"] = roc
        if outcomes:
            results["verdict"] = paired_verdict(
                outcomes, ["mim-w", "worst-case", "adaptive-w", "adaptive-worst", "substitute"],
                settings["eps"], list(defenses), seed_list)
        if "distortion" in experiments:
            x, y, ident = images(settings["distortion"]["n"], "distortion")
            results["distortion"] = run_distortion(run, target, first, x, y.cpu(), settings,
                                                   seed, ident)
        if "logits" in experiments:
            x, _, ident = images(settings["logits"]["n"], "logits")
            results["logits"] = run_logits(run, target, first, x, settings, ident)
        if "saliency" in experiments:
            x, y, ident = images(settings["saliency"]["n"], "saliency")
            run_saliency(run, target, first, x, y, ident)
            results["saliency"] = {"unit": "units/saliency/all.safetensors"}
        atomic_write_json(run.path / "results.json", results)
        wall = time.perf_counter() - started
        atomic_write_json(run.path / "timings.json", {
            "wall_time_s": wall, "units_run": run.ran, "units_reused": run.reused,
            "units_recomputed": run.recomputed})
        from luring.report import render_report

        render_report(results | {"wall_time_s": wall}, run.path)
    return results


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
                                                "heldout_fpr", "n")})
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
