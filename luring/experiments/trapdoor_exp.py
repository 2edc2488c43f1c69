"""Appendix I: a trapdoored model as the public model (table 20), beside luring.

The threat model is the paper's: the attacker reaches a public model and transfers to M. For
*Trapdoor* the public model is a model of M's architecture trained from scratch with a
trapdoor per label (Shan et al. 2019; :mod:`luring.defense.trapdoor`), for *Luring* it is the
run's T = M∘P. Per ε of the run and per seed, on the first n test images (in the run's seeded
order) that M and every public model classify correctly (``images_correct_for: target``: M
alone), FGSM and the MIM-W grid are crafted on the public model and transferred to M
(:func:`luring.experiments.search.transfer_search`). Rows ``best`` (the setting best for the
adversary, the paper's "optimal" values) and ``worst-case`` (per example) hold AC_MoP (on the
public model), AC_M, DAC, ``detection_rate`` (share of examples flagged) and ``dac_rule``
(the DAC of the other reading below; for Luring it equals DAC).

DAC: for Luring, eq. 4 (caught when T(x') ≠ M(x'), or M right). For Trapdoor the paper does
not define it; here an example counts as caught when the trapdoor's detector flags it
(cosine similarity with its predicted label's signature above the threshold calibrated for 5%
clean false alarms on held-out training images) or M classifies it correctly. Beside it,
``dac_rule`` reads the paper's sentence "a defense similar to ours where the public model is
... the trapdoored model" literally: caught when the trapdoored model's label differs from
M's (eq. 4's rule with the trapdoored model as T), or M right; each reading takes the setting
best for the adversary under it.

Models: ``models/trapdoor-s<seed>`` (a trapdoor defense directory, with ``identity.json``).
Units: ``trapdoor/s<seed>-<trapdoor|luring>-eps<ε>``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from luring.data import get_spec
from luring.defense import build_trapdoor, load_trapdoor
from luring.defense.trapdoor import QUICK_NOTES, resolve_trapdoor_settings, trapdoor_settings
from luring.experiments.common import aggregate, rates_of, unit_seed
from luring.experiments.context import Result, RunContext
from luring.experiments.search import transfer_search
from luring.metrics import rate
from luring.utils import fingerprint, progress

__all__ = ["SUMMARY", "run", "departures", "trapdoor_run_settings", "DAC_DEFINITION", "APPROACHES",
           "SHARDED"]

#: The experiment in one line (the CLI's help).
SUMMARY = ("appendix I: a trapdoored model (Shan et al. 2019) as the public model, beside luring "
           "(table 20)")


#: Of the run's approaches it needs the luring defense only.
APPROACHES = ("luring",)
#: Run only in the final pass (its own models and units).
SHARDED = False

DAC_DEFINITION = ("Trapdoor DAC (not defined in the paper): an adversarial example counts as "
                  "caught when the trapdoor's detector flags it (cosine similarity of its "
                  "penultimate activation with its predicted label's signature above the "
                  "threshold set for 5% false alarms on clean held-out training images) or M "
                  "classifies it correctly; Luring's DAC is eq. 4 (caught when T ≠ M, or M "
                  "right). Beside it, \"DAC, T ≠ M reading\": eq. 4's rule with the trapdoored "
                  "model as T (caught when its label differs from M's, or M right), each "
                  "reading with the setting best for the adversary under it")


def trapdoor_run_settings(settings: dict[str, Any], architecture: str | None = None
                          ) -> dict[str, Any]:
    """The trapdoor settings of a run: the reference code's (paper profile) or the quick
    ones (quick and smoke profiles), M's architecture, then ``trapdoor.settings``."""
    profile = "paper" if settings["profile"] == "paper" else "quick"
    base = trapdoor_settings(settings["family"], profile)
    over = dict(settings["trapdoor"].get("settings") or {})
    if architecture:
        over.setdefault("architecture", architecture)
    return resolve_trapdoor_settings(base, **over)


