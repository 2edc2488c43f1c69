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
T), n and intervals. The gradient-masking diagnostics (per approach) and the paired verdict are
in :mod:`luring.experiments.diagnostics`.

Units: ``adaptive/s<seed>-<approach>-eps<ε>`` and ``adaptive/s<seed>-<approach>-substitute``.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.experiments.common import aggregate, together, unit_seed
from luring.experiments.defend import mimw_settings
from luring.experiments.profiles import step_size
from luring.experiments.public import breakdown, run_public
from luring.experiments.store import RunDir
from luring.metrics import rate
from luring.models import predict_labels, predict_logits
from luring.utils import fingerprint, progress

__all__ = ["run_adaptive", "adaptive_family", "transform_settings", "ensemble_settings",
           "TRANSFER_ATTACKS", "every_attack_rows", "ALL_WORST_PARTS", "PARTS"]

TRANSFER_ATTACKS = ("ni-fgsm", "si-ni-fgsm", "vmi-fgsm", "vni-fgsm")


def adaptive_family(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The enlarged family's settings (the MIM-W grid of ``cfg`` plus its transfer attacks,
    names or ``{"attack": name, **params}``); each is run in every ``(loss, gradient)`` pass
    of ``cfg["passes"]``."""
    extra = [a if isinstance(a, dict) else {"attack": a} for a in cfg.get("transfer_attacks", [])]
    return mimw_settings(cfg) + [dict(a) for a in extra]


def _booleans(t_pred: torch.Tensor, m_pred: torch.Tensor, y: torch.Tensor
              ) -> dict[str, torch.Tensor]:
    t_ok, m_ok = t_pred == y, m_pred == y
    return {"t_ok": t_ok, "m_ok": m_ok, "defended": m_ok | (t_pred != m_pred)}


def _better(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None) -> bool:
    """Is outcome ``a`` better for the adversary than ``b`` (lower DAC, then lower AC_M)?"""
    if b is None:
        return True
    ka = (a["defended"].float().mean().item(), a["m_ok"].float().mean().item())
    kb = (b["defended"].float().mean().item(), b["m_ok"].float().mean().item())
    return ka < kb


#: The parts of the adaptive worst case, in search order: the family on T (its gradient or
#: BPDA), the input-transformation attacks on T, and T attacked together with the attacker's
#: own model S (:mod:`luring.attacks.ensemble`).
PARTS = ("family", "transforms", "ensemble")


def transform_settings(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The input-transformation attacks (SIA, BSR) of ``cfg`` as worst-case settings."""
    return [dict(t) for t in cfg.get("transforms") or []]


