"""Adaptive evaluation: attacks that really break T, and the luring effect measured on them.

The paper's threat model grants the attacker T's gradients (MIM-W). A fair evaluation grants
the best use of them (Athalye et al. 2018; Carlini et al. 2019; Tramèr et al. 2020), plus an
attacker who only queries T. Per approach and ε, on the same test images as ``defend``:

* ``adaptive-w``: the single setting best for the adversary (lowest DAC, then AC_M) over the
  enlarged family: MIM-W's grid plus NI-FGSM, SI-NI-FGSM, VMI-FGSM and VNI-FGSM, each with the
  cross-entropy and the logit-margin loss (cap ``kappa``), each with T's own gradient and with
  the gradient passed straight through T's saturating layers (BPDA);
* ``adaptive-worst``: the per-example worst case over that whole family;
* ``substitute``: Papernot et al.'s attacker, who labels a pool of other test images with T's
  answers, trains a substitute (the family's M architecture, a fresh seed), optionally grows
  the pool by Jacobian augmentation, and runs the MIM-W grid on the substitute.

Each row holds AC_MoP, AC_M, DAC, ``ac_m_given_fooled`` (M's accuracy on the examples that fool
T), n and intervals. Beside them: the ``public`` rows (:mod:`luring.experiments.public`), the
``all-worst`` rows (the per-example worst case over every attack of the run, with the defend
experiment's when it ran) and the gradient-masking diagnostics per approach
(:mod:`luring.experiments.diagnostics`). The attacks' computations are
:mod:`luring.experiments.family`.

Units: ``adaptive/s<seed>-<approach>-eps<ε>`` and ``adaptive/s<seed>-<approach>-substitute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from luring.attacks import worst_case_search
from luring.attacks.substitute import train_substitute
from luring.experiments.common import aggregate, rates, unit_seed
from luring.experiments.context import Result, RunContext
from luring.experiments.detection import clean_scores, op_rates, pooled_roc
from luring.experiments.diagnostics import run_diagnostics
from luring.experiments.family import (
    KEYS,
    better,
    booleans,
    breakdown,
    family_unit,
)
from luring.experiments.profiles import attack_steps, mimw_settings
from luring.experiments.public import run_public
from luring.models import default_architectures, predict_labels
from luring.utils import fingerprint, progress

__all__ = ["SUMMARY", "run", "departures", "wants_attacker", "every_attack_rows",
           "ALL_WORST_PARTS"]

#: The experiment in one line (the CLI's help).
SUMMARY = ("adaptive evaluation (not in the paper): the enlarged attack family with margin "
           "loss and BPDA, a substitute-model attacker, gradient-masking checks and the "
           "paired verdict")



def wants_attacker(settings: dict[str, Any]) -> bool:
    """Does the experiment use the attacker's own model S (ensembles, public row)?"""
    att = settings.get("adaptive", {}).get("attacker") or {}
    return bool(att.get("ensemble") or att.get("public"))


def _substitute_unit(model, target, x, y, pool, settings, cfg, seed):
    """Train a substitute of T on ``pool`` (T's answers), then, per ε, the MIM-W grid on the
    substitute judged on T and M: best setting's booleans and the worst case."""
    sc = cfg["substitute"]
    arch = default_architectures(settings["family"], tuple(pool.shape[1:]))[0]
    sub = train_substitute(model, pool, arch=arch,
                           labels=sc["labels"], epochs=sc["epochs"], rounds=sc["rounds"],
                           lam=sc["lam"], batch_size=sc["batch_size"], lr=sc["lr"],
                           seed=seed)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"queries": sub.queries, "pool": sub.pool_size,
                            "agreement": sub.agreement, "params": sub.params,
                            "history": sub.history, "best": {}}
    for e in settings["eps"]:
        best, best_setting, every = None, None, None
        for s in mimw_settings(cfg):
            steps, alpha = attack_steps(cfg, e)
            res = worst_case_search(sub.model, target, x, y, e, steps=steps, mu=cfg["mu"],
                                    alpha=alpha, settings=[s], seed=seed, progress=False)
            x_adv = res.best_x_adv
            out = booleans(predict_labels(model, x_adv), predict_labels(target, x_adv), y)
            if better(out, best):
                best, best_setting = out, {"attack": res.best.attack} | res.best.params
            every = out if every is None else {k: every[k] & out[k] for k in every}
        tensors |= {f"eps{e}_best_{k}": v for k, v in best.items()}
        tensors |= {f"eps{e}_all_{k}": v for k, v in every.items()}
        meta["best"][str(e)] = best_setting
    return tensors, meta


