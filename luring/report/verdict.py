"""The paired verdict on the luring effect, in both directions, and the trade-off figure.

Per attack and ε the experiments stage compares Luring with every other approach on the same
images (``results["verdict"][i]["comparisons"]``, see
:func:`luring.experiments.diagnostics.paired_verdict`), on DAC and on AC_M: McNemar's exact
test and Newcombe's 95% interval of the difference. Each comparison reads "Luring higher than
X (p = …)", "no significant difference from X (p = …)" or "Luring lower than X (p = …)"
(p < 0.05, two-sided). A comparison where the attack failed on T (AC_MoP above
:data:`~luring.report.cells.ATTACK_FAILED_AC_MOP` for Luring or for X) is shown but left out
of the counts. Results written before these fields held only the comparison with the best
other approach on DAC: that one is stated and counted the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from luring.report import figures
from luring.report.adaptive import ATTACK_NAMES
from luring.report.cells import (
    ATTACK_FAILED_AC_MOP,
    ATTACK_ORDER,
    DASH,
    NAMES,
    approaches_in,
    as_float,
    eps_key,
    fmt,
    md_table,
    ordered,
)

__all__ = ["ALPHA", "DIRECTIONS", "comparisons", "statement", "verdict_counts",
           "paired_verdict_text", "verdict_table", "verdict_section", "tradeoff_section"]

#: Significance level (two-sided) of every comparison.
ALPHA = 0.05
#: The three outcomes of a comparison, in the order they are counted.
DIRECTIONS = ("higher", "no difference", "lower")
_METRICS = (("dac", "DAC"), ("ac_m", "AC_M"))
_ORDER = (*ATTACK_ORDER, "adaptive-w", "adaptive-worst", "substitute")


def _direction(cmp: dict[str, Any]) -> str | None:
    """The stored direction, or (older results) the one of its p-value and difference."""
    if "direction" in cmp:
        return cmp["direction"] if cmp["direction"] in DIRECTIONS else None
    p, d = as_float(cmp.get("p_value")), as_float(cmp.get("difference"))
    if p is None or d is None:
        return None
    return ("higher" if d > 0 else "lower") if p < ALPHA and d != 0 else "no difference"


def _ac_mop_of_rows(results: dict, attack: Any, approach: Any, eps: Any) -> float | None:
    """AC_MoP of a result row (any experiment) of ``attack``, ``approach`` and ``eps``."""
    for r in results.get("rows") or []:
        if (isinstance(r, dict) and r.get("attack") == attack and r.get("approach") == approach
                and eps_key(r.get("eps")) == eps_key(eps)):
            return as_float(r.get("ac_mop"))
    return None


def comparisons(results: dict) -> list[dict[str, Any]]:
    """Every paired comparison of ``results["verdict"]``, one per attack × ε × other approach:
    ``{"attack", "eps", "other", "best", "n", "dac", "ac_m", "luring_ac_mop", "other_ac_mop",
    "excluded", "legacy"}``; ``dac`` / ``ac_m`` are dicts with ``"luring"``, ``"other"``,
    ``"difference"``, ``"ci"``, ``"p_value"``, ``"direction"`` (or None). ``legacy``: a row
    written before the comparison with every approach (its best other approach on DAC only;
    AC_MoP then from the result rows)."""
    out = []
    for r in results.get("verdict") or []:
        if not isinstance(r, dict):
            continue
        limit = as_float(r.get("ac_mop_limit")) or ATTACK_FAILED_AC_MOP
        ac_mop = r.get("ac_mop") if isinstance(r.get("ac_mop"), dict) else {}
        base = {"attack": r.get("attack"), "eps": r.get("eps")}
        if isinstance(r.get("comparisons"), list):
            entries = [(c, False) for c in r["comparisons"] if isinstance(c, dict)]
        else:
            old = {"other": r.get("other"), "best": True,
                   "dac": {"luring": r.get("luring_dac"), "other": r.get("other_dac"),
                           "difference": r.get("difference"), "ci": r.get("ci"),
                           "p_value": r.get("p_value"), "n": r.get("n")}, "ac_m": None}
            entries = [(old, True)]
        for c, legacy in entries:
            other = c.get("other")
            mops = [as_float(ac_mop.get(a)) if a in ac_mop
                    else _ac_mop_of_rows(results, r.get("attack"), a, r.get("eps"))
                    for a in ("luring", other)]
            failed = any(v is not None and v > limit for v in mops)
            cmps = {}
            for key, _ in _METRICS:
                cmp = c.get(key)
                cmps[key] = (dict(cmp) | {"direction": _direction(cmp)}
                             if isinstance(cmp, dict) else None)
            n = next((x.get("n") for x in cmps.values() if x and x.get("n") is not None),
                     r.get("n"))
            out.append(base | cmps | {
                "other": other, "best": bool(c.get("best")), "n": n,
                "luring_ac_mop": mops[0], "other_ac_mop": mops[1],
                "excluded": bool(c["excluded"]) if "excluded" in c else failed,
                "legacy": legacy})
    order = ordered([c["attack"] for c in out], _ORDER)
    apps = approaches_in({"approach": c["other"]} for c in out)
    return sorted(out, key=lambda c: (order.index(c["attack"]) if c["attack"] in order else 99,
                                      as_float(c["eps"]) or 0.0,
                                      apps.index(c["other"]) if c["other"] in apps else 99))


def _p(p: Any) -> str:
    v = as_float(p)
    return DASH if v is None else f"{v:.3g}"


def statement(other: Any, cmp: dict[str, Any] | None) -> str:
    """One comparison in words: "Luring higher than C_E (p = 0.0021)", "no significant
    difference from C_E (p = 0.52)" or "Luring lower than C_E (p = 0.031)"."""
    name = NAMES.get(other, other)
    d = _direction(cmp) if cmp else None
    if d is None:
        return f"no paired outcomes for {name}"
    p = _p(cmp.get("p_value"))
    if d == "no difference":
        return f"no significant difference from {name} (p = {p})"
    return f"Luring {d} than {name} (p = {p})"