def _models(ctx: RunContext, ts: dict[str, Any]) -> dict[int, Any]:
    """Train or reuse the trapdoored model of each seed; returns {seed: TrappedModel}."""
    spec = get_spec(ctx.dataset)
    limit = ctx.settings["trapdoor"].get("train_images")
    out: dict[int, Any] = {}
    for s in ctx.seeds:
        ident = {"method": "trapdoor", "seed": s, "dataset": ctx.dataset,
                 "data": ctx.fps["train"], "settings": ts, "train_images": limit}

        def build(d, s=s):
            x_tr, y_tr = ctx.train_split()
            if limit:  # the smoke profile trains on a seeded subset, to keep tests short
                keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(s))
                x_tr, y_tr = x_tr[keep[:limit]], y_tr[keep[:limit]]
            build_trapdoor(d, x_tr, y_tr, (ctx.x_test, ctx.y_test), settings=ts,
                           family=spec.family, dataset=ctx.dataset, classes=list(spec.classes),
                           seed=s, device=ctx.device, desc=f"trapdoor (seed {s})")

        ddir = ctx.run.model(f"trapdoor-s{s}", ident, build, marker="defense.json",
                             announce=lambda s=s: ctx.log(
                                 f"training the trapdoored model (seed {s}) ..."))
        out[s] = load_trapdoor(ddir, device=ctx.device)
    return out


def _clean(trapped: dict[int, Any], seeds: list[int]) -> dict[str, Any]:
    """Each trapdoored model's clean figures (test split, written when it was trained) and
    its held-out calibration, under ``per_seed``; at the top level, the first seed's."""
    per = []
    for s in seeds:
        meta = trapped[s].meta.get("defense") or {}
        c, cal = meta.get("clean") or {}, trapped[s].meta.get("calibration") or {}
        per.append({"seed": s, "n": c.get("n"), "accuracy": c.get("accuracy"),
                    "false_alarm_rate": c.get("false_alarm_rate"),
                    "trapdoor_success": c.get("trapdoor_success"),
                    "trapdoor_success_min": c.get("trapdoor_success_min"),
                    "intervals": c.get("intervals"), "threshold": trapped[s].threshold,
                    "heldout_false_alarm_rate": cal.get("false_alarm_rate"),
                    "heldout_n": cal.get("n"), "target_false_alarm": cal.get("false_alarm_target")})
    return {"per_seed": per} | {k: per[0][k] for k in per[0] if k != "seed"}


