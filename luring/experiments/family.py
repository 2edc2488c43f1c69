"""The computations of the adaptive attacks, shared by the experiments that run them
(``adaptive``, ``advtrain``): the enlarged family's settings, one search unit over all of
them (:func:`family_unit`) and the breakdown of a per-example worst case by its parts.

The family: MIM-W's grid plus the transfer attacks (NI-FGSM, SI-NI-FGSM, VMI-FGSM,
VNI-FGSM), each in every ``(loss, gradient)`` pass (cross-entropy or logit margin; T's own
gradient or BPDA); the input-transformation attacks (SIA, BSR) in the same passes; and T
attacked together with the attacker's own model S (:class:`luring.attacks.Ensemble`).
"""

from __future__ import annotations

from typing import Any

import torch

from luring.attacks import Ensemble, bpda, worst_case_search
from luring.experiments.common import together
from luring.experiments.profiles import attack_steps, mimw_settings
from luring.metrics import rate
from luring.models import predict_logits

__all__ = ["KEYS", "TRANSFER_ATTACKS", "PARTS", "adaptive_family", "transform_settings",
           "ensemble_settings", "searches", "family_unit", "booleans", "better", "breakdown"]

KEYS = ("t_ok", "m_ok", "defended")

TRANSFER_ATTACKS = ("ni-fgsm", "si-ni-fgsm", "vmi-fgsm", "vni-fgsm")


def adaptive_family(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The enlarged family's settings (the MIM-W grid of ``cfg`` plus its transfer attacks,
    names or ``{"attack": name, **params}``); each is run in every ``(loss, gradient)`` pass
    of ``cfg["passes"]``."""
    extra = [a if isinstance(a, dict) else {"attack": a} for a in cfg.get("transfer_attacks", [])]
    return mimw_settings(cfg) + [dict(a) for a in extra]


def booleans(t_pred: torch.Tensor, m_pred: torch.Tensor, y: torch.Tensor
              ) -> dict[str, torch.Tensor]:
    t_ok, m_ok = t_pred == y, m_pred == y
    return {"t_ok": t_ok, "m_ok": m_ok, "defended": m_ok | (t_pred != m_pred)}


def better(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None) -> bool:
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


def searches(model, cfg, attacker):
    """``(part, loss, grad, mode, settings, gradient source)`` of every search of the unit."""
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


def family_unit(model, target, x, y, eps, cfg, seed, attacker=None):
    """Every search of the enlarged family (:func:`searches`: each (loss, gradient) pass of
    the family and the transforms on T, then the T+S ensembles when ``attacker`` is S): the
    best single setting's booleans, the per-example AND over all settings (``all_*``) and
    over each part's (``part_<part>_*``)."""
    steps, alpha = attack_steps(cfg, eps)
    best, best_meta = None, None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    summary = []
    for part, loss, grad, mode, chosen, src in searches(model, cfg, attacker):
        res = worst_case_search(
            model, target, x, y, eps, steps=steps, mu=cfg["mu"], alpha=alpha, settings=chosen,
            seed=seed, progress=False, loss=loss, kappa=cfg["kappa"], grad_model=src,
            together=together(len(x), model))
        how = {"part": part, "loss": loss, "grad": grad} | ({"mode": mode} if mode else {})
        out = {"t_ok": res.best_t_correct, "m_ok": res.best_m_correct,
               "defended": res.best_defended}
        if better(out, best):
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


def breakdown(parts: dict[str, list[dict[str, torch.Tensor]]]) -> dict[str, dict[str, Any]]:
    """Which parts of a per-example worst case broke its examples. ``parts``: part name →
    per-seed booleans (``t_ok``, ``m_ok``, ``defended``, (n,) each; every part the same
    examples in the same order). Per part, pooled over seeds: ``dac`` and ``ac_m`` under that
    part alone, ``broke`` (the fraction of examples it left undefended) and ``only`` (the
    fraction no other part left undefended); ``"all"`` holds the worst case's own DAC and
    AC_M. Fractions of n (the examples of every seed), in [0, 1]."""
    names = list(parts)
    cat = {p: {k: torch.cat([b[k].bool().reshape(-1).cpu() for b in parts[p]]) for k in KEYS}
           for p in names}
    broke = {p: ~cat[p]["defended"] for p in names}
    out: dict[str, dict[str, Any]] = {}
    n = len(broke[names[0]]) if names else 0
    for p in names:
        others = torch.zeros(n, dtype=torch.bool)
        for q in names:
            if q != p:
                others |= broke[q]
        out[p] = {"dac": rate(cat[p]["defended"]).value, "ac_m": rate(cat[p]["m_ok"]).value,
                  "broke": rate(broke[p]).value, "only": rate(broke[p] & ~others).value, "n": n}
    if names:
        every = torch.stack([cat[p]["defended"] for p in names]).all(0)
        m_ok = torch.stack([cat[p]["m_ok"] for p in names]).all(0)
        out["all"] = {"dac": rate(every).value, "ac_m": rate(m_ok).value, "n": n}
    return out
