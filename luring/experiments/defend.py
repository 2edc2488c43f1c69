"""Section 4: the luring effect as a defense (tables 1 and 14).

On test images that M and every T classify correctly, each approach's T is attacked with
SPSA, ECO and MIM-W (the worst-case search over MIM, DIM, MIM-TI and DIM-TI settings) at the
three ε; the examples are transferred to M. Rows give AC_{M∘P}, AC_M and DAC; ``mim-w`` is the
single setting best for the adversary, ``worst-case`` the per-example worst case over every
attack and setting (an example counts as defended only if it survives all of them).
Units: (seed, approach, spsa|eco, ε) and (seed, approach, mim-w, ε).
"""

from __future__ import annotations

from typing import Any

import torch

from luring.attacks import worst_case_search
from luring.errors import LuringError
from luring.experiments.common import aggregate, make_attack, rates, rates_of, together, unit_seed
from luring.experiments.context import Result, RunContext
from luring.experiments.detection import clean_scores, op_rates, pooled_roc
from luring.experiments.profiles import attack_steps, mimw_settings
from luring.metrics import correct, dac_ok, worst_case
from luring.models import predict_logits
from luring.utils import progress

__all__ = ["SUMMARY", "run", "departures", "defend_attacks", "DEFEND_ATTACKS", "UNIT_FORMAT"]

#: The experiment in one line (the CLI's help).
SUMMARY = "section 4: SPSA, ECO and MIM-W against each approach (tables 1 and 14)"


#: The defend experiment's attacks (section 4); a profile may leave the query attacks out
#: (``defend.attacks``), saying so in its disclosure, where their budgets cannot fool T.
DEFEND_ATTACKS = ("spsa", "eco", "mim-w")
#: Part of every MIM-W unit's identity: 2 since its per-example worst case is stored as
#: ``all_*`` (as every other search unit's), so a unit stored as ``*_all`` is recomputed.
UNIT_FORMAT = 2


def defend_attacks(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The attacks a profile's ``defend`` settings run, in :data:`DEFEND_ATTACKS` order
    (MIM-W always: it is the paper's headline attack)."""
    want = set(cfg.get("attacks", DEFEND_ATTACKS)) | {"mim-w"}
    bad = want - set(DEFEND_ATTACKS)
    if bad:
        raise LuringError(f"unknown defend attack(s) {', '.join(sorted(bad))}; choose from "
                          f"{', '.join(DEFEND_ATTACKS)}")
    return tuple(a for a in DEFEND_ATTACKS if a in want)


def _mimw_unit(model, target, x, y, eps, cfg, seed):
    """Run the MIM-W grid; keep the best setting's per-example booleans and the per-example
    AND over all settings."""
    steps, alpha = attack_steps(cfg, eps)
    res = worst_case_search(model, target, x, y, eps, steps=steps, mu=cfg["mu"], alpha=alpha,
                            settings=mimw_settings(cfg), seed=seed, progress=False,
                            together=together(len(x), model))
    best = res.best
    tensors = {"best_t_ok": res.best_t_correct, "best_m_ok": res.best_m_correct,
               "best_defended": res.best_defended, "all_t_ok": res.ac_mop_all,
               "all_m_ok": res.ac_m_all, "all_defended": res.defended_all,
               "best_t_logits": predict_logits(model, res.best_x_adv),
               "best_m_logits": predict_logits(target, res.best_x_adv)}
    return tensors, {"best": {"attack": best.attack} | best.params,
                     "per_setting": [vars(r) for r in res.settings]}


def run(ctx: RunContext) -> Result:
    """Run (or reuse) every defend unit on the first ``defend.n`` eligible test images and
    return the rows. MIM-W rows record the chosen setting of every seed
    (``settings_per_seed``). SPSA, ECO and MIM-W rows also hold the detector's
    ``detection_rate`` and ``dac_op`` at each defense's stored operating point
    (:mod:`luring.experiments.detection`); the worst-case row has no single example per
    image, so only the paper rule's DAC. ``outcomes``: the per-example booleans of
    ``mim-w``, ``spsa`` (when run) and ``worst-case`` per (seed, approach, ε); ``roc``:
    MIM-W's ROC per ε and approach."""
    settings, seed, target, defenses = ctx.settings, ctx.seed, ctx.target, ctx.defenses
    cfg = settings["defend"]
    x, y, ident = ctx.images(cfg["n"], "defend")
    y = y.cpu()
    if len(x) == 0:  # nothing to attack (else an IndexError deep in the attacks)
        raise LuringError("the defend experiment has no test image to attack: it attacks "
                          "only images that M (and, with images_correct_for 'all', every T) "
                          "classifies correctly, and there are none; check M's test accuracy, "
                          "train the defenses longer, or use more test images")
    attacks = defend_attacks(cfg)
    units = [(s, a, atk, e) for s, a in ctx.pairs() for e in settings["eps"]
             for atk in attacks]
    out: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
    for s, a, atk, e in progress(units, desc="defend", unit="unit"):
        model = defenses[a][s].augmented
        useed = unit_seed(seed, s, a, atk, e)
        if atk == "mim-w":
            def craft(m=model, e=e, u=useed):
                return _mimw_unit(m, target, x, y, e, cfg["mim_w"], u)
            key = {"run": ident, "params": cfg["mim_w"], "format": UNIT_FORMAT}
        else:
            def craft(m=model, atk=atk, e=e, u=useed):
                attack = make_attack(atk, m, e, cfg[atk], u)
                x_adv = attack(x, y)
                tl, ml = predict_logits(m, x_adv), predict_logits(target, x_adv)
                t, mp = tl.argmax(1), ml.argmax(1)
                return ({"t_ok": correct(t, y), "m_ok": correct(mp, y),
                         "defended": dac_ok(t, mp, y), "t_logits": tl, "m_logits": ml},
                        {"params": attack.params(), "queries": attack.n_queries})
            key = {"run": ident, "params": cfg[atk]}
        out[(s, a, atk, e)] = ctx.run.unit("defend", f"s{s}-{a}-{atk}-eps{e}", craft, key)
    outcomes = _outcomes(ctx, attacks, out)
    if not ctx.final:  # the outcomes of this share (the diagnostics read SPSA's)
        return Result(outcomes=outcomes)
    res = _rows(ctx, x, attacks, out, outcomes)
    res.outcomes = outcomes
    return res


def _query(out: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, Any]]],
           attacks: tuple[str, ...], s: int, a: str, e: float) -> dict[str, dict[str, Any]]:
    """The query attacks' (SPSA, ECO) unit outcomes of one seed, approach and ε (those run)."""
    return {k: out[(s, a, k, e)][0] for k in ("spsa", "eco") if k in attacks}