def ensemble_settings(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings the T+S ensembles run (``"all"``: the family and the transforms)."""
    ens = (cfg.get("attacker") or {}).get("ensemble") or {}
    chosen = ens.get("settings", "all")
    if chosen == "all":
        return adaptive_family(cfg) + transform_settings(cfg)
    return [dict(a) for a in chosen]


def _searches(model, cfg, attacker):
    """``(part, loss, grad, mode, settings, gradient source)`` of every search of the unit."""
    from luring.attacks import Ensemble, bpda

    out = []
    for loss, grad in cfg["passes"]:
        src = bpda(model) if grad == "bpda" else None
        out.append(("family", loss, grad, None, adaptive_family(cfg), src))
        if transform_settings(cfg):
            out.append(("transforms", loss, grad, None, transform_settings(cfg), src))
    ens = (cfg.get("attacker") or {}).get("ensemble")
    if attacker is not None and ens:
        for loss, grad, mode in ens["passes"]:
            member = bpda(model) if grad == "bpda" else model
            out.append(("ensemble", loss, grad, mode, ensemble_settings(cfg),
                        Ensemble([member, attacker], ens["weights"], mode)))
    return out


def _family_unit(model, target, x, y, eps, cfg, seed, attacker=None):
    """Every search of the enlarged family (:func:`_searches`: each (loss, gradient) pass of
    the family and the transforms on T, then the T+S ensembles when ``attacker`` is S): the
    best single setting's booleans, the per-example AND over all settings (``all_*``) and
    over each part's (``part_<part>_*``)."""
    from luring.attacks import worst_case_search

    steps = int(cfg["steps"])
    best, best_meta = None, None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    summary = []
    for part, loss, grad, mode, chosen, src in _searches(model, cfg, attacker):
        res = worst_case_search(
            model, target, x, y, eps, steps=steps, mu=cfg["mu"],
            alpha=step_size(cfg["step_size"], eps, steps), settings=chosen,
            seed=seed, progress=False, loss=loss, kappa=cfg["kappa"], grad_model=src,
            together=together(len(x), model))
        how = {"part": part, "loss": loss, "grad": grad} | ({"mode": mode} if mode else {})
        out = {"t_ok": res.best_t_correct, "m_ok": res.best_m_correct,
               "defended": res.best_defended}
        if _better(out, best):
            best = out | {"t_logits": predict_logits(model, res.best_x_adv),
                          "m_logits": predict_logits(target, res.best_x_adv)}
            best_meta = {"attack": res.best.attack} | how | res.best.params
        alls = {"t_ok": res.ac_mop_all, "m_ok": res.ac_m_all, "defended": res.defended_all}
        old = parts.get(part)
        parts[part] = alls if old is None else {k: old[k] & alls[k] for k in old}
        summary += [how | r.to_dict() for r in res.settings]
    every = {k: torch.stack([p[k] for p in parts.values()]).all(0) for k in ("t_ok", "m_ok",
                                                                             "defended")}
    tensors = {f"best_{k}": v for k, v in best.items()} | {f"all_{k}": v for k, v in
                                                             every.items()}
    tensors |= {f"part_{p}_{k}": v for p, b in parts.items() for k, v in b.items()}
    return tensors, {"best": best_meta, "per_setting": summary, "parts": list(parts)}


def _substitute_unit(model, target, x, y, pool, settings, cfg, seed):
    """Train a substitute of T on ``pool`` (T's answers), then, per ε, the MIM-W grid on the
    substitute judged on T and M: best setting's booleans and the worst case."""
    from luring.attacks import worst_case_search
    from luring.attacks.substitute import train_substitute
    from luring.models import default_architectures

    sc = cfg["substitute"]
    arch = default_architectures(settings["family"], tuple(pool.shape[1:]))[0]
    sub = train_substitute(model, pool, arch=arch,
                           labels=sc["labels"], epochs=sc["epochs"], rounds=sc["rounds"],
                           lam=sc["lam"], batch_size=sc["batch_size"], lr=sc["lr"],
                           seed=seed)
    steps = int(cfg["steps"])
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"queries": sub.queries, "pool": sub.pool_size,
                            "agreement": sub.agreement, "params": sub.params,
                            "history": sub.history, "best": {}}
    for e in settings["eps"]:
        best, best_setting, every = None, None, None
        for s in mimw_settings(cfg):
            res = worst_case_search(sub.model, target, x, y, e, steps=steps, mu=cfg["mu"],
                                    alpha=step_size(cfg["step_size"], e, steps), settings=[s],
                                    seed=seed, progress=False)
            x_adv = res.best_x_adv
            out = _booleans(predict_labels(model, x_adv), predict_labels(target, x_adv), y)
            if _better(out, best):
                best, best_setting = out, {"attack": res.best.attack} | res.best.params
            every = out if every is None else {k: every[k] & out[k] for k in every}
        tensors |= {f"eps{e}_best_{k}": v for k, v in best.items()}
        tensors |= {f"eps{e}_all_{k}": v for k, v in every.items()}
        meta["best"][str(e)] = best_setting
    return tensors, meta


#: Attacks whose per-example outcomes make the worst case over every attack of a run.
ALL_WORST_PARTS = ("worst-case", "adaptive-worst", "substitute")


def every_attack_rows(outcomes: dict[tuple, dict[str, torch.Tensor]], approaches: list[str],
                      eps_values: list[float], seeds: list[int]) -> list[dict[str, Any]]:
    """``all-worst``: per approach and ε, the per-example worst case over every attack the
    run crafted on T or on T's answers for the same images (defend's MIM-W grid and query
    attacks, the adaptive family with its transforms and T+S ensembles, the substitute): an
    example is defended only if it survives all of them. The ``public`` rows (crafted on the
    attacker's own model alone) are left out: luring does not claim to address them. Each
    row's ``broken_by`` breaks it down by those three parts. Adds the
    outcomes ``(seed, approach, "all-worst", ε)`` to ``outcomes`` (for the paired verdict)
    and returns the rows (experiment ``adaptive``)."""
    rows = []
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
                outcomes[(s, a, "all-worst", e)] = b
                per.append(_rates(**b))
                for k in ALL_WORST_PARTS:
                    if (s, a, k, e) in outcomes:
                        named.setdefault(k, []).append(outcomes[(s, a, k, e)])
            if len(per) == len(seeds) and per:
                rows.append(aggregate("adaptive", a, "all-worst", e, per,
                                      {"broken_by": breakdown(named)}, seeds=seeds))
    return rows


def _rates(t_ok: torch.Tensor, m_ok: torch.Tensor, defended: torch.Tensor) -> dict[str, Any]:
    """AC_MoP, AC_M, DAC and M's accuracy on the examples that fool T."""
    return {"ac_mop": rate(t_ok), "ac_m": rate(m_ok), "dac": rate(defended),
            "ac_m_given_fooled": rate(m_ok, where=~t_ok)}


