"""``reproduce``: train (or reuse) M and the four P, run every experiment, write the report.

Layout of a run directory::

    config.json          the fully resolved settings (profile, data set, seeds, device)
    results.json         every figure of the report, machine-readable (deterministic)
    timings.json         wall times (kept out of results.json so that reruns compare equal)
    table_*.csv          the report's tables
    report.md, *.png     the human report and its figures
    models/target/       M (train-target layout)
    models/<approach>-s<seed>/   each defense (train-defense layout)
    units/<experiment>/  one file per finished unit (see store.py)

Everything is resumable: a rerun with the same command skips finished models and units.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from luring.data import get_spec, load
from luring.errors import LuringError
from luring.experiments.analysis import run_distortion, run_logits, run_saliency
from luring.experiments.characterize import run_characterize
from luring.experiments.common import select_images
from luring.experiments.defend import run_defend
from luring.experiments.models import prepare_models
from luring.experiments.profiles import EXPERIMENTS, differences_from_paper, resolve_profile
from luring.experiments.store import RunDir
from luring.metrics import agreement, clean_accuracy, false_alarm_rate
from luring.utils import atomic_write_json, resolve_device, versions

__all__ = ["reproduce", "EXPERIMENTS"]



def reproduce(dataset: str, out: str | Path, *, profile: str = "quick", seed: int = 0,
              seeds: int = 1, device: str = "auto", data_dir: str | None = None,
              experiments: tuple[str, ...] = EXPERIMENTS, target_dir: str | None = None,
              log=print) -> dict[str, Any]:
    """Run the paper's protocol on ``dataset`` into ``out`` and return the results dict.

    ``seeds`` > 1 trains each P with seeds ``seed, seed+1, ...`` and reports mean ± std.
    ``target_dir`` reuses a trained M (a ``train-target`` directory) instead of training one.
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
    with RunDir(out) as run:
        config = {"dataset": dataset, "family": spec.family, "profile": profile, "seed": seed,
                  "seeds": seed_list, "experiments": list(experiments), "settings": settings,
                  "target_dir": str(target_dir) if target_dir else None}
        run.check_settings(settings)
        atomic_write_json(run.path / "config.json", config | {"device": str(dev),
                                                                "versions": versions()})
        x_test, y_test = load(dataset, "test", data_dir)
        target, defenses = prepare_models(run, dataset, settings, seed_list, dev, data_dir,
                                          target_dir, (x_test, y_test), log=log)
        first = {a: per_seed[seed_list[0]] for a, per_seed in defenses.items()}
        results: dict[str, Any] = {
            "dataset": dataset, "family": spec.family, "profile": profile, "seed": seed,
            "seeds": seed_list, "settings": settings,
            "differences_from_paper": differences_from_paper(settings, dataset),
            "clean": _clean(target, defenses, x_test, y_test), "rows": [],
            "versions": versions(),
        }
        all_models = [target]
        if settings["images_correct_for"] == "all":
            all_models += [d.augmented for per in defenses.values() for d in per.values()]

        # Test images every model classifies correctly, in the run's seeded order: predicted
        # once here, each experiment takes the first n.
        eligible = select_images(x_test, y_test, all_models, len(x_test), seed)

        def images(n: int, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
            idx = eligible[:n]
            if len(idx) < n:
                log(f"note: only {len(idx)} test images are classified correctly by every "
                    f"model; {tag} uses {len(idx)} instead of {n}")
            return x_test[idx].to(dev), y_test[idx].to(dev)

        if "characterize" in experiments:
            x, y = images(settings["characterize"]["n"], "characterize")
            results["rows"] += run_characterize(run, target, defenses, x, y.cpu(), settings, seed)
        if "defend" in experiments:
            x, y = images(settings["defend"]["n"], "defend")
            results["rows"] += run_defend(run, target, defenses, x, y.cpu(), settings, seed)
        if "distortion" in experiments:
            x, y = images(settings["distortion"]["n"], "distortion")
            results["distortion"] = run_distortion(run, target, first, x, y.cpu(), settings,
                                                   seed)
        if "logits" in experiments:
            x, _ = images(settings["logits"]["n"], "logits")
            results["logits"] = run_logits(run, target, first, x, settings)
        if "saliency" in experiments:
            x, y = images(settings["saliency"]["n"], "saliency")
            run_saliency(run, target, first, x, y)
            results["saliency"] = {"unit": "units/saliency/all.safetensors"}
        atomic_write_json(run.path / "results.json", results)
        wall = time.perf_counter() - started
        atomic_write_json(run.path / "timings.json", {
            "wall_time_s": wall, "units_run": run.ran, "units_reused": run.reused})
        from luring.report import render_report

        render_report(results | {"wall_time_s": wall}, run.path)
    return results


def _clean(target, defenses, x, y) -> dict[str, Any]:
    """Table 8: test accuracy of M and of each T, agreement (T = M = y), false alarms."""
    from luring.experiments.common import mean_std
    from luring.models import predict_labels

    m = predict_labels(target, x)
    out: dict[str, Any] = {"target": {"accuracy": clean_accuracy(m, y).value, "n": len(y)}}
    for a, per_seed in defenses.items():
        vals = []
        for d in per_seed.values():
            t = predict_labels(d.augmented, x)
            vals.append({"accuracy": clean_accuracy(t, y).value,
                         "agreement": agreement(t, m, y).value,
                         "false_alarm_rate": false_alarm_rate(t, m).value})
        row: dict[str, Any] = {k: mean_std([v[k] for v in vals])[0] for k in vals[0]}
        row["n"] = len(y)
        if len(vals) > 1:
            for k in ("accuracy", "agreement"):
                row[f"{k}_std"] = mean_std([v[k] for v in vals])[1]
        out[a] = row
    return out
