"""The attacker's own model S: the public-model transfer row of the adaptive experiment.

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

from luring.attacks import worst_case_search
from luring.experiments.common import aggregate, rates, unit_seed
from luring.experiments.context import Result, RunContext
from luring.experiments.family import KEYS
from luring.experiments.profiles import attack_steps, mimw_settings
from luring.models import predict_labels
from luring.utils import fingerprint, progress

__all__ = ["run_public", "public_settings", "judge"]


def public_settings(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The attacks crafted on S alone: the MIM-W grid of ``cfg`` and its transforms."""
    return mimw_settings(cfg) + [dict(t) for t in cfg.get("transforms") or []]


def _craft(attacker, target, x, y, eps, cfg, seed) -> list[torch.Tensor]:
    """Per public setting, the examples crafted on S (each setting its own search)."""
    steps, alpha = attack_steps(cfg, eps)
    return [worst_case_search(attacker, target, x, y, eps, steps=steps, mu=cfg["mu"],
                              alpha=alpha, settings=[s], seed=seed, progress=False).best_x_adv
            for s in public_settings(cfg)]


def judge(model, target, crafted: list[torch.Tensor], y: torch.Tensor
           ) -> dict[str, torch.Tensor]:
    """Per-example worst case over the crafted sets, judged on T (``model``) and M."""
    y = y.cpu()
    every = None
    for x_adv in crafted:
        t_pred, m_pred = predict_labels(model, x_adv).cpu(), predict_labels(target, x_adv).cpu()
        b = {"t_ok": t_pred == y, "m_ok": m_pred == y,
             "defended": (m_pred == y) | (t_pred != m_pred)}
        every = b if every is None else {k: every[k] & b[k] for k in KEYS}
    assert every is not None
    return every


def run_public(ctx: RunContext, x: torch.Tensor, y: torch.Tensor,
               ident: dict[str, Any]) -> Result:
    """Run (or reuse) the public-model units of ``ctx``'s defenses with the attacker's
    models ``ctx.attackers`` (``{seed: {"model": S, ...}}``); ``x``, ``y``: the adaptive
    experiment's images. Returns the ``public`` rows (per approach and ε: AC_MoP = T's
    accuracy, AC_M, DAC on the examples crafted on S; ``attacker``: S's test accuracy and
    number of training images) and the per-example booleans
    ``{(seed, approach, "public", ε): ...}`` (final pass; units only before)."""
    cfg, eps_values = ctx.settings["adaptive"], ctx.eps
    pairs = ctx.pairs()
    if not (cfg.get("attacker") or {}).get("public") or \
            not all(s in ctx.attackers for s, _ in pairs):
        return Result()
    crafted: dict[tuple[int, float], list[torch.Tensor]] = {}
    units: dict[tuple[int, str], tuple] = {}
    for s, a in progress(pairs, desc="public model", unit="model"):
        sm = ctx.attackers[s]["model"]

        def work(m=ctx.defenses[a][s].augmented, s=s, sm=sm):
            out = {}
            for e in eps_values:
                if (s, e) not in crafted:
                    crafted[(s, e)] = _craft(sm, ctx.target, x, y, e, cfg,
                                             unit_seed(ctx.seed, s, "public", e))
                out |= {f"eps{e}_{k}": v for k, v in judge(m, ctx.target, crafted[(s, e)],
                                                            y).items()}
            return out, {"settings": public_settings(cfg)}

        units[(s, a)] = ctx.run.unit("adaptive", f"s{s}-{a}-public", work,
                                     {"run": ident, "params": {k: cfg[k] for k in (
                                         "steps", "step_size", "mu", "p_values",
                                         "kernel_sizes", "transforms")},
                                      "attacker": fingerprint(sm), "eps": eps_values})
    if not ctx.final:
        return Result()
    seeds, out = ctx.seeds, Result()
    # S's training time is in the run's timings.json (results.json holds no timing: a
    # resumed run writes the same bytes)
    info = {"attacker": {"test_accuracy": [ctx.attackers[s]["test_accuracy"] for s in seeds],
                         "n_train": ctx.attackers[seeds[0]]["n_train"],
                         "settings": public_settings(cfg)}}
    for a in ctx.defenses:
        for e in eps_values:
            per = []
            for s in seeds:
                t, _ = units[(s, a)]
                b = {k: t[f"eps{e}_{k}"] for k in KEYS}
                out.outcomes[(s, a, "public", e)] = b
                per.append(rates(**b, given_fooled=True))
            out.rows.append(aggregate("adaptive", a, "public", e, per, info, seeds=seeds))
    return out