def verdict_counts(comps: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over ``comps`` (from :func:`comparisons`), leaving out the excluded ones and
    those without outcomes: per metric ``{"higher", "no difference", "lower", "total"}``, and
    ``"excluded"`` (comparisons left out because the attack failed on T)."""
    kept = [c for c in comps if not c["excluded"]]
    out: dict[str, Any] = {"excluded": len(comps) - len(kept)}
    for key, _ in _METRICS:
        dirs = [_direction(c[key]) for c in kept if c.get(key)]
        out[key] = {d: dirs.count(d) for d in DIRECTIONS} | {
            "total": sum(d in DIRECTIONS for d in dirs)}
    return out


def _count_text(counts: dict[str, Any]) -> str:
    parts = []
    for key, name in _METRICS:
        c = counts[key]
        if c["total"]:
            parts.append(f"{name}: higher {c['higher']}, no difference {c['no difference']}, "
                         f"lower {c['lower']} of {c['total']} comparisons")
    n = counts["excluded"]
    parts.append(f"excluded: attack failed on T (AC_MoP > {ATTACK_FAILED_AC_MOP:g}) in {n} "
                 f"comparison{'' if n == 1 else 's'}" if n else "excluded: none")
    return "; ".join(parts)


def paired_verdict_text(results: dict) -> str:
    """The headline: how many paired comparisons find Luring higher, not different or lower,
    on DAC and on AC_M, and how many were excluded. Empty without a paired verdict."""
    comps = comparisons(results)
    if not comps:
        return ""
    legacy = all(c["legacy"] for c in comps)
    who = "the best other approach per attack and ε" if legacy else "the other approaches"
    note = "; results written before the comparison with every approach" if legacy else ""
    return (f"Luring vs {who} (paired McNemar, p < {ALPHA:g}{note}), "
            + _count_text(verdict_counts(comps)))


def verdict_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """The paired comparisons as (CSV header, CSV rows, Markdown): one row per attack × ε ×
    other approach, DAC and AC_M each with both rates, the difference, its 95% interval, the
    McNemar p-value and the statement."""
    comps = comparisons(results)
    header = ["attack", "eps", "other", "best_other", "n", "luring_dac", "other_dac",
              "difference", "ci_low", "ci_high", "p_value", "dac_direction", "luring_ac_m",
              "other_ac_m", "ac_m_difference", "ac_m_ci_low", "ac_m_ci_high", "ac_m_p_value",
              "ac_m_direction", "luring_ac_mop", "other_ac_mop", "excluded", "holds"]
    csv_rows, md_rows = [], []
    for c in comps:
        line: list[Any] = [c["attack"], c["eps"], c["other"], c["best"], c["n"]]
        md = [ATTACK_NAMES.get(c["attack"], c["attack"]), fmt(c["eps"]),
              NAMES.get(c["other"], c["other"]) + (" (best)" if c["best"] else ""),
              c["n"] if c["n"] is not None else DASH]
        for key, _ in _METRICS:
            x = c[key] or {}
            ci = x.get("ci") if isinstance(x.get("ci"), (list, tuple)) else [None, None]
            line += [x.get("luring"), x.get("other"), x.get("difference"), ci[0], ci[1],
                     x.get("p_value"), _direction(x) if x else None]
            md += ([f"{fmt(x.get('luring'))} vs {fmt(x.get('other'))}",
                    f"{fmt(x.get('difference'))} [{fmt(ci[0])}, {fmt(ci[1])}]",
                    statement(c["other"], x)] if x else [DASH] * 3)
        csv_rows.append(line + [c["luring_ac_mop"], c["other_ac_mop"], c["excluded"],
                                (_direction(c["dac"]) == "higher") if c["dac"] else None])
        md.append(f"excluded: attack failed on T (AC_MoP Luring {fmt(c['luring_ac_mop'])}, "
                  f"{NAMES.get(c['other'], c['other'])} {fmt(c['other_ac_mop'])})"
                  if c["excluded"] else "counted")
        md_rows.append(md)
    md = md_table(["attack", "ε", "Luring vs", "n", "DAC (Luring vs other)",
                   "DAC difference [95% CI]", "DAC verdict", "AC_M (Luring vs other)",
                   "AC_M difference [95% CI]", "AC_M verdict", "in the counts"],
                  md_rows) if md_rows else ""
    return header, csv_rows, md


def verdict_section(results: dict, table: Callable[[str, tuple], str]) -> list[str]:
    """The report's verdict section (Markdown lines); ``table(name, built)`` writes
    ``table_verdict.csv`` and returns the Markdown. Empty without a paired verdict."""
    md = table("table_verdict.csv", verdict_table(results))
    if not md:
        return []
    comps = comparisons(results)
    per_attack = []
    for attack in dict.fromkeys(c["attack"] for c in comps):
        counts = verdict_counts([c for c in comps if c["attack"] == attack])
        per_attack.append(f"- {ATTACK_NAMES.get(attack, attack)}: {_count_text(counts)}")
    legacy = all(c["legacy"] for c in comps)
    scope = ("the best other approach (highest DAC), on DAC (these results predate the "
             "comparison with every approach and on AC_M)," if legacy
             else "every other approach, on DAC and on AC_M,")
    return ["## Verdict: paired test of the luring effect", "",
            f"Per attack and ε, Luring against {scope} on the same images (per-example "
            "outcomes, pooled over seeds): McNemar's exact test "
            f"(two-sided, p < {ALPHA:g}) and Newcombe's 95% interval of the difference "
            "(Luring − other). Each comparison reads \"Luring higher than X\", \"no "
            "significant difference from X\" or \"Luring lower than X\". A comparison where "
            "the attack failed on T (AC_MoP above "
            f"{ATTACK_FAILED_AC_MOP:g} for Luring or for X) is left out of the counts: AC_M "
            "there measures attack failure, not luring.", "", *per_attack, "", md, ""]


def tradeoff_section(results: dict, put: Callable[[str, bytes], None]) -> list[str]:
    """The trade-off figure's section (Markdown lines); ``put(name, data)`` writes
    ``figure_tradeoff.png``. Empty (and no file) without adaptive worst-case rows."""
    png = figures.tradeoff_png(results)
    if not png:
        return []
    put("figure_tradeoff.png", png)
    mid, _ = figures.tradeoff_points(results)
    return ["## Trade-off: clean agreement against the adaptive worst case", "",
            "![Trade-off: clean agreement with M against DAC under the adaptive worst case]"
            "(figure_tradeoff.png)", "",
            "One point per approach and seed: x, the agreement of T and M on clean test images "
            "(T = M = y, the clean table); y, DAC under the per-example worst case of the "
            f"adaptive family at the middle ε ({fmt(mid)}); bars: 95% intervals. Up and to the "
            "right: T stays faithful to M on clean images and the defense holds.", ""]
