"""What every table of the report shares: the display names and orders, number formats,
Markdown and CSV text, looking up result rows, and the cells built from a row (its 95%
interval, its n, AC_MoP with the attack-failure mark, its per-seed values).

Used by :mod:`luring.report.tables`, :mod:`~luring.report.adaptive`,
:mod:`~luring.report.extra`, :mod:`~luring.report.verdict`, :mod:`~luring.report.figures`
and :mod:`~luring.report.render`; imports no other report module.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = [
    "APPROACHES",
    "ATTACK_ORDER",
    "ATTACK_FAILED_AC_MOP",
    "FAILED_MARK",
    "NAMES",
    "DASH",
    "as_float",
    "fmt",
    "fmt_std",
    "md_table",
    "csv_text",
    "ordered",
    "eps_key",
    "rows_of",
    "approaches_in",
    "attacks_in",
    "eps_values",
    "find_row",
    "present_rows",
    "cells_by_eps",
    "ci_of",
    "with_ci",
    "ns_text",
    "std_cells",
    "per_seed_json",
    "attack_failed",
    "failure_note",
    "mop_cell",
]

#: Column order of the approaches (the paper's: Stack, Auto, C_E, Luring).
APPROACHES = ("stack", "auto", "ce", "luring")
#: Row order of the attacks (figure 2, then tables 1/14, then the worst case).
ATTACK_ORDER = ("fgsm", "pgd", "mim", "mim-l2", "spsa", "eco", "mim-w", "worst-case")
#: Display names, as the paper writes them.
NAMES = {"target": "Target (M)", "stack": "Stack", "auto": "Auto", "ce": "C_E",
         "luring": "Luring", "luring-neutral": "Luring (neutral)", "fgsm": "FGSM", "pgd": "PGD",
         "mim": "MIM", "mim-l2": "MIM-L2",
         "spsa": "SPSA", "eco": "ECO", "mim-w": "MIM-W", "worst-case": "worst case"}
DASH = "—"
#: AC_MoP above which an attack is said to have failed on T: the same limit as
#: ``luring.experiments.diagnostics.ATTACK_FAILED_AC_MOP`` (results written without it).
ATTACK_FAILED_AC_MOP = 0.1
#: The mark of a cell whose attack failed on T.
FAILED_MARK = "†"


# ------------------------------------------------------------------------- number formats

def as_float(v: Any) -> float | None:
    """``v`` as a finite float, or None (null, NaN, non-numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def fmt(v: Any, nd: int = 3) -> str:
    """A number with ``nd`` decimals; ``—`` for null / missing."""
    x = as_float(v)
    return DASH if x is None else f"{x:.{nd}f}"


def fmt_std(v: Any, std: Any = None, nd: int = 3) -> str:
    """``0.930 ± 0.012`` when a std over seeds is given, else :func:`fmt`."""
    s = as_float(std)
    return fmt(v, nd) if s is None or as_float(v) is None else f"{fmt(v, nd)} ± {s:.{nd}f}"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with full-precision numbers; None becomes an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


# ------------------------------------------------------------------------ finding rows

def ordered(items: Iterable[str], order: Sequence[str]) -> list[str]:
    """The distinct non-None ``items``: those in ``order`` in its order, then the rest
    sorted."""
    items = list(dict.fromkeys(i for i in items if i is not None))
    known = [o for o in order if o in items]
    return known + sorted(i for i in items if i not in order)


def eps_key(e: Any) -> float | None:
    """ε as rows are matched on: rounded to 6 decimals (None when not a number)."""
    x = as_float(e)
    return None if x is None else round(x, 6)


def rows_of(results: dict, experiment: str, attack: str | None = None) -> list[dict]:
    """The result rows of one experiment (``defend`` / ``characterize``), optionally of one
    attack; malformed entries are skipped."""
    out = []
    for r in results.get("rows") or []:
        if isinstance(r, dict) and r.get("experiment") == experiment and (
                attack is None or r.get("attack") == attack):
            out.append(r)
    return out


def approaches_in(rows: Iterable[dict]) -> list[str]:
    """Approaches present, in the paper's column order."""
    return ordered((r.get("approach") for r in rows), APPROACHES)


def attacks_in(rows: Iterable[dict]) -> list[str]:
    """Attacks present, in :data:`ATTACK_ORDER`."""
    return ordered((r.get("attack") for r in rows), ATTACK_ORDER)


def eps_values(rows: Iterable[dict]) -> list[float | None]:
    """Sorted distinct ε of ``rows`` (rounded to 6 decimals; None last)."""
    keys = {eps_key(r.get("eps")) for r in rows}
    return sorted(k for k in keys if k is not None) + ([None] if None in keys else [])


def find_row(rows: Iterable[dict], approach: str, eps: float | None) -> dict | None:
    """The row of ``approach`` at ``eps`` (first one if duplicated)."""
    for r in rows:
        if r.get("approach") == approach and eps_key(r.get("eps")) == eps:
            return r
    return None


def present_rows(rows: list[dict], apps: Sequence[str]
                 ) -> Iterator[tuple[float | None, str, dict]]:
    """(ε, approach, row) of every row of ``rows`` found, ε first, then ``apps``' order."""
    for e in eps_values(rows):
        for a in apps:
            r = find_row(rows, a, e)
            if r is not None:
                yield e, a, r


def cells_by_eps(rows: list[dict], apps: Sequence[str]
                 ) -> Iterator[tuple[float | None, list[dict | None]]]:
    """(ε, the row of each of ``apps`` at ε or None) for every ε of ``rows``."""
    for e in eps_values(rows):
        yield e, [find_row(rows, a, e) for a in apps]


# ------------------------------------------------------------------------- cells of a row

def ci_of(row: dict, key: str) -> tuple[Any, Any]:
    """(low, high) of the stored 95% interval of ``key`` in ``row`` (None, None without)."""
    ci = (row.get("ci") or {}).get(key)
    return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)