#: Attacks whose per-example outcomes make the worst case over every attack of a run.
ALL_WORST_PARTS = ("worst-case", "adaptive-worst", "substitute")


def every_attack_rows(outcomes: Mapping[tuple, dict[str, torch.Tensor]], approaches: list[str],
                      eps_values: list[float], seeds: list[int]) -> Result:
    """``all-worst``: per approach and ε, the per-example worst case over every attack the
    run crafted on T or on T's answers for the same images (defend's MIM-W grid and query
    attacks, the adaptive family with its transforms and T+S ensembles, the substitute): an
    example is defended only if it survives all of them. The ``public`` rows (crafted on the
    attacker's own model alone) are left out: luring does not claim to address them. Each
    row's ``broken_by`` breaks it down by those three parts. Returns the rows (experiment
    ``adaptive``) and the outcomes ``(seed, approach, "all-worst", ε)`` (for the paired
    verdict)."""
    res = Result()
    for a in approaches:
        for e in eps_values:
            per, named = [], {}
            for s in seeds:
                parts = [outcomes[(s, a, k, e)] for k in ALL_WORST_PARTS
                         if (s, a, k, e) in outcomes]
                if len(parts) < 2:
                    break
                b = {k: torch.stack([p[k].bool().reshape(-1).cpu() for p in parts]).all(0)
                     for k in ("t_ok", "m_ok", "defended")}
                res.outcomes[(s, a, "all-worst", e)] = b
                per.append(rates(**b, given_fooled=True))
                for k in ALL_WORST_PARTS:
                    if (s, a, k, e) in outcomes:
                        named.setdefault(k, []).append(outcomes[(s, a, k, e)])
            if len(per) == len(seeds) and per:
                res.rows.append(aggregate("adaptive", a, "all-worst", e, per,
                                          {"broken_by": breakdown(named)}, seeds=seeds))
    return res


def run(ctx: RunContext) -> Result:
    """Run (or reuse) every adaptive unit on the defend experiment's images (the first
    ``defend.n`` eligible); the substitute attacker's pool is other test images (never
    attacked), in the run's seeded order.

    Returns the rows (``adaptive-w``, ``adaptive-worst``, ``substitute``, ``public``,
    ``all-worst``), the per-example booleans ``{(seed, approach, attack, ε): {"t_ok", "m_ok",
    "defended"}}`` for the paired verdict, ``roc["adaptive-w"][str(ε)][approach]`` and the
    section ``diagnostics``. ``adaptive-w`` rows also hold the detector's
    ``detection_rate`` and ``dac_op`` at the stored operating point and its AUROC. With the
    attacker's model S (``ctx.attackers``) the T+S ensembles join the family and the
    ``public`` rows are added; ``adaptive-worst`` rows hold ``broken_by``
    (:func:`~luring.experiments.family.breakdown` of the family, transforms and ensemble
    parts)."""
    settings, seed, target, defenses = ctx.settings, ctx.seed, ctx.target, ctx.defenses
    cfg = settings["adaptive"]
    n = settings["defend"]["n"]
    x, y, ident = ctx.images(n, "adaptive")
    y = y.cpu()
    attacked = set(ctx.eligible[:n].tolist())
    order = torch.randperm(len(ctx.x_test), generator=torch.Generator().manual_seed(seed))
    pool_idx = torch.tensor([i for i in order.tolist() if i not in attacked]
                            [:cfg["substitute"]["pool"]])
    pool = ctx.x_test[pool_idx]
    ident_pool = ident | {"pool": pool_idx}  # the units' images: the attacked and the pool
    fam: dict[tuple, tuple] = {}
    subs: dict[tuple, tuple] = {}
    for s, a, e in progress([(s, a, e) for s, a in ctx.pairs() for e in ctx.eps],
                            desc="adaptive", unit="unit"):
        model = defenses[a][s].augmented
        useed = unit_seed(seed, s, a, "adaptive", e)
        sm = ctx.attackers.get(s, {}).get("model")

        def craft(m=model, e=e, u=useed, sm=sm):
            return family_unit(m, target, x, y, e, cfg, u, sm)

        key = {"run": ident_pool, "params": cfg, "eps": settings["eps"]}
        if sm is not None:
            key["attacker"] = fingerprint(sm)
        fam[(s, a, e)] = ctx.run.unit("adaptive", f"s{s}-{a}-eps{e}", craft, key)
    if cfg.get("substitute"):
        for s, a in progress(ctx.pairs(), desc="substitute", unit="model"):
            model = defenses[a][s].augmented
            useed = unit_seed(seed, s, a, "substitute")

            def train(m=model, u=useed):
                return _substitute_unit(m, target, x, y, pool, settings, cfg, u)

            subs[(s, a)] = ctx.run.unit("adaptive", f"s{s}-{a}-substitute", train,
                                        {"run": ident_pool, "pool": pool,
                                         "params": cfg, "eps": settings["eps"]})
    res = _rows(ctx, x, fam, subs) if ctx.final else Result()
    public = run_public(ctx, x, y, ident_pool)
    res.rows += public.rows
    res.outcomes |= public.outcomes
    if ctx.final:
        everything = every_attack_rows({**ctx.outcomes, **res.outcomes}, list(defenses),
                                       ctx.eps, ctx.seeds)
        res.rows += everything.rows
        res.outcomes |= everything.outcomes
    diagnostics = run_diagnostics(ctx, x, y, ident)
    if ctx.final:
        res.sections["diagnostics"] = diagnostics
    return res


