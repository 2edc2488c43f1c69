"""Tables of the report, built from a results dict: plain rows for CSV, Markdown for report.md
(tables 8, 1/14, 9 and 10, figure 2's data).

Every number of ours comes from the results dict as written by the experiments stage; nothing
is recomputed here. Paper numbers come from :mod:`luring.report.paper_numbers` and are always
labelled as the paper's. Missing parts give no rows; null fields print as ``—``. The names,
formats and cells every table shares are in :mod:`luring.report.cells`.
"""

from __future__ import annotations

import json
from typing import Any

from luring.report import paper_numbers as paper
from luring.report.cells import (
    APPROACHES,
    DASH,
    NAMES,
    approaches_in,
    attack_failed,
    attacks_in,
    cells_by_eps,
    ci_of,
    eps_key,
    eps_values,
    failure_note,
    find_row,
    fmt,
    fmt_std,
    md_table,
    mop_cell,
    ns_text,
    ordered,
    per_seed_json,
    present_rows,
    rows_of,
    std_cells,
    with_ci,
)

__all__ = ["clean_table", "defend_table", "characterize_table", "distortion_table",
           "logits_table"]


# ------------------------------------------------------------------------------- table 8

def clean_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 8: returns (CSV header, CSV rows, Markdown)."""
    clean = results.get("clean") or {}
    fam = results.get("family") or ""
    p8 = paper.TABLE8.get(fam, {})
    models = ordered([m for m in clean if isinstance(clean[m], dict)], ("target",) + APPROACHES)
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
        fa_ci, det_ci = ci_of(c, "false_alarm_rate"), ci_of(c, "detector_false_alarm_rate")
        rows.append([m, c.get("accuracy"), c.get("accuracy_std"), c.get("agreement"),
                     c.get("agreement_std"), c.get("false_alarm_rate"), c.get("n"), pa, pg,
                     *fa_ci, det.get("rule"), det.get("target_fpr"),
                     c.get("detector_false_alarm_rate"), *det_ci])
        md_rows.append([NAMES.get(m, m), fmt_std(c.get("accuracy"), c.get("accuracy_std")),
                        fmt_std(c.get("agreement"), c.get("agreement_std")),
                        with_ci(c.get("false_alarm_rate"), fa_ci),
                        with_ci(c.get("detector_false_alarm_rate"), det_ci)
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
        apps = ordered(approaches_in(rows) + [a for v in pap.values() for a in v], APPROACHES)
        for r in sorted(rows, key=lambda r: (eps_key(r.get("eps")) or 0.0,
                                             apps.index(r.get("approach"))
                                             if r.get("approach") in apps else 99)):
            std = r.get("std") or {}
            pc = pap.get(eps_key(r.get("eps")), {}).get(r.get("approach"), (None, None, None))
            setting = r.get("setting")
            csv_rows.append([attack, r.get("eps"), r.get("approach"), r.get("n"),
                             r.get("ac_mop"), r.get("ac_m"), r.get("dac"),
                             *ci_of(r, "ac_mop"), *ci_of(r, "ac_m"), *ci_of(r, "dac"),
                             std.get("ac_mop"), std.get("ac_m"), std.get("dac"),
                             json.dumps(setting, sort_keys=True) if setting else None, *pc,
                             per_seed_json(r), r.get("detection_rate"), r.get("dac_op"),
                             *ci_of(r, "dac_op"), r.get("auroc"), attack_failed(r)])
        mh = ["ε", "source", "n"] + [f"{NAMES.get(a, a)} {m}" for a in apps
                                     for m in ("AC_MoP", "AC_M", "DAC")]
        md_rows = []
        ours_eps = eps_values(rows)
        for e in sorted(set(ours_eps) | set(pap), key=lambda v: (v is None, v or 0.0)):
            if e in ours_eps:
                cells = [find_row(rows, a, e) for a in apps]
                line = [fmt(e, 3), "ours", ns_text(cells)]
                for c in cells:
                    line += [mop_cell(c), *std_cells(c, ("ac_m", "dac"))]
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
        for _, a, r in present_rows(rows, apps):
            std = r.get("std") or {}
            csv_rows.append([attack, r.get("eps"), a, r.get("n"), r.get("dr"), r.get("iar"),
                             *ci_of(r, "dr"), *ci_of(r, "iar"), std.get("dr"), std.get("iar"),
                             r.get("ac_mop"), r.get("ac_m"), r.get("dac"), per_seed_json(r)])
        mh = ["ε", "n"] + [f"{NAMES.get(a, a)} {m}" for a in apps for m in ("DR", "IAR")]
        md_rows = []
        for e, cells in cells_by_eps(rows, apps):
            md_rows.append([fmt(e, 3), ns_text(cells),
                            *[v for c in cells for v in std_cells(c, ("dr", "iar"))]])
        md.append(f"**{NAMES.get(attack, attack)}**\n\n" + md_table(mh, md_rows))
    return header, csv_rows, "\n".join(md)


# ------------------------------------------------------------------------------- table 9

def distortion_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 9 (+ mean l0 of figure 3): (CSV header, CSV rows, Markdown)."""
    fam = results.get("family") or ""
    p9 = paper.TABLE9.get(fam, {})
    entries = [d for d in results.get("distortion") or [] if isinstance(d, dict)]
    order = ordered([d.get("model") for d in entries], ("target",) + APPROACHES)
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
    versus = ordered([v for v in rates if isinstance(rates[v], dict)], APPROACHES + ("all",))
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
