"""CW-L2 distortion (table 9, figure 3 left): the l2, l∞ and l0 distortion CW-L2 needs to
fool M and each approach's T.

On test images correctly classified by M and every T (the first seed's models). Units:
``distortion/<model>``; each unit's identity (images, models, seed, parameters) is stored
with it, so a unit made for other images or models is recomputed, never reused.
"""

from __future__ import annotations

from typing import Any

from luring.experiments.common import make_attack, unit_seed
from luring.experiments.context import Result, RunContext
from luring.metrics import distortion_summary
from luring.models import predict_labels
from luring.utils import progress

__all__ = ["SUMMARY", "run", "departures"]

#: The experiment in one line (the CLI's help).
SUMMARY = "CW-L2 distortion (table 9, figure 3 left)"



def run(ctx: RunContext) -> Result:
    """CW-L2 on M and on each T of the first seed: section ``distortion``, table-9 rows
    ``{"model", "n", "n_success", "success_rate", "mean_l2", "mean_linf", "mean_l0", "l0"}``
    (means over successful examples)."""
    first = ctx.first()
    if not first and not ctx.final:
        return Result()
    cfg, seed = ctx.settings["distortion"], ctx.seed
    x, y, ident = ctx.images(cfg["n"], "distortion")
    y = y.cpu()
    models = {"target": ctx.target} | {a: d.augmented for a, d in first.items()}
    rows = []
    for name, model in progress(list(models.items()), desc="distortion", unit="model"):
        def craft(model=model, name=name):
            attack = make_attack("cw-l2", model, 1.0, cfg, unit_seed(seed, "cw", name))
            x_adv = attack(x, y)
            return {"x_adv": x_adv, "success": predict_labels(model, x_adv) != y}, \
                {"params": attack.params()}

        data, _ = ctx.run.unit("distortion", name, craft, {"run": ident, "params": cfg})
        rows.append({"model": name} | distortion_summary(data["x_adv"], x, data["success"]))
    return Result(sections={"distortion": rows})


def departures(settings: dict[str, Any]) -> list[str]:
    """None of its own (CW-L2's parameters are the profile's, disclosed with it)."""
    return []
