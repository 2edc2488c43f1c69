"""Interleaved timing. Contenders that are compared belong to one group; every repetition
runs every group as a palindrome (``A B C C B A``) of an order rotated from one repetition
to the next, so a contender and its baseline run close in time and symmetrically around the
same midpoint: drift of a shared machine (other jobs, frequency, thermal) hits both alike,
and a ratio taken within one repetition cancels it (linear drift exactly).

Raw seconds of every run are kept (wall and process CPU time); statistics are min / median /
max over repetitions, and ratios are computed per repetition (contender and baseline of the
same repetition) before their min / median / max are taken.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from luring.benchmarks.env import Contender

__all__ = ["sync", "stats", "rotation", "schedule", "run_interleaved", "interleaved", "ratio"]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU) so that a timer sees finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(values: Sequence[float]) -> dict[str, float | None]:
    """``{"min", "median", "max"}`` of ``values`` (None when empty)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"min": None, "median": None, "max": None}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def rotation(names: Sequence[str], rep: int) -> list[str]:
    """The order of repetition ``rep``: ``names`` rotated left by ``rep``, so over
    ``len(names)`` repetitions each contender runs once in each position."""
    k = rep % max(len(names), 1)
    return list(names[k:]) + list(names[:k])


def _timed(c: Contender, device: torch.device) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds, work) of one run of ``c``."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    work = c.run()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, float(work)


def schedule(groups: Sequence[Sequence[str]], rep: int) -> list[tuple[int, list[str]]]:
    """The runs of repetition ``rep``: for each group (index, order), the group's names
    rotated by ``rep`` and then the same order reversed, so each contender runs twice per
    repetition, symmetrically around the group's midpoint (linear drift cancels exactly)."""
    out = []
    for gi, names in enumerate(groups):
        order = rotation(names, rep)
        out.append((gi, order + order[::-1]))
    return out


def run_interleaved(contenders: Sequence[Contender], reps: int, device: torch.device, *,
                    warmup: bool = True,
                    around_warmup: Callable[[Contender, Callable[[], Any]], Any] | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``reps`` interleaved repetitions of every contender.

    Contenders are scheduled in their groups (``Contender.group``; every ratio compares two
    contenders of one group): each repetition runs every group once as a palindrome of a
    rotated order (see :func:`schedule`), so a contender and its baseline run close in time,
    twice each, symmetric around the same midpoint. A contender's throughput in a
    repetition is its total work over its total time in that repetition.

    ``warmup``: run each contender once, untimed, first (lazy initialisation, allocator and
    kernel caches). ``around_warmup(contender, call)``: wraps that run (memory
    measurement); its result is returned under ``"warmup"``.

    Returns ``{"runs": {name: {"seconds": [per repetition], "cpu_seconds": [...],
    "work": [...], "throughput": [...], "run_seconds": [every single run]}},
    "groups": [[name, ...], ...], "orders": [[[name, ...] per group] per repetition],
    "events": [{"rep", "group", "contender", "start", "seconds", "cpu_seconds"}],
    "warmup": {name: ...}}`` (``start`` in seconds since the first timed run).
    """
    by_name = {c.name: c for c in contenders}
    groups: list[list[str]] = []
    index: dict[str, int] = {}
    for c in contenders:
        if c.group not in index:
            index[c.group] = len(groups)
            groups.append([])
        groups[index[c.group]].append(c.name)
    warm: dict[str, Any] = {}
    if warmup:
        for c in contenders:
            if log:
                log(f"warm-up {c.name}")
            if around_warmup is not None:
                warm[c.name] = around_warmup(c, lambda c=c: _timed(c, device))
            else:
                _timed(c, device)
    keys = ("seconds", "cpu_seconds", "work", "throughput", "run_seconds")
    runs: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in by_name}
    orders: list[list[list[str]]] = []
    events: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for rep in range(reps):
        acc = {n: [0.0, 0.0, 0.0] for n in by_name}
        plan = schedule(groups, rep)
        orders.append([seq for _, seq in plan])
        for gi, seq in plan:
            for name in seq:
                start = time.perf_counter() - t_start
                seconds, cpu, work = _timed(by_name[name], device)
                a = acc[name]
                a[0], a[1], a[2] = a[0] + seconds, a[1] + cpu, a[2] + work
                runs[name]["run_seconds"].append(seconds)
                events.append({"rep": rep, "group": gi, "contender": name, "start": start,
                               "seconds": seconds, "cpu_seconds": cpu})
        for name, (seconds, cpu, work) in acc.items():
            r = runs[name]
            r["seconds"].append(seconds)
            r["cpu_seconds"].append(cpu)
            r["work"].append(work)
            r["throughput"].append(work / seconds if seconds > 0 else math.inf)
        if log:
            log(f"repetition {rep + 1}/{reps} done ({time.perf_counter() - t_start:.0f} s)")
    return {"runs": runs, "groups": groups, "orders": orders, "events": events,
            "warmup": warm}


def interleaved(groups: Sequence[Sequence[str]], orders: Sequence[Sequence[Sequence[str]]]
                ) -> bool:
    """Check a run's schedule: in every repetition each group ran as a palindrome
    ``order + reversed(order)`` of a permutation of its members, and a group of two or more
    started from a different contender in consecutive repetitions (rotation)."""
    for rep, per_group in enumerate(orders):
        if len(per_group) != len(groups):
            return False
        for gi, seq in enumerate(per_group):
            k = len(groups[gi])
            first = list(seq[:k])
            if sorted(first) != sorted(groups[gi]) or list(seq) != first + first[::-1]:
                return False
            if rep and k >= 2 and orders[rep - 1][gi][0] == seq[0]:
                return False
    return True


def ratio(runs: dict[str, dict[str, list[float]]], contender: str, baseline: str
          ) -> list[float]:
    """Per-repetition throughput ratios ``contender / baseline`` (same repetition)."""
    a, b = runs[contender]["throughput"], runs[baseline]["throughput"]
    return [x / y if y > 0 else math.inf for x, y in zip(a, b, strict=True)]
