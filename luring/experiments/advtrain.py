"""Appendix H.2: luring on an adversarially trained M (tables 18 and 19).

*AdvTrain* is M trained with PGD adversarial training (H.2: MNIST ε 0.3, 40 steps of 0.1;
SVHN and CIFAR10 ε 0.03, 10 steps of 0.008; a profile may cut steps and epochs, see
``settings["advtrain"]["target"]``) on the run's training split with the run's M settings;
*AdvTrain–Luring* is its luring T, whose P is trained exactly as the run's own (same
settings, seeds and images). *Base* and *Base–Luring* are the run's M and luring T.

* Table 18: test accuracy of the four models on the whole test split, and the agreement
  (T = M = y) of each T with its M, each with its Wilson interval.
* Table 19, per ε of ``settings["advtrain"]["eps"]`` (table 19's: 0.3 for MNIST, 0.03 for
  SVHN and CIFAR10), on the first n test images (in the run's seeded order) that all four
  models classify correctly (``images_correct_for: target``: both M): ``whitebox`` =
  AC_M,wb, M's accuracy under white-box PGD on M (40 steps of 0.01); ``mim-w`` = AC_MoP, AC_M
  and DAC of the examples crafted on T and transferred to M, the setting best for the
  adversary among FGSM and the MIM-W grid (:mod:`luring.experiments.search`);
  ``worst-case`` = the per-example worst case over FGSM, the MIM-W grid and the adaptive
  family (margin loss, BPDA, transfer attacks; :mod:`luring.experiments.adaptive`).

Models: ``models/advtrain-target`` (train-target layout) and
``models/advtrain-luring-s<seed>`` (train-defense layout), each with ``identity.json``.
Units: ``advtrain/whitebox-<base|advtrain>-eps<ε>``, ``advtrain/s<seed>-<base|advtrain>-
luring-<mim-w|adaptive>-eps<ε>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from luring.attacks import PGD
from luring.data import get_spec
from luring.defense import load as load_defense
from luring.errors import LuringError
from luring.experiments.common import aggregate, rates, rates_of, unit_seed
from luring.experiments.context import Result, RunContext
from luring.experiments.family import family_unit
from luring.experiments.models import load_frozen, train_defense_dir
from luring.experiments.paper import PAPER, num
from luring.experiments.search import transfer_search
from luring.metrics import agreement, clean_accuracy, rate
from luring.models import predict_labels
from luring.models.train import target_settings, train_target_run
from luring.utils import fingerprint, progress

__all__ = ["SUMMARY", "run", "departures", "advtrain_target_settings", "MODELS", "APPROACHES",
           "SHARDED"]

#: The experiment in one line (the CLI's help).
SUMMARY = "appendix H.2: luring on an adversarially trained M (tables 18 and 19)"


#: Of the run's approaches it needs the luring defense only.
APPROACHES = ("luring",)
#: Run only in the final pass (its own models and units).
SHARDED = False

#: Table 18's rows: (key, M's key, T's key or None).
MODELS = (("base", "base", None), ("base-luring", "base", "base"),
          ("advtrain", "advtrain", None), ("advtrain-luring", "advtrain", "advtrain"))


def advtrain_target_settings(settings: dict[str, Any], architecture: str | None = None):
    """AdvTrain's :class:`~luring.models.train.TargetSettings`: the run's M settings (and M's
    ``architecture`` when given) with H.2's adversarial training, then the profile's
    ``advtrain.target`` overrides."""
    over = dict(settings.get("target") or {}) | dict(settings["advtrain"].get("target") or {})
    if architecture:
        over.setdefault("architecture", architecture)
    return target_settings(settings["family"], adv_train=True, **over)


def _models(ctx: RunContext, ts: Any) -> tuple[torch.nn.Module, dict[str, Any], dict]:
    """Train or reuse AdvTrain and its luring defense per seed; returns (M_adv, its sidecar,
    {seed: Defense})."""
    run, dataset, settings, device = ctx.run, ctx.dataset, ctx.settings, ctx.device
    spec = get_spec(dataset)
    t_ident = {"dataset": dataset, "data": ctx.fps["train"], "settings": ts.to_dict(),
               "seed": ctx.seed}

    def train_m(d: Path) -> None:
        ctx.train_split()  # the same check before a long training
        train_target_run(dataset, d, ts, seed=ctx.seed, device=device, data_dir=ctx.data_dir)

    tdir = run.model("advtrain-target", t_ident, train_m, marker="model.json", announce=lambda:
                     ctx.log(f"training the adversarially trained M (PGD ε = {ts.adv_eps:g}, "
                             f"{ts.adv_steps} step(s) of {ts.adv_step_size:g}) ..."))
    target, meta = load_frozen(tdir, device)
    target_fp = fingerprint(target)
    defenses = {}
    for s in ctx.seeds:
        d_ident = {"method": "luring", "seed": s, "dataset": dataset, "data": ctx.fps["train"],
                   "profile": settings["profile"], "settings": settings["defense"],
                   "train_images": settings.get("defense_train_images"), "target": target_fp}
        ddir = run.model(
            f"advtrain-luring-s{s}", d_ident, lambda d, s=s: train_defense_dir(
                target, meta, tdir, d, "luring", spec, settings, s, device,
                (*ctx.train_split(), ctx.x_test, ctx.y_test)),
            marker="defense.json", announce=lambda s=s: ctx.log(
                f"training the luring defense of the adversarially trained M (seed {s}) ..."))
        d = load_defense(ddir, device=device, augmented=True)
        if fingerprint(d.target) != target_fp:
            raise LuringError(f"{ddir} holds a defense trained for another M; use another "
                              "--out, or --restart")
        defenses[s] = d
    return target, meta, defenses


def _job(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn(*args)``, later (a unit's computation)."""
    return lambda: fn(*args)