def run(ctx: RunContext) -> Result:
    """Train (or reuse) the trapdoored models, run (or reuse) every unit and return section
    ``trapdoor``: ``rows`` (per approach ``trapdoor``/``luring``, attack ``best``/
    ``worst-case`` and ε: ac_mop, ac_m, dac, detection_rate, n, ci), ``clean`` (the
    trapdoored models' clean figures), ``settings`` (resolved trapdoor settings), ``n``,
    ``eps`` and ``dac_definition``. Luring is the run's luring T per seed."""
    lur = ctx.required("luring", "the trapdoor experiment compares with")
    settings, seed, seeds, target = ctx.settings, ctx.seed, ctx.seeds, ctx.target
    cfg = settings["trapdoor"]
    ts = trapdoor_run_settings(settings, ctx.target_architecture())
    trapped = _models(ctx, ts)
    models = [target]
    if settings.get("images_correct_for") == "all":
        models += [t.model for t in trapped.values()] + [d.augmented for d in lur.values()]
    idx = ctx.select(models, int(cfg["n"]),
                     "M and every public model; trapdoor uses {k} instead of {n}")
    x, y = ctx.x_test[idx].to(ctx.device), ctx.y_test[idx]
    ident = {"data": ctx.fps["test"], "indices": idx, "seed": seed,
             "models": {"target": fingerprint(target),
                        "trapdoor": {s: fingerprint(t.model) for s, t in trapped.items()},
                        "threshold": {s: t.threshold for s, t in trapped.items()},
                        "luring": {s: fingerprint(d.augmented) for s, d in lur.items()}}}
    run = ctx.run
    mw = settings["defend"]["mim_w"]
    units: dict[tuple, Any] = {}
    jobs = [(a, s, e) for s in seeds for a in ("trapdoor", "luring") for e in settings["eps"]]
    for a, s, e in progress(jobs, desc="trapdoor", unit="unit"):
        useed = unit_seed(seed, s, a, "trapdoor", e)
        if a == "trapdoor":
            def craft(t=trapped[s], e=e, u=useed):
                return transfer_search(t.model, target, x, y, e, mw, u,
                                       flag=lambda xa: t.detect(xa).flagged)
        else:
            def craft(m=lur[s].augmented, e=e, u=useed):
                return transfer_search(m, target, x, y, e, mw, u)
        units[(a, s, e)] = run.unit("trapdoor", f"s{s}-{a}-eps{e}", craft,
                                    {"run": ident, "params": mw, "eps": e})
    rows = []
    for a in ("trapdoor", "luring"):
        for e in settings["eps"]:
            per: dict[str, list] = {"best": [], "worst-case": []}
            chosen, rule_chosen = [], []
            for s in seeds:
                t, meta = units[(a, s, e)]
                per["best"].append(
                    rates_of(t, "best")
                    | {"detection_rate": rate(t["best_flagged"]),
                       "dac_rule": rate(t["rule_best_defended"])})
                per["worst-case"].append(
                    rates_of(t, "all")
                    | {"dac_rule": rate(t["rule_all_defended"])})
                chosen.append(meta["best"])
                rule_chosen.append(meta["rule_best"])
            rows.append(aggregate("trapdoor", a, "best", e, per["best"],
                                  {"setting": chosen[0], "settings_per_seed": chosen,
                                   "rule_setting": rule_chosen[0]}, seeds=seeds))
            rows.append(aggregate("trapdoor", a, "worst-case", e, per["worst-case"],
                                  seeds=seeds))
    return Result(sections={"trapdoor": {
        "eps": list(settings["eps"]), "n": len(idx), "rows": rows,
        "clean": _clean(trapped, seeds), "settings": ts, "dac_definition": DAC_DEFINITION}})


def departures(settings: dict[str, Any]) -> list[str]:
    """The trapdoor experiment's departures from appendix I (table 20) and from the
    reference code of Shan et al. (``Shawn-Shan/trapdoor``) that the paper says it used."""
    fam, cfg = settings["family"], settings["trapdoor"]
    ts = trapdoor_run_settings(settings)
    ref = trapdoor_settings(fam, "paper")
    keys = ("clean_epochs", "trap_epochs", "batch_size", "lr", "lr_milestones", "inject_ratio",
            "squares", "square_size", "mask_ratio", "false_alarm", "dropout")
    diffs = [f"{k} {_value(ts[k])} (reference: {_value(ref[k])})" for k in keys
             if ts[k] != ref[k]]
    out = []
    if diffs:
        out.append("trapdoored model trained with " + "; ".join(diffs))
    if settings["profile"] != "paper" and not cfg.get("settings") and fam == "mnist":
        out.append(f"trapdoor {QUICK_NOTES}")
    if cfg.get("train_images"):
        out.append(f"trapdoored model trained on {cfg['train_images']} training images only")
    out.append("trapdoor (appendix I gives no settings; the reference code's, see "
               "luring.defense.trapdoor): the last epoch is kept (reference: the epoch of best "
               "trapdoor success above a clean-accuracy floor, chosen on its test images); the "
               f"signatures and the threshold come from the {100 * ts['val_fraction']:g}% of "
               "the training images held out (reference: signatures from all training images)")
    out.append(f"table 20 on the first {cfg['n']} test images that M"
               + (", the trapdoored model and the luring T all"
                  if settings.get("images_correct_for") == "all" else " alone")
               + " classif" + ("y" if settings.get("images_correct_for") == "all" else "ies")
               + " correctly (paper: not stated); the optimal values are the setting "
               "best for the adversary among FGSM and the defend experiment's MIM-W grid; the "
               "per-example worst case beside them is not in the paper")
    out.append(DAC_DEFINITION)
    return out


def _value(v: Any) -> str:
    """A setting's value for a disclosure line: numbers with ``%g``, the rest as JSON."""
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else \
        json.dumps(v)
