"""Tables of the report, built from a results dict: plain rows for CSV, Markdown for report.md.

Every number of ours comes from the results dict as written by the experiments stage; nothing
is recomputed here. Paper numbers come from :mod:`luring.report.paper_numbers` and are always
labelled as the paper's. Missing parts give no rows; null fields print as ``—``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from luring.report import paper_numbers as paper

__all__ = [
    "APPROACHES",
    "ATTACK_ORDER",
    "ATTACK_FAILED_AC_MOP",
    "FAILED_MARK",
    "attack_failed",
    "failure_note",
    "NAMES",
    "DASH",
    "as_float",
    "fmt",
    "fmt_std",
    "md_table",
    "csv_text",
    "rows_of",
    "approaches_in",
    "attacks_in",
    "eps_values",
    "find_row",
    "clean_table",
    "defend_table",
    "characterize_table",
    "distortion_table",
    "logits_table",
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


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with full-precision numbers; None becomes an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


def _ordered(items: Iterable[str], order: Sequence[str]) -> list[str]:
    items = list(dict.fromkeys(i for i in items if i is not None))
    known = [o for o in order if o in items]
    return known + sorted(i for i in items if i not in order)


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
    return _ordered((r.get("approach") for r in rows), APPROACHES)


def attacks_in(rows: Iterable[dict]) -> list[str]:
    """Attacks present, in :data:`ATTACK_ORDER`."""
    return _ordered((r.get("attack") for r in rows), ATTACK_ORDER)


def _ekey(e: Any) -> float | None:
    x = as_float(e)
    return None if x is None else round(x, 6)


def eps_values(rows: Iterable[dict]) -> list[float | None]:
    """Sorted distinct ε of ``rows`` (rounded to 6 decimals; None last)."""
    keys = {_ekey(r.get("eps")) for r in rows}
    return sorted(k for k in keys if k is not None) + ([None] if None in keys else [])


def find_row(rows: Iterable[dict], approach: str, eps: float | None) -> dict | None:
    """The row of ``approach`` at ``eps`` (first one if duplicated)."""
    for r in rows:
        if r.get("approach") == approach and _ekey(r.get("eps")) == eps:
            return r
    return None


def _ci(row: dict, key: str) -> tuple[Any, Any]:
    ci = (row.get("ci") or {}).get(key)
    return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)


def _with_ci(v: Any, ci: tuple[Any, Any]) -> str:
    """``0.056 [0.043, 0.072]``, or the plain value without an interval."""
    if as_float(v) is None:
        return DASH
    return fmt(v) if as_float(ci[0]) is None else f"{fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _ns(rows: Iterable[dict | None]) -> str:
    ns = list(dict.fromkeys(r.get("n") for r in rows if r and r.get("n") is not None))
    return "/".join(str(n) for n in ns) if ns else DASH


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


def _mop_cell(row: dict | None) -> str:
    """AC_MoP of ``row`` (± std), with :data:`FAILED_MARK` when the attack failed on T."""
    std = (row or {}).get("std") or {}
    text = fmt_std((row or {}).get("ac_mop"), std.get("ac_mop"))
    return text + FAILED_MARK if attack_failed(row) else text


# ------------------------------------------------------------------------------- table 8

def clean_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 8: returns (CSV header, CSV rows, Markdown)."""
    clean = results.get("clean") or {}
    fam = results.get("family") or ""
    p8 = paper.TABLE8.get(fam, {})
    models = _ordered([m for m in clean if isinstance(clean[m], dict)], ("target",) + APPROACHES)
    header = ["model", "accuracy", "accuracy_std", "agreement", "agreement_std",
              "false_alarm_rate", "n", "paper_accuracy", "paper_agreement",
              "false_alarm_ci_low", "false_alarm_ci_high", "detector_rule",
              "detector_target_fpr", "detector_false_alarm_rate", "detector_ci_low",
              "detector_ci_high"]
    rows, md_rows = [], []
    for m in models:
        c = clean[m]
        pa, pg = p8.get(m, (None, None))
        det = c.get("detector") or {}
        fa_ci, det_ci = _ci(c, "false_alarm_rate"), _ci(c, "detector_false_alarm_rate")
        rows.append([m, c.get("accuracy"), c.get("accuracy_std"), c.get("agreement"),
                     c.get("agreement_std"), c.get("false_alarm_rate"), c.get("n"), pa, pg,
                     *fa_ci, det.get("rule"), det.get("target_fpr"),
                     c.get("detector_false_alarm_rate"), *det_ci])
        md_rows.append([NAMES.get(m, m), fmt_std(c.get("accuracy"), c.get("accuracy_std")),
                        fmt_std(c.get("agreement"), c.get("agreement_std")),
                        _with_ci(c.get("false_alarm_rate"), fa_ci),
                        _with_ci(c.get("detector_false_alarm_rate"), det_ci)
                        + (f" ({det.get('rule')}, target {fmt(det.get('target_fpr'), 2)}"
                           + (f" at confidence {fmt(det.get('confidence'), 2)}"
                              if det.get("confidence") is not None else "") + ")"
                           if det.get("rule") else ""),
                        c.get("n", DASH) or DASH]
                       + ([fmt(pa), fmt(pg)] if p8 else []))
    mh = ["model", "accuracy", "agreement (T = M = y)", "false alarm, paper rule (T ≠ M)",
          "false alarm at the operating point", "n"]
    if p8:
        label = paper.paper_label(fam, "test set")
        mh += [f"{label}: accuracy", f"{label}: agree"]
    return header, rows, md_table(mh, md_rows) if models else ""