def _outcomes(ctx: RunContext, attacks: tuple[str, ...],
              out: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, Any]]]
              ) -> dict[tuple, dict[str, torch.Tensor]]:
    """Per (seed, approach, ε) of this pass: the per-example booleans of MIM-W's best
    setting, of SPSA (when run) and of the worst case over every attack and setting."""
    keys = ("t_ok", "m_ok", "defended")
    res: dict[tuple, dict[str, torch.Tensor]] = {}
    for s, a in ctx.pairs():
        for e in ctx.eps:
            query = _query(out, attacks, s, a, e)
            mw = out[(s, a, "mim-w", e)][0]
            worst = tuple(worst_case([u[k] for u in query.values()] + [mw[f"all_{k}"]])
                          for k in keys)
            res[(s, a, "mim-w", e)] = {k: mw[f"best_{k}"] for k in keys}
            if "spsa" in query:
                res[(s, a, "spsa", e)] = {k: query["spsa"][k] for k in keys}
            res[(s, a, "worst-case", e)] = dict(zip(keys, worst, strict=True))
    return res


def _rows(ctx: RunContext, x: torch.Tensor, attacks: tuple[str, ...],
          out: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, Any]]],
          outcomes: dict[tuple, dict[str, torch.Tensor]]) -> Result:
    """The defend rows and ROC from every unit and the outcomes (final pass)."""
    defenses, seeds, res = ctx.defenses, ctx.seeds, Result()
    clean = {(s, a): clean_scores(defenses[a][s], x) for s in seeds for a in defenses}
    for a in defenses:
        for e in ctx.eps:
            per: dict[str, list] = {k: [] for k in (*attacks, "worst-case")}
            chosen, curves = [], []
            for s in seeds:
                d = defenses[a][s]
                query = _query(out, attacks, s, a, e)
                mw, mw_meta = out[(s, a, "mim-w", e)]
                for name, u in query.items():
                    op_u = op_rates(d, u["t_logits"], u["m_logits"], u["m_ok"])[0]
                    per[name].append(rates_of(u) | op_u)
                op, adv_scores = op_rates(d, mw["best_t_logits"], mw["best_m_logits"],
                                          mw["best_m_ok"])
                per["mim-w"].append(rates_of(mw, "best") | op)
                curves.append((clean[(s, a)], adv_scores, float(d.detector["threshold"]),
                               d.detector["rule"]))
                chosen.append(mw_meta["best"])
                per["worst-case"].append(rates(**outcomes[(s, a, "worst-case", e)]))
            entry = pooled_roc(curves)
            res.roc.setdefault("mim-w", {}).setdefault(str(e), {})[a] = entry
            for atk, vals in per.items():
                extra: dict[str, Any] = {}
                if atk == "mim-w":
                    extra = {"setting": chosen[0], "settings_per_seed": chosen,
                             "auroc": entry["auroc"]}
                if atk != "worst-case":
                    extra["detector"] = {"rule": defenses[a][seeds[0]].detector["rule"],
                                         "thresholds": [float(defenses[a][s].detector[
                                             "threshold"]) for s in seeds]}
                res.rows.append(aggregate("defend", a, atk, e, vals, extra, seeds=seeds))
    return res


def departures(settings: dict[str, Any]) -> list[str]:
    """None of its own: the attacks' parameters (and SPSA and ECO when left out) are
    disclosed with the protocol (:func:`luring.experiments.disclosure.attack_lines`)."""
    return []
