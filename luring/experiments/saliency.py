"""Saliency maps (figure 3 right): the clean images, ∇ₓCE(M(x), y) and ∇ₓP(x) for each
approach's P of the first seed. Unit: ``saliency/all``."""

from __future__ import annotations

from typing import Any

from luring.experiments.context import Result, RunContext
from luring.metrics import component_saliency, input_saliency

__all__ = ["SUMMARY", "run", "departures", "SHARDED"]

#: The experiment in one line (the CLI's help).
SUMMARY = "saliency maps ∇ₓP(x) (figure 3 right)"


#: Run only in the final pass (one unit for every approach).
SHARDED = False


def run(ctx: RunContext) -> Result:
    """Store the maps in ``units/saliency/all.safetensors`` and point to it (section
    ``saliency``)."""
    x, y, ident = ctx.images(ctx.settings["saliency"]["n"], "saliency")
    first = ctx.first()

    def compute():
        maps = {"image": x, "input_gradient": input_saliency(ctx.target, x, y)}
        for name, d in first.items():
            maps[f"component_{name}"] = component_saliency(d.component, x)
        return maps, {}

    ctx.run.unit("saliency", "all", compute, {"run": ident})
    return Result(sections={"saliency": {"unit": "units/saliency/all.safetensors"}})


def departures(settings: dict[str, Any]) -> list[str]:
    """None of its own."""
    return []
