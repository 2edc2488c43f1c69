"""Gradient-masking diagnostics per approach, and the paired verdict on the luring effect.

Diagnostics (Carlini et al. 2019, "On evaluating adversarial robustness", section 5), on the
defend experiment's test images, each a check that passes or is flagged:

* ``gradient``: the median over images of mean |∇ₓ CE(T(x), y)| against the same for M;
  flagged when T's is below ``grad_ratio`` × M's (vanishing gradients).
* ``steps``: AC_MoP of plain MIM (cross-entropy, T's own gradient) at the middle ε for each
  number of steps of ``steps`` (step size by the profile's rule); flagged when it *rises* with
  more steps (an attack that gets worse with more iterations is failing, not the defense
  succeeding).
* ``unbounded``: AC_MoP of the same MIM at ε = 1, its step size by Madry et al.'s rule
  (2.5 ε / steps, whatever the profile's step size: a fixed 0.01 would let 20 steps move
  each pixel by 0.2 at most, an ε = 0.2 attack); flagged unless it is 0.
* ``gradient_free``: SPSA's AC_MoP at the middle ε against the gradient attack's; flagged
  when the gradient-free attack fools T more often.

Verdict: per ε and attack, Luring against every other approach on the same images, on DAC
and on AC_M: McNemar's exact test on the per-example outcomes and Newcombe's interval of the
difference, stated as "higher", "no difference" or "lower" (p < 0.05, two-sided). A comparison
where the attack failed on T (AC_MoP above :data:`ATTACK_FAILED_AC_MOP` for Luring or for the
other approach) is marked ``excluded``: there AC_M measures attack failure, not luring. The
row's older fields compare Luring with the best other approach (highest DAC) only; "holds"
when Luring's DAC is higher and p < 0.05.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.attacks import MIM
from luring.experiments.common import make_attack, unit_seed
from luring.experiments.context import RunContext
from luring.experiments.profiles import step_size
from luring.metrics import input_saliency, mcnemar
from luring.models import predict_labels
from luring.utils import progress

__all__ = ["run_diagnostics", "paired_verdict", "masking_checks", "diagnostics_unit",
           "spsa_unit", "ALPHA", "ATTACK_FAILED_AC_MOP", "VERDICT_ATTACKS"]

#: Significance level of the verdict.
ALPHA = 0.05
#: AC_MoP above which an attack is said to have failed on T (it left T right on more than
#: this share of the images); the report marks such cells with the same limit
#: (``luring.report.cells.ATTACK_FAILED_AC_MOP``).
ATTACK_FAILED_AC_MOP = 0.1
#: The attacks of the paired verdict, in its order (each where the run measured it; the
#: ``public`` rows, crafted on the attacker's own model alone, are not in it).
VERDICT_ATTACKS = ("mim-w", "worst-case", "adaptive-w", "adaptive-worst", "substitute",
                   "all-worst")


#: Part of every diagnostics unit's identity: 2 since the ε = 1 check takes its step size
#: by :data:`UNBOUNDED_STEP_RULE` (before: the profile's, which could not reach ε = 1).
UNIT_FORMAT = 2
#: The step size of the ε = 1 check: it must be able to cross the whole [0, 1] range.
UNBOUNDED_STEP_RULE = "2.5*eps/steps"


def _mim(model, x, y, eps, steps, cfg, seed):
    atk = MIM(model, eps=eps, steps=steps, alpha=step_size(cfg["step_size"], eps, steps),
              mu=cfg["mu"], seed=seed)
    return float((predict_labels(model, atk(x)) == y).float().mean())


def _median_grad(model, x, y) -> float:
    g = input_saliency(model, x, y)
    return float(g.abs().flatten(1).mean(1).median())


def diagnostics_unit(model, target, x, y, eps_mid, cfg, seed):
    steps_list = [int(s) for s in cfg["steps"]]
    curve = [_mim(model, x, y, eps_mid, s, cfg, seed) for s in steps_list]
    ub_steps = int(cfg.get("unbounded_steps", max(steps_list)))
    ub_alpha = step_size(UNBOUNDED_STEP_RULE, 1.0, ub_steps)
    unbounded = _mim(model, x, y, 1.0, ub_steps, cfg | {"step_size": ub_alpha}, seed)
    ref = int(cfg["reference_steps"])
    meta = {"grad_t": _median_grad(model, x, y), "grad_m": _median_grad(target, x, y),
            "steps": steps_list, "ac_mop_steps": curve, "ac_mop_eps1": unbounded,
            "eps1_steps": ub_steps, "eps1_alpha": ub_alpha,
            "ac_mop_gradient": curve[steps_list.index(ref)] if ref in steps_list
            else curve[-1]}
    return {}, meta


def spsa_unit(model, x, y, eps_mid, spsa_cfg, seed):
    spsa = make_attack("spsa", model, eps_mid, spsa_cfg, seed)
    return {}, {"ac_mop_spsa": float((predict_labels(model, spsa(x)) == y).float().mean())}


def masking_checks(m: dict[str, Any], cfg: dict[str, Any], n: int) -> dict[str, Any]:
    ratio = m["grad_t"] / m["grad_m"] if m["grad_m"] > 0 else float("inf")
    curve = m["ac_mop_steps"]
    rises = any(b > a for a, b in zip(curve, curve[1:], strict=False))
    out = {
        "gradient": {"flagged": ratio < cfg["grad_ratio"], "grad_t": m["grad_t"],
                     "grad_m": m["grad_m"], "ratio": ratio, "threshold": cfg["grad_ratio"]},
        "steps": {"flagged": rises, "steps": m["steps"], "ac_mop": curve},
        "unbounded": {"flagged": m["ac_mop_eps1"] > 0, "ac_mop": m["ac_mop_eps1"],
                      "steps": m.get("eps1_steps"), "alpha": m.get("eps1_alpha")},
        "gradient_free": {"flagged": m["ac_mop_spsa"] < m["ac_mop_gradient"],
                          "ac_mop_spsa": m["ac_mop_spsa"],
                          "ac_mop_gradient": m["ac_mop_gradient"],
                          "n_spsa": m.get("n_spsa", n)},
    }
    out["flagged"] = [k for k, v in out.items() if v["flagged"]]
    out["n"] = n
    return out


def run_diagnostics(ctx: RunContext, x: torch.Tensor, y: torch.Tensor,
                    ident: dict[str, Any]) -> dict[str, Any]:
    """Per approach (and seed) of ``ctx``'s defenses: the four masking checks (module
    docstring) on images ``x``, ``y``. SPSA's AC_MoP at the middle ε is the defend
    experiment's (``ctx.outcomes[(seed, approach, "spsa", ε)]``, same images) when it ran,
    else its own unit. Returns ``{approach: {"eps", "seeds": {seed: checks}, "flagged":
    [check names flagged for any seed]}}`` (final pass; units only before)."""
    settings, run, seed = ctx.settings, ctx.run, ctx.seed
    cfg = settings["adaptive"]["diagnostics"]
    eps_mid = sorted(settings["eps"])[len(settings["eps"]) // 2]
    spsa_cfg = settings["defend"]["spsa"]
    out: dict[str, Any] = {}
    for a in progress(list(ctx.defenses), desc="diagnostics", unit="model"):
        per = {}
        for s in [s for s in ctx.seeds if s in ctx.defenses[a]]:
            model = ctx.defenses[a][s].augmented
            useed = unit_seed(seed, s, a, "diagnostics")

            def diag(m=model, u=useed):
                return diagnostics_unit(m, ctx.target, x, y, eps_mid, cfg, u)

            meta = dict(run.unit("diagnostics", f"s{s}-{a}", diag,
                                 {"run": ident, "params": cfg, "eps": eps_mid,
                                  "format": UNIT_FORMAT})[1])
            known = ctx.outcomes.get((s, a, "spsa", eps_mid))
            if known is not None:
                meta["ac_mop_spsa"] = float(known["t_ok"].float().mean())
            else:  # its own SPSA, on the first ``spsa_n`` images (default all)
                sseed = unit_seed(seed, s, a, "spsa", eps_mid)
                k = int(cfg.get("spsa_n") or len(x))

                def spsa(m=model, u=sseed, k=k):
                    return spsa_unit(m, x[:k], y[:k], eps_mid, spsa_cfg, u)

                meta |= run.unit("diagnostics", f"s{s}-{a}-spsa", spsa,
                                 {"run": ident, "spsa": spsa_cfg, "eps": eps_mid, "n": k})[1]
                meta["n_spsa"] = min(k, len(x))
            per[str(s)] = masking_checks(meta, cfg, len(y))
        flagged = sorted({f for c in per.values() for f in c["flagged"]})
        out[a] = {"eps": eps_mid, "seeds": per, "flagged": flagged}
    return out


def _direction(p_value: float | None, difference: float | None) -> str | None:
    """"higher", "lower" (Luring's rate against the other's, p < :data:`ALPHA`), "no
    difference", or None without pairs."""
    if p_value is None or difference is None:
        return None
    if p_value < ALPHA and difference != 0:
        return "higher" if difference > 0 else "lower"
    return "no difference"


