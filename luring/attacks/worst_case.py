"""Worst-case transfer search over the MIM family (the paper's MIM-W).

The adversary crafts examples on a *source* model (T, the one attacked) and they are judged
on a *target* M. For every setting — MIM, DIM for each p, MIM-TI for each kernel size,
DIM-TI for each (p, size) — each example gets the booleans

* ``m_correct = M(x') == y``, ``t_correct = T(x') == y``, ``agree = T(x') == M(x')``,
* ``defended = m_correct | ~agree`` (the complement of "M fooled and T agrees", so that
  DAC = mean(defended)).

The result has the per-setting summary, the single best setting for the adversary (lowest
DAC, then lowest AC_M, then first in order) with its examples and booleans, and the
per-example worst case over all settings (defended only if it survives every setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from luring.attacks.base import check_float, check_int, eval_frozen, model_device
from luring.attacks.batched import batchable, run_together
from luring.attacks.bsr import BSR
from luring.attacks.dim import DIM
from luring.attacks.ensemble import Ensemble, with_ensemble_loss
from luring.attacks.iterative import IterativeAttack
from luring.attacks.losses import check_loss
from luring.attacks.mim import MIM
from luring.attacks.sia import SIA
from luring.attacks.ti import DIMTI, MIMTI
from luring.attacks.transfer import NIFGSM, SINIFGSM, VMIFGSM, VNIFGSM
from luring.errors import LuringError
from luring.models import predict_labels
from luring.utils import check_images
from luring.utils import progress as progress_bar

__all__ = ["worst_case_search", "default_settings", "WorstCaseResult", "SettingResult"]

P_VALUES = tuple(round(0.1 * i, 1) for i in range(1, 11))
KERNEL_SIZES = (3, 5, 10, 15)
_CLASSES = {"mim": MIM, "dim": DIM, "mim-ti": MIMTI, "dim-ti": DIMTI, "ni-fgsm": NIFGSM,
            "si-ni-fgsm": SINIFGSM, "vmi-fgsm": VMIFGSM, "vni-fgsm": VNIFGSM,
            "sia": SIA, "bsr": BSR}


def default_settings(p_values: tuple[float, ...] = P_VALUES,
                     kernel_sizes: tuple[int, ...] = KERNEL_SIZES) -> list[dict[str, Any]]:
    """The paper's grid: MIM; DIM per p; MIM-TI per size; DIM-TI per (p, size)."""
    out: list[dict[str, Any]] = [{"attack": "mim"}]
    out += [{"attack": "dim", "p": p} for p in p_values]
    out += [{"attack": "mim-ti", "kernel_size": k} for k in kernel_sizes]
    out += [{"attack": "dim-ti", "p": p, "kernel_size": k} for p in p_values for k in kernel_sizes]
    return out


@dataclass
class SettingResult:
    """One setting: its attack name, resolved parameters and rates over the n examples."""

    attack: str
    params: dict[str, Any]
    ac_mop: float          # accuracy of the source T = M∘P on x'
    ac_m: float            # accuracy of the target M on x'
    dac: float             # mean(defended)
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "params": self.params, "ac_mop": self.ac_mop,
                "ac_m": self.ac_m, "dac": self.dac, "n": self.n}


