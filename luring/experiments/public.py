"""The attacker's own model S: the public-model transfer row and the breakdown of a worst case
by the attacks that broke each example.

``public`` (Sitawarin et al., ICLR 2024, PubDef's threat): examples crafted on S alone — the
MIM-W grid and the input-transformation attacks of the adaptive settings, S's own predictions
as labels — and judged on M and on each approach's T. The attacker never queries T, so M is
exposed exactly as it would be without luring; T only changes what the detector (T ≠ M)
sees. The row is shown beside the rows crafted on T and left out of their worst cases and of
the verdict: luring does not claim to address it.

Units: ``adaptive/s<seed>-<approach>-public`` (per-example booleans per ε). The examples
crafted on S depend on the seed and ε only: one process crafts them once and judges every
approach on them.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.experiments.common import aggregate, unit_seed
from luring.experiments.defend import mimw_settings
from luring.experiments.profiles import step_size
from luring.experiments.store import RunDir
from luring.metrics import rate
from luring.models import predict_labels
from luring.utils import fingerprint, progress

__all__ = ["run_public", "public_settings", "breakdown"]

_KEYS = ("t_ok", "m_ok", "defended")


def public_settings(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The attacks crafted on S alone: the MIM-W grid of ``cfg`` and its transforms."""
    return mimw_settings(cfg) + [dict(t) for t in cfg.get("transforms") or []]


def _craft(attacker, target, x, y, eps, cfg, seed) -> list[torch.Tensor]:
    """Per public setting, the examples crafted on S (each setting its own search)."""
    from luring.attacks import worst_case_search

    steps = int(cfg["steps"])
    return [worst_case_search(attacker, target, x, y, eps, steps=steps, mu=cfg["mu"],
                              alpha=step_size(cfg["step_size"], eps, steps), settings=[s],
                              seed=seed, progress=False).best_x_adv
            for s in public_settings(cfg)]


def _judge(model, target, crafted: list[torch.Tensor], y: torch.Tensor
           ) -> dict[str, torch.Tensor]:
    """Per-example worst case over the crafted sets, judged on T (``model``) and M."""
    y = y.cpu()
    every = None
    for x_adv in crafted:
        t_pred, m_pred = predict_labels(model, x_adv).cpu(), predict_labels(target, x_adv).cpu()
        b = {"t_ok": t_pred == y, "m_ok": m_pred == y,
             "defended": (m_pred == y) | (t_pred != m_pred)}
        every = b if every is None else {k: every[k] & b[k] for k in _KEYS}
    assert every is not None
    return every


def run_public(run: RunDir, target: torch.nn.Module, defenses: dict[str, dict[int, Any]],
               attackers: dict[int, dict[str, Any]], x: torch.Tensor, y: torch.Tensor,
               settings: dict[str, Any], seed: int, ident: dict[str, Any] | None = None
               ) -> tuple[list[dict[str, Any]], dict[tuple, dict[str, torch.Tensor]]]:
    """Run (or reuse) the public-model units. ``attackers``: ``{seed: {"model": S, ...}}``
    (:func:`luring.experiments.models.prepare_attackers`); ``x``, ``y``: the adaptive
    experiment's images. Returns the ``public`` rows (per approach and ε: AC_MoP = T's
    accuracy, AC_M, DAC on the examples crafted on S; ``attacker``: S's test accuracy and
    number of training images) and the per-example booleans
    ``{(seed, approach, "public", ε): ...}``."""
    cfg = settings["adaptive"]
    seeds = sorted(next(iter(defenses.values())).keys()) if defenses else []
    if not (cfg.get("attacker") or {}).get("public") or not all(s in attackers for s in seeds):
        return [], {}
    crafted: dict[tuple[int, float], list[torch.Tensor]] = {}
    units: dict[tuple[int, str], tuple] = {}
    for s, a in progress([(s, a) for s in seeds for a in defenses], desc="public model",
                         unit="model"):
        sm = attackers[s]["model"]

        def judge(m=defenses[a][s].augmented, s=s, sm=sm):
            out = {}
            for e in settings["eps"]:
                if (s, e) not in crafted:
                    crafted[(s, e)] = _craft(sm, target, x, y, e, cfg,
                                             unit_seed(seed, s, "public", e))
                out |= {f"eps{e}_{k}": v for k, v in _judge(m, target, crafted[(s, e)],
                                                             y).items()}
            return out, {"settings": public_settings(cfg)}

        units[(s, a)] = run.unit("adaptive", f"s{s}-{a}-public", judge,
                                 {"run": ident, "params": {k: cfg[k] for k in (
                                     "steps", "step_size", "mu", "p_values", "kernel_sizes",
                                     "transforms")},
                                  "attacker": fingerprint(sm), "eps": settings["eps"]})
    rows, outcomes = [], {}
    # S's training time is in the run's timings.json (results.json holds no timing: a
    # resumed run writes the same bytes)
    info = {"attacker": {"test_accuracy": [attackers[s]["test_accuracy"] for s in seeds],
                         "n_train": attackers[seeds[0]]["n_train"] if seeds else None,
                         "settings": public_settings(cfg)}}
    for a in defenses:
        for e in settings["eps"]:
            per = []
            for s in seeds:
                t, _ = units[(s, a)]
                b = {k: t[f"eps{e}_{k}"] for k in _KEYS}
                outcomes[(s, a, "public", e)] = b
                per.append({"ac_mop": rate(b["t_ok"]), "ac_m": rate(b["m_ok"]),
                            "dac": rate(b["defended"]),
                            "ac_m_given_fooled": rate(b["m_ok"], where=~b["t_ok"])})
            rows.append(aggregate("adaptive", a, "public", e, per, info, seeds=seeds))
    return rows, outcomes


def breakdown(parts: dict[str, list[dict[str, torch.Tensor]]]) -> dict[str, dict[str, Any]]:
    """Which parts of a per-example worst case broke its examples. ``parts``: part name →
    per-seed booleans (``t_ok``, ``m_ok``, ``defended``, (n,) each; every part the same
    examples in the same order). Per part, pooled over seeds: ``dac`` and ``ac_m`` under that
    part alone, ``broke`` (the fraction of examples it left undefended) and ``only`` (the
    fraction no other part left undefended); ``"all"`` holds the worst case's own DAC and
    AC_M. Fractions of n (the examples of every seed), in [0, 1]."""
    names = list(parts)
    cat = {p: {k: torch.cat([b[k].bool().reshape(-1).cpu() for b in parts[p]]) for k in _KEYS}
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
