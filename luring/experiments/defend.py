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

from luring.errors import LuringError
from luring.experiments.common import aggregate, make_attack, together, unit_seed
from luring.experiments.profiles import step_size
from luring.experiments.store import RunDir
from luring.metrics import correct, dac_ok, rate, worst_case
from luring.models import predict_logits
from luring.utils import progress

__all__ = ["run_defend", "mimw_settings", "defend_attacks", "DEFEND_ATTACKS"]

#: The defend experiment's attacks (section 4); a profile may leave the query attacks out
#: (``defend.attacks``), saying so in its disclosure, where their budgets cannot fool T.
DEFEND_ATTACKS = ("spsa", "eco", "mim-w")


def defend_attacks(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The attacks a profile's ``defend`` settings run, in :data:`DEFEND_ATTACKS` order
    (MIM-W always: it is the paper's headline attack)."""
    want = set(cfg.get("attacks", DEFEND_ATTACKS)) | {"mim-w"}
    bad = want - set(DEFEND_ATTACKS)
    if bad:
        raise LuringError(f"unknown defend attack(s) {', '.join(sorted(bad))}; choose from "
                          f"{', '.join(DEFEND_ATTACKS)}")
    return tuple(a for a in DEFEND_ATTACKS if a in want)


def mimw_settings(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The MIM-W grid of a profile (see :func:`luring.attacks.default_settings`)."""
    from luring.attacks import default_settings

    return default_settings(tuple(cfg["p_values"]), tuple(cfg["kernel_sizes"]))


def _mimw_unit(model, target, x, y, eps, cfg, seed):
    """Run the MIM-W grid; keep the best setting's per-example booleans and the per-example
    AND over all settings."""
    from luring.attacks import worst_case_search

    steps = int(cfg["steps"])
    res = worst_case_search(model, target, x, y, eps, steps=steps, mu=cfg["mu"],
                            alpha=step_size(cfg["step_size"], eps, steps),
                            settings=mimw_settings(cfg), seed=seed, progress=False,
                            together=together(len(x), model))
    best = res.best
    tensors = {"best_t_ok": res.best_t_correct, "best_m_ok": res.best_m_correct,
               "best_defended": res.best_defended, "t_ok_all": res.ac_mop_all,
               "m_ok_all": res.ac_m_all, "defended_all": res.defended_all,
               "best_t_logits": predict_logits(model, res.best_x_adv),
               "best_m_logits": predict_logits(target, res.best_x_adv)}
    return tensors, {"best": {"attack": best.attack} | best.params,
                     "per_setting": [vars(r) for r in res.settings]}


def run_defend(run: RunDir, target: torch.nn.Module, defenses: dict[str, dict[int, Any]],
               x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any],
               seed: int, ident: dict[str, Any] | None = None,
               outcomes: dict[tuple, dict[str, torch.Tensor]] | None = None,
               roc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run (or reuse) every defend unit and return the result rows. ``ident`` identifies the
    images and models (see ``reproduce``); each unit's identity adds its parameters. MIM-W
    rows record the chosen setting of every seed (``settings_per_seed``). SPSA, ECO and MIM-W
    rows also hold the detector's ``detection_rate`` and ``dac_op`` at each defense's stored
    operating point (:mod:`luring.experiments.detection`); the worst-case row has no single
    example per image, so only the paper rule's DAC. ``outcomes``, when given, receives the
    per-example booleans ``{(seed, approach, attack, ε): {"t_ok", "m_ok", "defended"}}`` for
    the paired verdict; ``roc`` receives MIM-W's ROC per ε and approach
    (``roc["mim-w"][str(ε)][approach]``)."""
    from luring.experiments.detection import clean_scores, op_rates, pooled_roc

    if len(x) == 0:  # nothing to attack (else an IndexError deep in the attacks)
        raise LuringError("the defend experiment has no test image to attack: it attacks "
                          "only images that M (and, with images_correct_for 'all', every T) "
                          "classifies correctly, and there are none; check M's test accuracy, "
                          "train the defenses longer, or use more test images")
    cfg = settings["defend"]
    attacks = defend_attacks(cfg)
    seeds = sorted(next(iter(defenses.values())).keys()) if defenses else []
    units = [(s, a, atk, e) for s in seeds for a in defenses for e in settings["eps"]
             for atk in attacks]
    out: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
    for s, a, atk, e in progress(units, desc="defend", unit="unit"):
        model = defenses[a][s].augmented
        useed = unit_seed(seed, s, a, atk, e)
        if atk == "mim-w":
            def craft(m=model, e=e, u=useed):
                return _mimw_unit(m, target, x, y, e, cfg["mim_w"], u)
        else:
            def craft(m=model, atk=atk, e=e, u=useed):
                attack = make_attack(atk, m, e, cfg[atk], u)
                x_adv = attack(x, y)
                tl, ml = predict_logits(m, x_adv), predict_logits(target, x_adv)
                t, mp = tl.argmax(1), ml.argmax(1)
                return ({"t_ok": correct(t, y), "m_ok": correct(mp, y),
                         "defended": dac_ok(t, mp, y), "t_logits": tl, "m_logits": ml},
                        {"params": attack.params(), "queries": attack.n_queries})
        params = cfg["mim_w"] if atk == "mim-w" else cfg[atk]
        out[(s, a, atk, e)] = run.unit("defend", f"s{s}-{a}-{atk}-eps{e}", craft,
                                       {"run": ident, "params": params})
    rows = []
    clean = {(s, a): clean_scores(defenses[a][s], x) for s in seeds for a in defenses}
    for a in defenses:
        for e in settings["eps"]:
            per: dict[str, list] = {k: [] for k in (*attacks, "worst-case")}
            chosen, curves = [], []
            for s in seeds:
                d = defenses[a][s]
                query = {k: out[(s, a, k, e)][0] for k in ("spsa", "eco") if k in attacks}
                mw, mw_meta = out[(s, a, "mim-w", e)]
                for name, u in query.items():
                    per[name].append(_rates(u["t_ok"], u["m_ok"], u["defended"])
                                     | op_rates(d, u["t_logits"], u["m_logits"], u["m_ok"])[0])
                op, adv_scores = op_rates(d, mw["best_t_logits"], mw["best_m_logits"],
                                          mw["best_m_ok"])
                per["mim-w"].append(_rates(mw["best_t_ok"], mw["best_m_ok"], mw["best_defended"])
                                    | op)
                curves.append((clean[(s, a)], adv_scores, float(d.detector["threshold"]),
                               d.detector["rule"]))
                chosen.append(mw_meta["best"])
                parts = list(query.values())
                worst = tuple(worst_case([u[k] for u in parts] + [mw[f"{k}_all"]])
                              for k in ("t_ok", "m_ok", "defended"))
                per["worst-case"].append(_rates(*worst))
                if outcomes is not None:
                    keys = ("t_ok", "m_ok", "defended")
                    outcomes[(s, a, "mim-w", e)] = {k: mw[f"best_{k}"] for k in keys}
                    if "spsa" in query:
                        outcomes[(s, a, "spsa", e)] = {k: query["spsa"][k] for k in keys}
                    outcomes[(s, a, "worst-case", e)] = dict(zip(keys, worst, strict=True))
            entry = pooled_roc(curves)
            if roc is not None:
                roc.setdefault("mim-w", {}).setdefault(str(e), {})[a] = entry
            for atk, vals in per.items():
                extra: dict[str, Any] = {}
                if atk == "mim-w":
                    extra = {"setting": chosen[0], "settings_per_seed": chosen,
                             "auroc": entry["auroc"]}
                if atk != "worst-case":
                    extra["detector"] = {"rule": defenses[a][seeds[0]].detector["rule"],
                                         "thresholds": [float(defenses[a][s].detector[
                                             "threshold"]) for s in seeds]}
                rows.append(aggregate("defend", a, atk, e, vals, extra, seeds=seeds))
    return rows


def _rates(t_ok: torch.Tensor, m_ok: torch.Tensor, defended: torch.Tensor) -> dict[str, Any]:
    """AC_{M∘P}, AC_M and DAC from per-example booleans."""
    return {"ac_mop": rate(t_ok), "ac_m": rate(m_ok), "dac": rate(defended)}