@dataclass
class WorstCaseResult:
    """Output of :func:`worst_case_search` (booleans are (N,) CPU tensors, x_adv (N, C, H, W)).

    ``settings``: per-setting summaries in search order. ``best_index``/``best``: the best
    setting for the adversary; ``best_x_adv`` and ``best_m_correct``, ``best_t_correct``,
    ``best_agree``, ``best_defended`` its examples and booleans. ``ac_m_all`` (M correct under
    every setting), ``ac_mop_all`` (T correct under every setting) and ``defended_all``
    (defended under every setting) are the per-example worst case; ``ac_m_worst`` and
    ``dac_worst`` their means."""

    settings: list[SettingResult]
    best_index: int
    best_x_adv: torch.Tensor
    best_m_correct: torch.Tensor
    best_t_correct: torch.Tensor
    best_agree: torch.Tensor
    best_defended: torch.Tensor
    ac_m_all: torch.Tensor
    defended_all: torch.Tensor
    ac_mop_all: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> SettingResult:
        return self.settings[self.best_index]

    @property
    def ac_m_worst(self) -> float:
        return float(self.ac_m_all.float().mean()) if len(self.ac_m_all) else float("nan")

    @property
    def dac_worst(self) -> float:
        return float(self.defended_all.float().mean()) if len(self.defended_all) else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (no tensors)."""
        return {"settings": [s.to_dict() for s in self.settings], "best_index": self.best_index,
                "best": self.best.to_dict(), "ac_m_worst": self.ac_m_worst,
                "dac_worst": self.dac_worst, "n": len(self.defended_all), **self.meta}


def _make(setting: dict[str, Any], source: nn.Module, common: dict[str, Any]) -> IterativeAttack:
    kind = setting.get("attack")
    if kind not in _CLASSES:
        raise LuringError(f"unknown worst-case setting attack {kind!r}; choose one of "
                          f"{', '.join(_CLASSES)}")
    extra = {k: v for k, v in setting.items() if k != "attack"}
    cls = _CLASSES[kind]
    grad_model = common.get("grad_model")
    if isinstance(grad_model, Ensemble) and grad_model.mode == "loss":
        cls = with_ensemble_loss(cls)   # the per-model loss of a loss-mode ensemble
    try:
        return cls(source, **{**common, **extra})
    except TypeError as exc:
        raise LuringError(f"bad worst-case setting {setting}: {exc}") from None


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    with eval_frozen(model):
        return predict_labels(model, x, batch_size or max(len(x), 1),
                              model_device(model) or x.device)


def worst_case_search(source: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      eps: float, *, steps: int, mu: float = 1.0, alpha: float = 0.01,
                      p_values: tuple[float, ...] = P_VALUES,
                      kernel_sizes: tuple[int, ...] = KERNEL_SIZES, seed: int = 0,
                      batch_size: int | None = None, progress: bool = True,
                      settings: list[dict[str, Any]] | None = None,
                      use_labels: bool = False, loss: str = "ce", kappa: float = 0.0,
                      grad_model: nn.Module | None = None, together: int = 1
                      ) -> WorstCaseResult:
    """Run the MIM-W grid on ``source`` and judge every setting on ``target``.

    Args:
        source: the attacked model T (logits). target: the model M (logits).
        x: float (N, C, H, W) in [0, 1]. y: int (N,) true labels (for the rates).
        eps: l∞ bound in [0, 1]. steps, mu, alpha: MIM parameters shared by all settings.
        p_values, kernel_sizes: the grid (ignored when ``settings`` is given).
        settings: explicit list of ``{"attack": NAME, **params}``, NAME one of ``mim``,
            ``dim``, ``mim-ti``, ``dim-ti`` (or the transfer attacks ``ni-fgsm``,
            ``si-ni-fgsm``, ``vmi-fgsm``, ``vni-fgsm``, and the input-transformation
            attacks ``sia``, ``bsr``). A setting's own ``steps`` or ``alpha`` replace the
            shared ones (``"alpha": None``: the attack's default, ``eps / steps`` for SIA
            and BSR, as their papers run them).
        seed, batch_size: passed to every attack. progress: show a bar over settings.
        use_labels: attack ``y`` instead of the source's own predictions (the authors passed
            no labels, so the default attacks T's predictions).
        loss, kappa, grad_model: passed to every setting (``"ce"`` or ``"margin"`` with its
            cap; a gradient source such as ``bpda(source)`` or an
            :class:`~luring.attacks.ensemble.Ensemble` of the source with other models; a
            ``mode="loss"`` ensemble makes every setting ascend the per-model loss).
            Labels and every judgement still come from ``source`` and ``target``
            themselves. With the defaults the
            result is exactly the plain search's.
        together: how many settings share one batched forward/backward per step
            (:func:`luring.attacks.batched.run_together`: S settings × N images per pass;
            those that cannot, SI-NI and VMI/VNI, run alone). The result is the same for any
            value; larger ones keep a GPU busy. 1 (default) runs one setting at a time.
    """
    check_images(x, name="x")
    y = torch.as_tensor(y).long().cpu()
    if y.shape != (len(x),):
        raise LuringError(f"labels must have shape ({len(x)},), got {tuple(y.shape)}")
    check_float("eps", eps, 0.0, 1.0)
    check_int("steps", steps, 0)
    loss, kappa = check_loss(loss, kappa)
    grid = default_settings(tuple(p_values), tuple(kernel_sizes)) if settings is None \
        else [dict(s) for s in settings]
    if not grid:
        raise LuringError("worst_case_search needs at least one setting")
    common = {"eps": eps, "steps": steps, "mu": mu, "alpha": alpha, "seed": seed,
              "batch_size": batch_size, "loss": loss, "kappa": kappa, "grad_model": grad_model}
    attacks = [_make(s, source, common) for s in grid]          # validate all before running
    results: list[SettingResult] = []
    best: tuple[float, float, int] | None = None
    best_data: tuple[torch.Tensor, ...] = ()
    ac_m_all = torch.ones(len(x), dtype=torch.bool)
    ac_mop_all = torch.ones(len(x), dtype=torch.bool)
    defended_all = torch.ones(len(x), dtype=torch.bool)
    # Without labels every setting attacks the source's own clean predictions: computed once
    # here (same chunks as Attack.predict, so the same labels) instead of once per setting.
    attack_y = y if use_labels else _predict(source, x, batch_size)
    together = check_int("together", together, 1)
    bar = _progress_iter(attacks, progress)
    done: dict[int, torch.Tensor] = {}
    for i, atk in enumerate(bar):
        if i not in done and together > 1 and batchable(atk):
            group = [j for j in range(i, len(attacks)) if batchable(attacks[j])
                     and attacks[j].model is atk.model and attacks[j].steps == atk.steps
                     ][:together]
            for j, out in zip(group, run_together([attacks[j] for j in group], x,
                                                  attack_y.to(x.device)), strict=True):
                done[j] = out.cpu()
        x_adv = done.pop(i) if i in done else atk(x, attack_y).cpu()
        pred_m, pred_t = _predict(target, x_adv, batch_size), _predict(source, x_adv, batch_size)
        m_ok, t_ok, agree = pred_m == y, pred_t == y, pred_t == pred_m
        defended = m_ok | ~agree
        n = len(x)
        rates = [float(b.float().mean()) if n else float("nan") for b in (t_ok, m_ok, defended)]
        results.append(SettingResult(atk.name, atk.params(), *rates, n=n))
        ac_m_all &= m_ok
        ac_mop_all &= t_ok
        defended_all &= defended
        key = (rates[2], rates[1], i)
        if best is None or key < best:
            best, best_data = key, (x_adv, m_ok, t_ok, agree, defended)
    assert best is not None
    meta: dict[str, Any] = {"eps": eps, "steps": steps, "mu": mu, "alpha": alpha, "seed": seed,
                            "use_labels": use_labels}
    if loss != "ce":
        meta.update(loss=loss, kappa=kappa)
    if grad_model is not None:
        meta["grad_model"] = type(grad_model).__name__
    return WorstCaseResult(results, best[2], *best_data, ac_m_all=ac_m_all,
                           defended_all=defended_all, ac_mop_all=ac_mop_all, meta=meta)


def _progress_iter(items: list, show: bool):
    return progress_bar(items, total=len(items), desc="worst-case search", unit="setting",
                        disable=None if show else True)
