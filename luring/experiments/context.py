"""What every experiment of one run shares (:class:`RunContext`) and what each returns
(:class:`Result`).

The run (:mod:`luring.experiments.reproduce`) builds one context once its models exist: the
run directory, the data set, the resolved settings, the seeds, M, every approach's defense
per seed, the attacker's models, the test split and the fingerprints that identify units.
Each experiment reads it (``run(ctx) -> Result``) and never writes into it or into another
experiment's results; the run merges the results. Per-example outcomes of the experiments
that ran before one are readable in ``ctx.outcomes`` (the run adds each experiment's after it
returns): the adaptive experiment's worst case over every attack joins the defend
experiment's there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from luring.data import load
from luring.errors import LuringError
from luring.experiments.store import RunDir
from luring.models import predict_labels
from luring.utils import fingerprint, read_json

__all__ = ["RunContext", "Result", "select_images"]


def select_images(x: torch.Tensor, y: torch.Tensor, models: list[nn.Module], n: int,
                  seed: int) -> torch.Tensor:
    """Indices (≤ n, int64) of test images that every model in ``models`` classifies
    correctly, taken in a seeded random order (test splits may be ordered by class)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    ok = torch.ones(len(x), dtype=torch.bool)
    for m in models:
        ok &= predict_labels(m, x) == y
    return order[ok[order]][:n]


@dataclass
class Result:
    """What one experiment returns: ``rows`` (appended to ``results["rows"]``), ``sections``
    (top-level entries of results.json: ``{"distortion": [...]}``), ``outcomes`` (per-example
    booleans ``{(seed, approach, attack, ε): {"t_ok", "m_ok", "defended"}}`` for the paired
    verdict and later experiments), ``roc`` (``{attack: {str(ε): {approach: entry}}}``) and
    ``departures`` (lines for "Differences from the paper" that depend on what it
    measured)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[tuple, dict[str, torch.Tensor]] = field(default_factory=dict)
    roc: dict[str, Any] = field(default_factory=dict)
    departures: list[str] = field(default_factory=list)


class RunContext:
    """One run's shared state (read-only for experiments).

    ``defenses``: ``{approach: {seed: Defense}}`` — under torchrun, in a process's first pass,
    only its share (``final`` False: the experiment computes its units; of what it returns
    the run uses only ``outcomes``, which later experiments of the same pass may read); in
    the final pass, every approach and seed. ``seeds``: the run's seeds,
    ``seed`` the first (the run seed). ``eligible`` (the test images every model classifies
    correctly, in the seeded order) and ``model_fps`` are computed once, over every model of
    the run, so that a unit's identity is the same in every pass."""

    def __init__(self, *, run: RunDir, dataset: str, profile: str, settings: dict[str, Any],
                 seeds: list[int], target: nn.Module, defenses: dict[str, dict[int, Any]],
                 test: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                 data_dir: str | None, fps: dict[str, str], precision: str,
                 attackers: dict[int, dict[str, Any]] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.run, self.dataset, self.profile, self.settings = run, dataset, profile, settings
        self.seeds, self.seed = list(seeds), seeds[0]
        self.target, self.defenses = target, defenses
        self.x_test, self.y_test = test
        self.device, self.data_dir, self.fps, self.precision = device, data_dir, fps, precision
        self.attackers = attackers or {}
        self.log = log
        self.final = True
        self.outcomes: Mapping[tuple, dict[str, torch.Tensor]] = MappingProxyType({})
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self.model_fps = {"target": fingerprint(target)} | {
            a: {s: fingerprint(d.augmented) for s, d in per.items()}
            for a, per in defenses.items()}
        models = [target]
        if settings["images_correct_for"] == "all":
            models += [d.augmented for per in defenses.values() for d in per.values()]
        # predicted once here; each experiment takes the first n
        self.eligible = select_images(self.x_test, self.y_test, models, len(self.x_test),
                                      self.seed)

    @property
    def eps(self) -> list[float]:
        """The run's ε values ([0, 1] units)."""
        return list(self.settings["eps"])

    def share(self, defenses: dict[str, dict[int, Any]]) -> RunContext:
        """This context for a process's share of the defenses (a first, non-final pass)."""
        out = copy.copy(self)
        out.defenses, out.final = defenses, False
        return out

    def with_outcomes(self, outcomes: Mapping[tuple, dict[str, torch.Tensor]]) -> RunContext:
        """This context with the outcomes of the experiments that ran (read-only)."""
        out = copy.copy(self)
        out.outcomes = MappingProxyType(dict(outcomes))
        return out

    def pairs(self) -> list[tuple[int, str]]:
        """``(seed, approach)`` of every defense in this pass, seed-major."""
        return [(s, a) for s in self.seeds for a in self.defenses if s in self.defenses[a]]

    def first(self) -> dict[str, Any]:
        """The first seed's defense of every approach that has one in this pass."""
        return {a: per[self.seed] for a, per in self.defenses.items() if self.seed in per}

    def required(self, approach: str, who: str) -> dict[int, Any]:
        """``approach``'s defense per seed, or a one-line error ``"<who> the run's
        <approach> defense; keep ..."`` when the run has none."""
        if approach not in self.defenses:
            raise LuringError(f"{who} the run's {approach} defense; keep '{approach}' among "
                              "the profile's approaches")
        return self.defenses[approach]

    def images(self, n: int, tag: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The first n eligible test images (on the run's device), their labels (on it too),
        and what identifies them (test split fingerprint and indices) with the run seed and
        the models' fingerprints, for the units' identities. A note when fewer exist (final
        pass only)."""
        idx = self.eligible[:n]
        if len(idx) < n and self.final:
            self.log(f"note: only {len(idx)} test images are classified correctly by every "
                     f"model; {tag} uses {len(idx)} instead of {n}")
        ident = {"data": self.fps["test"], "indices": idx, "seed": self.seed,
                 "models": self.model_fps}
        return self.x_test[idx].to(self.device), self.y_test[idx].to(self.device), ident

    def select(self, models: list[nn.Module], n: int, note: str) -> torch.Tensor:
        """Indices of the first n test images (seeded order) that every one of ``models``
        classifies correctly, for an experiment with models of its own; when fewer exist, a
        note ``"only K test images are classified correctly by <note> instead of n"``."""
        idx = select_images(self.x_test, self.y_test, models, n, self.seed)
        if len(idx) < n:
            self.log(f"note: only {len(idx)} test images are classified correctly by "
                     + note.format(k=len(idx), n=n))
        return idx

    def train_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split (CPU), loaded on first use and checked against the run's
        fingerprint (a one-line error when the files changed during the run)."""
        if self._train is None:
            x, y = load(self.dataset, "train", self.data_dir)
            if fingerprint(x, y) != self.fps["train"]:
                raise LuringError(f"the {self.dataset} training split changed during the run; "
                                  "rerun with --restart")
            self._train = (x, y)
        return self._train

    def target_architecture(self) -> str | None:
        """M's architecture, read from a defense's copy of M (``target.json``; None
        without)."""
        for per in self.defenses.values():
            for d in per.values():
                side = d.directory / "target.json" if d.directory is not None else None
                if side is not None and side.is_file():
                    return read_json(side).get("architecture")
        return None
