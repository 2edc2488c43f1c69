"""Pieces every experiment's units share: per-unit seeds, the attack factory, how many attack
settings share a batched pass, rates from per-example booleans and results rows pooled over
seeds."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from luring.experiments.profiles import step_size
from luring.metrics import Rate, rate
from luring.models import model_device

__all__ = ["unit_seed", "make_attack", "aggregate", "mean_std", "together", "rates",
           "BATCH_IMAGES"]


#: Images per batched pass of the MIM-W grids when ``$LURING_BATCH_IMAGES`` is not set, by
#: device type. On a CPU a forward and backward of T runs fastest at about 128 images (2-core
#: AMD EPYC, mnist T: 1,387 images/s at 128, 1,177 at 50, 800 at 1,152), so settings are
#: grouped only up to that; a GPU wants large launches.
BATCH_IMAGES = {"cpu": 128, "cuda": 1024}


def together(n: int, model: nn.Module | None = None) -> int:
    """How many attack settings share one batched pass over ``n`` images (MIM-W grids):
    ``$LURING_BATCH_IMAGES`` images per pass, by default :data:`BATCH_IMAGES` for the device
    of ``model``'s first parameter or buffer (CPU without one). Results do not depend on it
    (:func:`luring.attacks.batched.run_together`), only speed and memory do."""
    import os

    dev = model_device(model)
    kind = dev.type if dev is not None else "cpu"
    default = BATCH_IMAGES.get(kind, BATCH_IMAGES["cuda"])
    try:
        cap = int(os.environ.get("LURING_BATCH_IMAGES", str(default)))
    except ValueError:
        cap = default
    return max(1, cap // max(n, 1))


def unit_seed(seed: int, *parts: object) -> int:
    """A seed for one unit derived from the run seed and the unit's name, so that a unit's
    randomness does not depend on which units ran before it in the same process."""
    h = hashlib.sha256(("/".join(map(str, (seed, *parts)))).encode()).digest()
    return int.from_bytes(h[:4], "little")


def make_attack(name: str, model: nn.Module, eps: float, params: dict[str, Any], seed: int):
    """Build attack ``name`` on ``model`` from a profile's parameters (the profile names
    step sizes ``step_size``/``step_size_l2`` and SPSA's iteration count ``iterations``)."""
    from luring import attacks as A

    steps = int(params.get("steps", 1))
    if name == "fgsm":
        return A.FGSM(model, eps=eps, seed=seed)
    if name in ("pgd", "mim"):
        cls = A.PGD if name == "pgd" else A.MIM
        extra = {"mu": params.get("mu", 1.0)} if name == "mim" else {}
        return cls(model, eps=eps, steps=steps, alpha=step_size(params["step_size"], eps, steps),
                   seed=seed, **extra)
    if name == "mim-l2":
        return A.MIM(model, eps=eps, norm="l2", eps_l2=params["eps_l2"], steps=steps,
                     mu=params.get("mu", 1.0), alpha=float(params["step_size_l2"]), seed=seed)
    if name == "spsa":
        return A.SPSA(model, eps=eps, steps=params["iterations"], samples=params["samples"],
                      delta=params["delta"], lr=params["lr"], seed=seed)
    if name == "eco":
        return A.ECO(model, eps=eps, max_queries=params["max_queries"],
                     block_size=params["block_size"], block_batch=params["block_batch"],
                     loss=params["loss"], early_stop=params["early_stop"], seed=seed)
    if name == "cw-l2":
        return A.CWL2(model, binary_steps=params["binary_steps"], steps=params["iterations"],
                      lr=params["lr"], const=params["initial_const"], seed=seed)
    raise ValueError(f"unknown attack {name!r}")


def rates(t_ok: torch.Tensor, m_ok: torch.Tensor, defended: torch.Tensor, *,
          given_fooled: bool = False) -> dict[str, Rate]:
    """AC_MoP, AC_M and DAC (:class:`~luring.metrics.Rate` each) from per-example booleans
    (N,); with ``given_fooled`` also ``ac_m_given_fooled``, M's accuracy on the examples
    that fool T."""
    out = {"ac_mop": rate(t_ok), "ac_m": rate(m_ok), "dac": rate(defended)}
    if given_fooled:
        out["ac_m_given_fooled"] = rate(m_ok, where=~t_ok)
    return out


def rates_of(unit: dict[str, torch.Tensor], prefix: str = "") -> dict[str, Rate]:
    """:func:`rates` of a stored unit's ``{prefix}_t_ok``, ``{prefix}_m_ok`` and
    ``{prefix}_defended`` booleans (N,) (plain ``t_ok`` … with no prefix): ``"best"`` for
    the kept setting, ``"all"`` for the per-example worst case over every setting."""
    key = f"{prefix}_" if prefix else ""
    return rates(unit[f"{key}t_ok"], unit[f"{key}m_ok"], unit[f"{key}defended"])


def mean_std(vals: list[float]) -> tuple[float, float | None]:
    """Mean over seeds and the sample standard deviation (None for a single value)."""
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5


def aggregate(experiment: str, approach: str, attack: str, eps: float,
              per_seed: list[dict[str, Any]], extra: dict[str, Any] | None = None,
              seeds: list[int] | None = None) -> dict[str, Any]:
    """One results row from per-seed Rates (``per_seed[i][metric]`` a
    :class:`~luring.metrics.Rate` for seed ``seeds[i]``).

    The printed value of each metric is pooled over every seed's examples (Σk / Σn), so its
    Wilson interval ``ci`` and ``n`` (Σn) belong to it; with equal n per seed it equals the
    mean over seeds. With several seeds the row also holds ``mean`` and ``std`` (sample std
    over seeds) per metric, and ``per_seed``: ``{metric: [{"seed", "value", "k", "n"}]}``."""
    seeds = list(seeds) if seeds is not None else list(range(len(per_seed)))
    row: dict[str, Any] = {"experiment": experiment, "approach": approach, "attack": attack,
                           "eps": eps, "n": None, "ac_mop": None, "ac_m": None, "dac": None,
                           "dr": None, "iar": None, "ci": {}}
    for key in per_seed[0]:
        rates = [r[key] for r in per_seed]
        pooled = Rate.of(sum(r.k for r in rates), sum(r.n for r in rates))
        row[key] = pooled.value
        row["n"] = pooled.n if row["n"] is None else row["n"]
        row["ci"][key] = [pooled.ci_low, pooled.ci_high]
        if len(per_seed) > 1:
            vals = [r.value for r in rates if r.value is not None]
            mean, std = mean_std(vals) if vals else (None, None)
            row.setdefault("mean", {})[key] = mean
            row.setdefault("std", {})[key] = std if std is not None else (0.0 if vals else None)
            row.setdefault("per_seed", {})[key] = [
                {"seed": s, "value": r.value, "k": r.k, "n": r.n}
                for s, r in zip(seeds, rates, strict=True)]
    if len(per_seed) > 1:
        row["n_per_seed"] = [next(iter(r.values())).n for r in per_seed]
    if extra:
        row.update(extra)
    return row