def with_ci(v: Any, ci: tuple[Any, Any]) -> str:
    """``0.056 [0.043, 0.072]``, or the plain value without an interval."""
    if as_float(v) is None:
        return DASH
    return fmt(v) if as_float(ci[0]) is None else f"{fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def ns_text(rows: Iterable[dict | None]) -> str:
    """The distinct n of ``rows`` (None rows skipped) joined by ``/``; ``—`` without any."""
    ns = list(dict.fromkeys(r.get("n") for r in rows if r and r.get("n") is not None))
    return "/".join(str(n) for n in ns) if ns else DASH


def std_cells(row: dict | None, keys: Iterable[str]) -> list[str]:
    """``row``'s value of each of ``keys`` with its std over seeds (:func:`fmt_std`)."""
    std = (row or {}).get("std") or {}
    return [fmt_std((row or {}).get(k), std.get(k)) for k in keys]


def per_seed_json(row: dict) -> str | None:
    """The per-seed values and n of a row as compact JSON (None with one seed)."""
    per = row.get("per_seed")
    if not per:
        return None
    out = {k: [v.get("value") for v in vals] for k, vals in per.items()}
    out["seed"] = [v.get("seed") for v in next(iter(per.values()))]
    out["n"] = [v.get("n") for v in next(iter(per.values()))]
    return json.dumps(out, sort_keys=True)


def attack_failed(row: dict | None, limit: float = ATTACK_FAILED_AC_MOP) -> bool:
    """Did the attack of this row fail on T (its AC_MoP above ``limit``)?"""
    v = as_float((row or {}).get("ac_mop"))
    return v is not None and v > limit


def failure_note(cells: Iterable[dict | None]) -> str:
    """The footnote of the :data:`FAILED_MARK` cells among ``cells`` (result rows), naming
    each with its AC_MoP; empty when none is marked."""
    marked = sorted((c for c in cells if attack_failed(c)),
                    key=lambda c: (as_float(c.get("eps")) or 0.0,
                                   APPROACHES.index(c.get("approach"))
                                   if c.get("approach") in APPROACHES else 99))
    if not marked:
        return ""
    where = "; ".join(f"{NAMES.get(c.get('approach'), c.get('approach'))} at ε = "
                      f"{fmt(c.get('eps'))}: {100 * float(c['ac_mop']):.1f}%" for c in marked)
    return (f"{FAILED_MARK} The attack left T right on more than "
            f"{100 * ATTACK_FAILED_AC_MOP:g}% of the images ({where}): AC_M there measures "
            "attack failure, not luring; the paired verdict's counts leave these cells out.")


def mop_cell(row: dict | None) -> str:
    """AC_MoP of ``row`` (± std), with :data:`FAILED_MARK` when the attack failed on T."""
    (text,) = std_cells(row, ("ac_mop",))
    return text + FAILED_MARK if attack_failed(row) else text
