"""The transfer search of appendices H.2 and I: FGSM and the MIM-W grid crafted on a public
model, transferred to M, with a pluggable detector.

Tables 19 and 20 report, per ε, the values "among FGSM, MIM, DIM, MIM-TI and DIM-TI" best for
the adversary. Each setting's examples x' are judged on M (``m_ok``: M(x') = y), on the public
model (``t_ok``) and by the defense's detector (``flagged``); an example is *defended* when it
is flagged or M classifies it correctly, so that DAC = mean(defended). For T = M∘P the
detector is the paper's rule (flagged when T(x') ≠ M(x')), which makes this the DAC of eq. 4;
for a trapdoored model it is the trapdoor's own detector. Beside it, every setting is also
judged with the paper's rule applied to the public model (``rule_defended``: M right, or its
label ≠ M's), so that a trapdoored model can be read both ways; for T = M∘P the two coincide.
The best setting is the one of lowest DAC, then lowest AC_M, then first in order (as
:func:`luring.attacks.worst_case_search` chooses); the per-example worst case is defended only
if it survives every setting.

The MIM-W settings attack the public model's own predictions (as MIM-W does) with the same
seed and parameters as :func:`~luring.attacks.worst_case_search`, and share one batched pass
per step (:func:`luring.attacks.batched.run_together`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from luring.attacks.batched import batchable, run_together
from luring.attacks.registry import create
from luring.experiments.common import together
from luring.experiments.profiles import attack_steps, mimw_settings
from luring.experiments.store import Unit
from luring.models import predict_labels

__all__ = ["transfer_search", "search_settings", "paper_rule"]


def search_settings(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """FGSM, then the MIM-W grid of ``cfg`` (a profile's ``defend.mim_w``)."""
    return [{"attack": "fgsm"}] + mimw_settings(cfg)


def paper_rule(source: nn.Module, target: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The paper's detector for T = M∘P: flag x' (N, C, H, W) when T(x') ≠ M(x'); bool (N,)."""
    return lambda x_adv: predict_labels(source, x_adv) != predict_labels(target, x_adv)


def transfer_search(source: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    eps: float, cfg: dict[str, Any], seed: int,
                    flag: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Unit:
    """Run every setting of :func:`search_settings` on ``source`` and judge it on ``target``.

    x: float32 (N, C, H, W) in [0, 1] on the models' device; y: int64 (N,) true labels (CPU);
    eps: l∞ bound in [0, 1]; cfg: ``steps``, ``step_size``, ``mu``, ``p_values``,
    ``kernel_sizes``; ``flag(x_adv) -> bool (N,)`` the detector (default :func:`paper_rule`).
    Returns (tensors, meta), bool (N,) tensors: ``best_{t_ok,m_ok,flagged,defended}`` of the
    best setting, ``all_{t_ok,m_ok,defended}`` of the per-example worst case; with the
    paper's rule on the public model, ``rule_best_defended`` (M right or labels differ, of the
    setting best for the adversary under that rule) and ``rule_all_defended``. meta: ``best``
    and ``rule_best`` (the settings) and ``per_setting`` (attack, params and rates of each,
    ``dac_rule`` the DAC under the paper's rule)."""
    flag = flag or paper_rule(source, target)
    steps, alpha = attack_steps(cfg, eps)
    grid = search_settings(cfg)
    attacks = []
    for s in grid:
        extra = {k: v for k, v in s.items() if k != "attack"}
        if s["attack"] == "fgsm":
            attacks.append(create("fgsm", source, eps=eps, seed=seed))
        else:
            attacks.append(create(s["attack"], source, eps=eps, steps=steps, mu=cfg["mu"],
                                  alpha=alpha, seed=seed, **extra))
    labels = predict_labels(source, x).to(x.device)  # the source's own answers, as MIM-W
    y = y.cpu()
    size = together(len(x), source)
    done: dict[int, torch.Tensor] = {}
    best: tuple[float, float, int] | None = None
    rule_best: tuple[float, float, int] | None = None
    best_out: dict[str, torch.Tensor] = {}
    rule_out = torch.ones(len(x), dtype=torch.bool)
    every = {k: torch.ones(len(x), dtype=torch.bool)
             for k in ("t_ok", "m_ok", "defended", "rule_defended")}
    per_setting = []
    for i, atk in enumerate(attacks):
        if i not in done and size > 1 and batchable(atk):
            group = [j for j in range(i, len(attacks)) if batchable(attacks[j])
                     and attacks[j].steps == atk.steps][:size]
            for j, out in zip(group, run_together([attacks[j] for j in group], x, labels),
                              strict=True):
                done[j] = out
        x_adv = done.pop(i) if i in done else atk(x, labels)
        t_pred, m_pred = predict_labels(source, x_adv), predict_labels(target, x_adv)
        t_ok, m_ok = t_pred == y, m_pred == y
        flagged = torch.as_tensor(flag(x_adv)).cpu().bool()
        out = {"t_ok": t_ok, "m_ok": m_ok, "flagged": flagged, "defended": m_ok | flagged,
               "rule_defended": m_ok | (t_pred != m_pred)}
        rates = {k: float(v.float().mean()) if len(v) else float("nan") for k, v in out.items()}
        per_setting.append({"attack": atk.name, "params": atk.params(), "ac_mop": rates["t_ok"],
                            "ac_m": rates["m_ok"], "dac": rates["defended"],
                            "flagged": rates["flagged"], "dac_rule": rates["rule_defended"],
                            "n": len(x)})
        for k in every:
            every[k] &= out[k]
        key = (rates["defended"], rates["m_ok"], i)
        if best is None or key < best:
            best, best_out = key, out
        key = (rates["rule_defended"], rates["m_ok"], i)
        if rule_best is None or key < rule_best:
            rule_best, rule_out = key, out["rule_defended"]
    assert best is not None and rule_best is not None
    tensors = {f"best_{k}": v for k, v in best_out.items() if k != "rule_defended"}
    tensors |= {f"all_{k}": v for k, v in every.items() if k != "rule_defended"}
    tensors |= {"rule_best_defended": rule_out, "rule_all_defended": every["rule_defended"]}
    return tensors, {"best": dict(grid[best[2]]), "rule_best": dict(grid[rule_best[2]]),
                     "per_setting": per_setting}