# ---------------------------------------------------------------------- tables 1 and 14

def _paper_defend(fam: str, attack: str) -> dict[float, dict[str, tuple]]:
    return {round(e, 6): v for e, v in paper.DEFEND.get(fam, {}).get(attack, {}).items()}


def _per_seed(row: dict) -> str | None:
    """The per-seed values and n of a row as compact JSON (None with one seed)."""
    per = row.get("per_seed")
    if not per:
        return None
    out = {k: [v.get("value") for v in vals] for k, vals in per.items()}
    out["seed"] = [v.get("seed") for v in next(iter(per.values()))]
    out["n"] = [v.get("n") for v in next(iter(per.values()))]
    return json.dumps(out, sort_keys=True)


def defend_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Tables 1/14 layout: per attack, rows ε (ours, then the paper's where it has them),
    columns AC_MoP / AC_M / DAC per approach. Returns (CSV header, CSV rows, Markdown)."""
    fam = results.get("family") or ""
    label = paper.paper_label(fam)
    all_rows = rows_of(results, "defend")
    header = ["attack", "eps", "approach", "n", "ac_mop", "ac_m", "dac",
              "ac_mop_ci_low", "ac_mop_ci_high", "ac_m_ci_low", "ac_m_ci_high",
              "dac_ci_low", "dac_ci_high", "ac_mop_std", "ac_m_std", "dac_std", "setting",
              "paper_ac_mop", "paper_ac_m", "paper_dac", "per_seed", "detection_rate",
              "dac_op", "dac_op_ci_low", "dac_op_ci_high", "auroc", "attack_failed"]
    csv_rows: list[list[Any]] = []
    md = []
    for attack in attacks_in(all_rows):
        rows = [r for r in all_rows if r.get("attack") == attack]
        pap = _paper_defend(fam, attack)
        apps = _ordered(approaches_in(rows) + [a for v in pap.values() for a in v], APPROACHES)
        for r in sorted(rows, key=lambda r: (_ekey(r.get("eps")) or 0.0,
                                             apps.index(r.get("approach"))
                                             if r.get("approach") in apps else 99)):
            std = r.get("std") or {}
            pc = pap.get(_ekey(r.get("eps")), {}).get(r.get("approach"), (None, None, None))
            setting = r.get("setting")
            csv_rows.append([attack, r.get("eps"), r.get("approach"), r.get("n"),
                             r.get("ac_mop"), r.get("ac_m"), r.get("dac"),
                             *_ci(r, "ac_mop"), *_ci(r, "ac_m"), *_ci(r, "dac"),
                             std.get("ac_mop"), std.get("ac_m"), std.get("dac"),
                             json.dumps(setting, sort_keys=True) if setting else None, *pc,
                             _per_seed(r), r.get("detection_rate"), r.get("dac_op"),
                             *_ci(r, "dac_op"), r.get("auroc"), attack_failed(r)])
        mh = ["ε", "source", "n"] + [f"{NAMES.get(a, a)} {m}" for a in apps
                                     for m in ("AC_MoP", "AC_M", "DAC")]
        md_rows = []
        ours_eps = eps_values(rows)
        for e in sorted(set(ours_eps) | set(pap), key=lambda v: (v is None, v or 0.0)):
            if e in ours_eps:
                cells = [find_row(rows, a, e) for a in apps]
                line = [fmt(e, 3), "ours", _ns(cells)]
                for c in cells:
                    std = (c or {}).get("std") or {}
                    line += [_mop_cell(c)] + [fmt_std((c or {}).get(k), std.get(k))
                                              for k in ("ac_m", "dac")]
                md_rows.append(line)
            if e in pap:
                line = [fmt(e, 3), label, "1000"]
                for a in apps:
                    line += [fmt(v, 2) for v in pap[e].get(a, (None, None, None))]
                md_rows.append(line)
        note = failure_note(rows)
        md.append(f"**{NAMES.get(attack, attack)}**\n\n" + md_table(mh, md_rows)
                  + (f"\n{note}\n" if note else ""))
    return header, csv_rows, "\n".join(md)


# ------------------------------------------------------------------------------ figure 2

def characterize_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """DR / IAR per attack × ε × approach (figure 2's data). (CSV header, rows, Markdown)."""
    all_rows = rows_of(results, "characterize")
    header = ["attack", "eps", "approach", "n", "dr", "iar", "dr_ci_low", "dr_ci_high",
              "iar_ci_low", "iar_ci_high", "dr_std", "iar_std", "ac_mop", "ac_m", "dac",
              "per_seed"]
    csv_rows: list[list[Any]] = []
    md = []
    for attack in attacks_in(all_rows):
        rows = [r for r in all_rows if r.get("attack") == attack]
        apps = approaches_in(rows)
        for e in eps_values(rows):
            for a in apps:
                r = find_row(rows, a, e)
                if r is None:
                    continue
                std = r.get("std") or {}
                csv_rows.append([attack, r.get("eps"), a, r.get("n"), r.get("dr"), r.get("iar"),
                                 *_ci(r, "dr"), *_ci(r, "iar"), std.get("dr"), std.get("iar"),
                                 r.get("ac_mop"), r.get("ac_m"), r.get("dac"), _per_seed(r)])
        mh = ["ε", "n"] + [f"{NAMES.get(a, a)} {m}" for a in apps for m in ("DR", "IAR")]
        md_rows = []
        for e in eps_values(rows):
            cells = [find_row(rows, a, e) for a in apps]
            line = [fmt(e, 3), _ns(cells)]
            for c in cells:
                std = (c or {}).get("std") or {}
                line += [fmt_std((c or {}).get(k), std.get(k)) for k in ("dr", "iar")]
            md_rows.append(line)
        md.append(f"**{NAMES.get(attack, attack)}**\n\n" + md_table(mh, md_rows))
    return header, csv_rows, "\n".join(md)


# ------------------------------------------------------------------------------- table 9

def distortion_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 9 (+ mean l0 of figure 3): (CSV header, CSV rows, Markdown)."""
    fam = results.get("family") or ""
    p9 = paper.TABLE9.get(fam, {})
    entries = [d for d in results.get("distortion") or [] if isinstance(d, dict)]
    order = _ordered([d.get("model") for d in entries], ("target",) + APPROACHES)
    entries.sort(key=lambda d: order.index(d.get("model")) if d.get("model") in order else 99)
    header = ["model", "n", "success_rate", "mean_l2", "mean_linf", "mean_l0",
              "paper_mean_l2", "paper_mean_linf"]
    rows, md_rows = [], []
    for d in entries:
        m = d.get("model")
        pl2, plinf = p9.get(m, (None, None))
        rows.append([m, d.get("n"), d.get("success_rate"), d.get("mean_l2"), d.get("mean_linf"),
                     d.get("mean_l0"), pl2, plinf])
        md_rows.append([NAMES.get(m, m), d.get("n", DASH) or DASH, fmt(d.get("success_rate")),
                        fmt(d.get("mean_l2")), fmt(d.get("mean_linf")), fmt(d.get("mean_l0"), 2)]
                       + ([fmt(pl2, 2), fmt(plinf, 2)] if p9 else []))
    mh = ["model attacked", "n", "success rate", "mean l2", "mean l∞", "mean l0 (pixels)"]
    if p9:
        label = paper.paper_label(fam)
        mh += [f"{label}: mean l2", f"{label}: mean l∞"]
    return header, rows, md_table(mh, md_rows) if entries else ""


# ------------------------------------------------------------------------------ table 10

def logits_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 10 (Ω_c rates per class, Luring against each approach and against all):
    (CSV header, CSV rows, Markdown)."""
    logits = results.get("logits") or {}
    rates = logits.get("rates") or {}
    n = logits.get("n")
    fam = results.get("family") or ""
    p10 = paper.TABLE10.get(fam)
    versus = _ordered([v for v in rates if isinstance(rates[v], dict)], APPROACHES + ("all",))
    classes = sorted({c for v in versus for c in rates[v]},
                     key=lambda c: (0, int(c)) if str(c).isdigit() else (1, str(c)))
    header = ["versus", "class", "rate", "n", "paper_rate"]
    rows = [[v, c, rates[v].get(c), n, (p10 or {}).get(c) if v == "all" else None]
            for v in versus for c in classes]
    if not versus:
        return header, rows, ""
    mh = ["Luring vs", "n"] + [f"class {c}" for c in classes]
    md_rows = [[NAMES.get(v, v) if v != "all" else "all others", n if n is not None else DASH]
               + [fmt(rates[v].get(c)) for c in classes] for v in versus]
    if p10:
        md_rows.append([f"{paper.paper_label(fam)} (vs all)", "1000"]
                       + [fmt(p10.get(c), 2) for c in classes])
    return header, rows, md_table(mh, md_rows)
