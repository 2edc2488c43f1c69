"""The experiments a run knows, in the order they run and report: the only place that lists
them.

An experiment is a module with ``run(ctx: RunContext) -> Result`` and ``departures(settings)
-> list[str]`` (its own lines for "Differences from the paper"), ``SUMMARY`` (one line, the
CLI's help) and optionally ``APPROACHES`` (the run's approaches it needs, default all),
``SHARDED = False`` (under torchrun it runs once, in rank 0's final pass, instead of first on
each process's share of the defenses) and ``wants_attacker(settings) -> bool`` (it uses the
attacker's own model S). It never imports another experiment; what it shares with others
lives below it (:mod:`~luring.experiments.context`, :mod:`~luring.experiments.family`,
:mod:`~luring.experiments.search`, ...). Adding one = one module and one :func:`register`
call (a test may register its own and :func:`unregister` it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from luring.experiments import (
    adaptive,
    advtrain,
    characterize,
    defend,
    distortion,
    logits,
    saliency,
    trapdoor_exp,
)
from luring.experiments.context import Result, RunContext

__all__ = ["Experiment", "register", "unregister", "experiments", "get", "names"]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name (``--experiments``, the CLI command), its module
    and whether a run without ``--experiments`` runs it (``default``)."""

    name: str
    module: ModuleType
    default: bool = False

    @property
    def summary(self) -> str:
        return str(getattr(self.module, "SUMMARY", self.name))

    @property
    def sharded(self) -> bool:
        return bool(getattr(self.module, "SHARDED", True))

    def run(self, ctx: RunContext) -> Result:
        return self.module.run(ctx)

    def departures(self, settings: dict[str, Any]) -> list[str]:
        return list(self.module.departures(settings))

    def approaches(self, settings: dict[str, Any]) -> list[str]:
        """The run's approaches this experiment needs (in the profile's order)."""
        wanted = getattr(self.module, "APPROACHES", None)
        return [a for a in settings["approaches"] if wanted is None or a in wanted]

    def wants_attacker(self, settings: dict[str, Any]) -> bool:
        fn = getattr(self.module, "wants_attacker", None)
        return bool(fn(settings)) if fn is not None else False


_REGISTRY: dict[str, Experiment] = {}


def register(name: str, module: ModuleType, *, default: bool = False) -> Experiment:
    """Add an experiment (after those registered before it). A second one of the same name is
    a ValueError; the module must have ``run`` and ``departures``."""
    if name in _REGISTRY:
        raise ValueError(f"experiment {name!r} is already registered")
    missing = [f for f in ("run", "departures") if not callable(getattr(module, f, None))]
    if missing:
        raise ValueError(f"module {module.__name__} has no {' or '.join(missing)}()")
    _REGISTRY[name] = Experiment(name, module, default)
    return _REGISTRY[name]


def unregister(name: str) -> None:
    """Remove an experiment (tests)."""
    _REGISTRY.pop(name, None)


def experiments() -> list[Experiment]:
    """Every registered experiment, in run order."""
    return list(_REGISTRY.values())


def get(name: str) -> Experiment:
    return _REGISTRY[name]


def names(default: bool | None = None) -> tuple[str, ...]:
    """Registered names in run order: all, the default ones (``True``) or the others."""
    return tuple(e.name for e in _REGISTRY.values() if default is None or e.default == default)


# Sections 3 and 4, the adaptive evaluation, table 9, table 10 and figure 3: run by default.
for _name, _module in (("characterize", characterize), ("defend", defend),
                       ("adaptive", adaptive), ("distortion", distortion),
                       ("logits", logits), ("saliency", saliency)):
    register(_name, _module, default=True)
# Appendices H.2 (tables 18-19) and I (table 20): on request.
register("advtrain", advtrain)
register("trapdoor", trapdoor_exp)