def _rows(ctx: RunContext, x: torch.Tensor, fam: dict[tuple, tuple],
          subs: dict[tuple, tuple]) -> Result:
    """The adaptive-w, adaptive-worst and substitute rows, outcomes and ROC (final pass)."""
    defenses, seeds, res = ctx.defenses, ctx.seeds, Result()
    clean = {(s, a): clean_scores(defenses[a][s], x) for s in seeds for a in defenses}
    for a in defenses:
        for e in ctx.eps:
            per: dict[str, list] = {"adaptive-w": [], "adaptive-worst": [], "substitute": []}
            chosen, queries, curves, parts = [], [], [], {}
            for s in seeds:
                t, meta = fam[(s, a, e)]
                for p in meta.get("parts", ["family"]):
                    parts.setdefault(p, []).append(
                        {k: t.get(f"part_{p}_{k}", t[f"all_{k}"]) for k in KEYS})
                d = defenses[a][s]
                for name, pre in (("adaptive-w", "best_"), ("adaptive-worst", "all_")):
                    b = {k: t[pre + k] for k in KEYS}
                    res.outcomes[(s, a, name, e)] = b
                    per[name].append(rates(**b, given_fooled=True))
                op, adv_scores = op_rates(d, t["best_t_logits"], t["best_m_logits"],
                                          t["best_m_ok"])
                per["adaptive-w"][-1] |= op
                curves.append((clean[(s, a)], adv_scores, float(d.detector["threshold"]),
                               d.detector["rule"]))
                chosen.append(meta["best"])
                if (s, a) in subs:
                    st, sm = subs[(s, a)]
                    b = {k: st[f"eps{e}_all_{k}"] for k in KEYS}
                    res.outcomes[(s, a, "substitute", e)] = b
                    per["substitute"].append(rates(**b, given_fooled=True))
                    queries.append(sm["queries"])
            for name, vals in per.items():
                if not vals:
                    continue
                extra: dict[str, Any] = {}
                if name == "adaptive-w":
                    entry = pooled_roc(curves)
                    res.roc.setdefault("adaptive-w", {}).setdefault(str(e), {})[a] = entry
                    extra = {"setting": chosen[0], "settings_per_seed": chosen,
                             "auroc": entry["auroc"],
                             "detector": {"rule": curves[0][3],
                                          "thresholds": [c[2] for c in curves]}}
                elif name == "substitute":
                    extra = {"queries": queries[0], "queries_per_seed": queries}
                elif name == "adaptive-worst":
                    extra = {"broken_by": breakdown(parts)}
                res.rows.append(aggregate("adaptive", a, name, e, vals, extra, seeds=seeds))
    return res


def departures(settings: dict[str, Any]) -> list[str]:
    """None beyond the protocol's (the adaptive evaluation, its transforms and the
    attacker's model S are disclosed there: :func:`luring.experiments.disclosure.
    differences_from_paper`)."""
    return []