def _compare(lur: torch.Tensor | None, other: torch.Tensor | None) -> dict[str, Any] | None:
    """McNemar + Newcombe of Luring's per-example booleans against another approach's, as a
    JSON-able dict ``{"luring", "other", "difference", "ci", "p_value", "n", "discordant",
    "direction"}`` (None when either side is missing)."""
    if lur is None or other is None:
        return None
    c = mcnemar(lur, other)
    return {"luring": c.rate_a, "other": c.rate_b, "difference": c.difference,
            "ci": [c.ci_low, c.ci_high], "p_value": c.p_value, "n": c.n,
            "discordant": [c.only_a, c.only_b],
            "direction": _direction(c.p_value, c.difference)}


def paired_verdict(outcomes: dict[tuple, dict[str, torch.Tensor]], attacks: list[str],
                   eps_values: list[float], approaches: list[str], seeds: list[int]
                   ) -> list[dict[str, Any]]:
    """Per attack and ε: Luring against every other approach on the same images (per-example
    outcomes pooled over seeds), on DAC (``"defended"``) and AC_M (``"m_ok"``), with McNemar's
    exact p-value and Newcombe's 95% interval of the difference.
    ``outcomes[(seed, approach, attack, ε)]`` holds (N,) booleans ``"defended"`` and, when
    known, ``"m_ok"`` and ``"t_ok"``.

    Returns one row per attack and ε: ``{"attack", "eps", "other", "luring_dac",
    "other_dac", "difference", "ci", "p_value", "n", "holds", "discordant"}`` against the
    best other approach (highest DAC), and ``"comparisons"``: per other approach ``{"other",
    "best", "excluded", "dac", "ac_m"}`` (each of the last two from :func:`_compare`, its
    ``"direction"`` "higher" / "no difference" / "lower"); ``"ac_mop"``: AC_MoP per approach;
    ``"ac_mop_limit"``: :data:`ATTACK_FAILED_AC_MOP`; ``"attack_failed"``: the approaches
    whose AC_MoP exceeds it (a comparison with one of them is ``excluded``)."""
    rows = []
    others = [a for a in approaches if a != "luring"]
    if "luring" not in approaches or not others:
        return rows
    for attack in attacks:
        for e in eps_values:
            if not all((s, a, attack, e) in outcomes for s in seeds for a in approaches):
                continue

            def pooled(a: str, key: str = "defended", attack: str = attack, e: float = e
                       ) -> torch.Tensor | None:
                parts = [outcomes[(s, a, attack, e)].get(key) for s in seeds]
                if any(p is None for p in parts):
                    return None
                return torch.cat([p.bool().reshape(-1).cpu() for p in parts])

            def share(v: torch.Tensor | None) -> float | None:
                return float(v.float().mean()) if v is not None and v.numel() else None

            ac_mop = {a: share(pooled(a, "t_ok")) for a in approaches}
            failed = [a for a in approaches
                      if ac_mop[a] is not None and ac_mop[a] > ATTACK_FAILED_AC_MOP]
            lur = pooled("luring")
            best = max(others, key=lambda a: (share(pooled(a)) or 0.0, a))
            comparisons = [{"other": a, "best": a == best,
                            "excluded": "luring" in failed or a in failed,
                            "dac": _compare(lur, pooled(a)),
                            "ac_m": _compare(pooled("luring", "m_ok"), pooled(a, "m_ok"))}
                           for a in others]
            cmp = next(c["dac"] for c in comparisons if c["best"])
            holds = cmp["direction"] == "higher"
            rows.append({"attack": attack, "eps": e, "other": best,
                         "luring_dac": cmp["luring"], "other_dac": cmp["other"],
                         "difference": cmp["difference"], "ci": cmp["ci"],
                         "p_value": cmp["p_value"], "n": cmp["n"], "holds": bool(holds),
                         "discordant": cmp["discordant"], "comparisons": comparisons,
                         "ac_mop": ac_mop, "ac_mop_limit": ATTACK_FAILED_AC_MOP,
                         "attack_failed": failed})
    return rows