def _whitebox(target: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
              cfg: dict[str, Any], seed: int):
    """AC_M,wb: PGD on M itself (random start, ``cfg`` steps of ``cfg`` step size)."""
    atk = PGD(target, eps=eps, steps=int(cfg["steps"]), alpha=float(cfg["step_size"]),
              seed=seed)
    x_adv = atk(x, y.to(x.device))
    return {"m_ok": predict_labels(target, x_adv) == y}, {"params": atk.params()}


def _clean(base: torch.nn.Module, luring: dict, adv: torch.nn.Module, adv_luring: dict,
           x: torch.Tensor, y: torch.Tensor, seeds: list[int]) -> list[dict[str, Any]]:
    """Table 18 rows on the whole test split (several seeds of a T are pooled)."""
    m_pred = {"base": predict_labels(base, x), "advtrain": predict_labels(adv, x)}
    ts = {"base": luring, "advtrain": adv_luring}
    rows = []
    for key, m, t in MODELS:
        if t is None:
            per = [{"accuracy": clean_accuracy(m_pred[m], y)}]
            row = aggregate("advtrain", key, "clean", None, per, seeds=seeds[:1])
        else:
            per = []
            for s in seeds:
                tp = predict_labels(ts[t][s].augmented, x)
                per.append({"accuracy": clean_accuracy(tp, y),
                            "agreement": agreement(tp, m_pred[m], y)})
            row = aggregate("advtrain", key, "clean", None, per, seeds=seeds)
        rows.append({k: v for k, v in row.items() if v is not None or k in (
            "accuracy", "agreement")} | {"model": key})
    return rows