def run_adaptive(run: RunDir, target: torch.nn.Module, defenses: dict[str, dict[int, Any]],
                 x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor,
                 settings: dict[str, Any], seed: int,
                 ident: dict[str, Any] | None = None, roc: dict[str, Any] | None = None,
                 attackers: dict[int, dict[str, Any]] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[tuple, dict]]:
    """Run (or reuse) every adaptive unit. ``x``, ``y``: the attacked test images (the defend
    experiment's); ``pool``: the substitute attacker's images (other test images).

    Returns the result rows (``adaptive-w``, ``adaptive-worst``, ``substitute``) and the
    per-example booleans ``{(seed, approach, attack, ε): {"t_ok", "m_ok", "defended"}}`` for
    the paired verdict. ``adaptive-w`` rows also hold the detector's ``detection_rate`` and
    ``dac_op`` at the stored operating point and its AUROC; ``roc`` receives its ROC per ε and
    approach (``roc["adaptive-w"][str(ε)][approach]``). ``attackers``: the attacker's own
    model S per seed (:func:`luring.experiments.models.prepare_attackers`): with it the T+S
    ensembles join the family and the ``public`` rows (:mod:`luring.experiments.public`)
    are added; ``adaptive-worst`` rows hold ``broken_by`` (:func:`~luring.experiments.public.
    breakdown` of the family, transforms and ensemble parts)."""
    from luring.experiments.detection import clean_scores, op_rates, pooled_roc

    cfg = settings["adaptive"]
    seeds = sorted(next(iter(defenses.values())).keys()) if defenses else []
    attackers = attackers or {}
    fam: dict[tuple, tuple] = {}
    subs: dict[tuple, tuple] = {}
    units = [(s, a, e) for s in seeds for a in defenses for e in settings["eps"]]
    for s, a, e in progress(units, desc="adaptive", unit="unit"):
        model = defenses[a][s].augmented
        useed = unit_seed(seed, s, a, "adaptive", e)

        sm = attackers.get(s, {}).get("model")

        def craft(m=model, e=e, u=useed, sm=sm):
            return _family_unit(m, target, x, y, e, cfg, u, sm)

        key = {"run": ident, "params": cfg, "eps": settings["eps"]}
        if sm is not None:
            key["attacker"] = fingerprint(sm)
        fam[(s, a, e)] = run.unit("adaptive", f"s{s}-{a}-eps{e}", craft, key)
    if cfg.get("substitute"):
        for s, a in progress([(s, a) for s in seeds for a in defenses], desc="substitute",
                             unit="model"):
            model = defenses[a][s].augmented
            useed = unit_seed(seed, s, a, "substitute")

            def train(m=model, u=useed):
                return _substitute_unit(m, target, x, y, pool, settings, cfg, u)

            subs[(s, a)] = run.unit("adaptive", f"s{s}-{a}-substitute", train,
                                    {"run": ident, "pool": pool, "params": cfg,
                                     "eps": settings["eps"]})
    rows: list[dict[str, Any]] = []
    outcomes: dict[tuple, dict] = {}
    clean = {(s, a): clean_scores(defenses[a][s], x) for s in seeds for a in defenses}
    for a in defenses:
        for e in settings["eps"]:
            per: dict[str, list] = {"adaptive-w": [], "adaptive-worst": [], "substitute": []}
            chosen, queries, curves, parts = [], [], [], {}
            for s in seeds:
                t, meta = fam[(s, a, e)]
                for p in meta.get("parts", ["family"]):
                    parts.setdefault(p, []).append(
                        {k: t.get(f"part_{p}_{k}", t[f"all_{k}"]) for k in
                         ("t_ok", "m_ok", "defended")})
                d = defenses[a][s]
                for name, pre in (("adaptive-w", "best_"), ("adaptive-worst", "all_")):
                    b = {k: t[pre + k] for k in ("t_ok", "m_ok", "defended")}
                    outcomes[(s, a, name, e)] = b
                    per[name].append(_rates(**b))
                op, adv_scores = op_rates(d, t["best_t_logits"], t["best_m_logits"],
                                          t["best_m_ok"])
                per["adaptive-w"][-1] |= op
                curves.append((clean[(s, a)], adv_scores, float(d.detector["threshold"]),
                               d.detector["rule"]))
                chosen.append(meta["best"])
                if (s, a) in subs:
                    st, sm = subs[(s, a)]
                    b = {k: st[f"eps{e}_all_{k}"] for k in ("t_ok", "m_ok", "defended")}
                    outcomes[(s, a, "substitute", e)] = b
                    per["substitute"].append(_rates(**b))
                    queries.append(sm["queries"])
            for name, vals in per.items():
                if not vals:
                    continue
                extra: dict[str, Any] = {}
                if name == "adaptive-w":
                    entry = pooled_roc(curves)
                    if roc is not None:
                        roc.setdefault("adaptive-w", {}).setdefault(str(e), {})[a] = entry
                    extra = {"setting": chosen[0], "settings_per_seed": chosen,
                             "auroc": entry["auroc"],
                             "detector": {"rule": curves[0][3],
                                          "thresholds": [c[2] for c in curves]}}
                elif name == "substitute":
                    extra = {"queries": queries[0], "queries_per_seed": queries}
                elif name == "adaptive-worst":
                    extra = {"broken_by": breakdown(parts)}
                rows.append(aggregate("adaptive", a, name, e, vals, extra, seeds=seeds))
    pub_rows, pub_outcomes = run_public(run, target, defenses, attackers, x, y, settings, seed,
                                        ident)
    return rows + pub_rows, outcomes | pub_outcomes