def run(ctx: RunContext) -> Result:
    """Train (or reuse) AdvTrain and AdvTrain–Luring, run (or reuse) every unit and return
    section ``advtrain``: ``table18`` (rows per model: accuracy, agreement, n, ci),
    ``table19`` (rows per (approach, attack, ε): ac_mop, ac_m, dac, n, ci; approach
    ``base``/``advtrain`` for the white-box rows, ``base-luring``/``advtrain-luring`` for the
    transfer rows), ``target`` (AdvTrain's settings and test accuracy), ``eps``, ``n``.
    Base–Luring is the run's luring T per seed."""
    base_luring = ctx.required("luring", "the advtrain experiment needs")
    settings, seed, seeds, target = ctx.settings, ctx.seed, ctx.seeds, ctx.target
    cfg = settings["advtrain"]
    ts_adv = advtrain_target_settings(settings, ctx.target_architecture())
    adv, adv_meta, adv_luring = _models(ctx, ts_adv)
    models = [target, adv]
    if settings.get("images_correct_for") == "all":
        models += [d.augmented for per in (base_luring, adv_luring) for d in per.values()]
    idx = ctx.select(models, int(cfg["n"]),
                     "the four models; advtrain uses {k} instead of {n}")
    x, y = ctx.x_test[idx].to(ctx.device), ctx.y_test[idx]
    ident = {"data": ctx.fps["test"], "indices": idx, "seed": seed,
             "models": {"base": fingerprint(target), "advtrain": fingerprint(adv),
                        "base-luring": {s: fingerprint(d.augmented)
                                        for s, d in base_luring.items()},
                        "advtrain-luring": {s: fingerprint(d.augmented)
                                            for s, d in adv_luring.items()}}}
    run = ctx.run
    ms = {"base": target, "advtrain": adv}
    ts = {"base": base_luring, "advtrain": adv_luring}
    mw, ad, wb = settings["defend"]["mim_w"], settings["adaptive"], cfg["whitebox"]
    units: dict[tuple, Any] = {}
    jobs = [("whitebox", m, None, e) for m in ms for e in cfg["eps"]]
    jobs += [(kind, m, s, e) for m in ms for s in seeds for e in cfg["eps"]
             for kind in ("mim-w", "adaptive")]
    for kind, m, s, e in progress(jobs, desc="advtrain", unit="unit"):
        u = unit_seed(seed, s, m, "advtrain", kind, e)
        if kind == "whitebox":
            key, params = f"whitebox-{m}-eps{e}", wb
            fn = _job(_whitebox, ms[m], x, y, e, wb, u)
        elif kind == "mim-w":
            key, params = f"s{s}-{m}-luring-mim-w-eps{e}", mw
            fn = _job(transfer_search, ts[m][s].augmented, ms[m], x, y, e, mw, u)
        else:
            key, params = f"s{s}-{m}-luring-adaptive-eps{e}", ad
            fn = _job(family_unit, ts[m][s].augmented, ms[m], x, y, e, ad, u)
        units[(kind, m, s, e)] = run.unit("advtrain", key, fn,
                                          {"run": ident, "params": params, "eps": e})
    rows = []
    for m in ms:
        for e in cfg["eps"]:
            t, meta = units[("whitebox", m, None, e)]
            rows.append(aggregate("advtrain", m, "whitebox", e, [{"ac_m": rate(t["m_ok"])}],
                                  {"params": meta["params"]}, seeds=seeds[:1]))
            per_w, per_a, chosen = [], [], []
            for s in seeds:
                t, meta = units[("mim-w", m, s, e)]
                per_w.append(rates_of(t, "best"))
                chosen.append(meta["best"])
                a, _ = units[("adaptive", m, s, e)]
                # per example, the worst over FGSM, the MIM-W grid and the adaptive family
                per_a.append(rates(*(t[f"all_{k}"] & a[f"all_{k}"]
                                     for k in ("t_ok", "m_ok", "defended"))))
            rows.append(aggregate("advtrain", f"{m}-luring", "mim-w", e, per_w,
                                  {"setting": chosen[0], "settings_per_seed": chosen},
                                  seeds=seeds))
            rows.append(aggregate("advtrain", f"{m}-luring", "worst-case", e, per_a,
                                  seeds=seeds))
    return Result(sections={"advtrain": {
        "eps": list(cfg["eps"]), "n": len(idx),
        "table18": _clean(target, base_luring, adv, adv_luring, ctx.x_test, ctx.y_test, seeds),
        "table19": rows,
        "target": {"settings": ts_adv.to_dict(), "test_accuracy": adv_meta.get("test_accuracy"),
                   "directory": str(Path("models") / "advtrain-target")}}})


def departures(settings: dict[str, Any]) -> list[str]:
    """The advtrain experiment's departures from appendix H.2 (tables 18, 19)."""
    fam, cfg = settings["family"], settings["advtrain"]
    ts = advtrain_target_settings(settings)
    want = PAPER["adv_train"][fam]
    out = []
    if (ts.adv_eps, ts.adv_steps, ts.adv_step_size) != want:
        steps = f"{ts.adv_steps} step{'s' if ts.adv_steps != 1 else ''}"
        out.append(f"AdvTrain (H.2): M adversarially trained with PGD ε = {num(ts.adv_eps)}, "
                   f"{steps} of {num(ts.adv_step_size)} (H.2: ε = {num(want[0])}, {want[1]} "
                   f"steps of {num(want[2])})")
    if ts.adv_ramp_epochs:
        out.append(f"AdvTrain: the training PGD's ε rises linearly from 0 to {num(ts.adv_eps)} "
                   f"over the first {num(ts.adv_ramp_epochs)} epoch(s), its step in proportion "
                   "(not in H.2: a curriculum, without which a short run stays at chance level)")
    paper_epochs = PAPER["target"][fam]["epochs"]
    if ts.epochs != paper_epochs or ts.max_steps is not None:
        cut = f", at most {ts.max_steps} optimisation steps" if ts.max_steps is not None else ""
        out.append(f"AdvTrain trained {ts.epochs} epoch(s){cut} (H.2 gives no length; the "
                   f"base M's appendix A: {paper_epochs} epochs)")
    wb = cfg["whitebox"]
    if (int(wb["steps"]), float(wb["step_size"])) != (40, 0.01):
        out.append(f"AC_M,wb: white-box PGD {wb['steps']} steps of {num(wb['step_size'])} "
                   "(H.2: 40 steps of 0.01)")
    out.append(f"tables 18-19: AdvTrain–Luring's P trained with the run's luring settings and "
               f"seeds; table 19 on the first {cfg['n']} test images (paper: not stated) that "
               + ("Base, Base–Luring, AdvTrain and AdvTrain–Luring all"
                  if settings.get("images_correct_for") == "all" else "Base and AdvTrain")
               + " classify correctly; its MIM-W values are the setting best for the adversary "
               "among FGSM and the defend experiment's MIM-W grid (table 19's caption: FGSM, "
               "MIM, DIM, MIM-TI, DIM-TI); the per-example worst case beside them (over those "
               "and the adaptive family) is not in the paper")
    return out
