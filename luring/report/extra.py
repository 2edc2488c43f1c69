"""Report tables of the appendix experiments: luring on an adversarially trained M (tables 18
and 19, ``results["advtrain"]``) and the Trapdoor comparison (table 20,
``results["trapdoor"]``). Ours with n and 95% Wilson intervals, the paper's numbers beside
them (always labelled as the paper's); every number comes from the results dict."""

from __future__ import annotations

import json
from typing import Any

from luring.report import paper_numbers as paper
from luring.report.cells import (
    DASH,
    ci_of,
    eps_key,
    eps_values,
    fmt,
    md_table,
    ns_text,
    per_seed_json,
    with_ci,
)

__all__ = ["advtrain_clean_table", "advtrain_attack_table", "trapdoor_table", "extra_sections",
           "extra_summary", "MODEL_NAMES"]

#: Display names of the models of tables 18-20.
MODEL_NAMES = {"base": "Base", "base-luring": "Base–Luring", "advtrain": "AdvTrain",
               "advtrain-luring": "AdvTrain–Luring", "trapdoor": "Trapdoor", "luring": "Luring"}
_ORDER = ("base", "base-luring", "advtrain", "advtrain-luring")


def _part(results: dict, key: str) -> dict:
    part = results.get(key)
    return part if isinstance(part, dict) else {}


def _rows(part: dict, key: str) -> list[dict]:
    return [r for r in part.get(key) or [] if isinstance(r, dict)]


def _pick(rows: list[dict], approach: str, attack: str, eps: float | None) -> dict | None:
    for r in rows:
        if r.get("approach") == approach and r.get("attack") == attack and \
                eps_key(r.get("eps")) == eps:
            return r
    return None


def _cell(row: dict | None, key: str) -> str:
    return DASH if row is None else with_ci(row.get(key), ci_of(row, key))


def advtrain_clean_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 18: test accuracy and agreement of Base, Base–Luring, AdvTrain and
    AdvTrain–Luring. Returns (CSV header, CSV rows, Markdown)."""
    fam = results.get("family") or ""
    p18 = paper.TABLE18.get(fam, {})
    rows = {r.get("model") or r.get("approach"): r
            for r in _rows(_part(results, "advtrain"), "table18")}
    header = ["model", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_std",
              "agreement", "agreement_ci_low", "agreement_ci_high", "agreement_std",
              "paper_accuracy", "paper_agreement", "per_seed"]
    csv_rows, md_rows = [], []
    for m in [k for k in _ORDER if k in rows]:
        r, std = rows[m], rows[m].get("std") or {}
        pa, pg = p18.get(m, (None, None))
        csv_rows.append([m, r.get("n"), r.get("accuracy"), *ci_of(r, "accuracy"),
                         std.get("accuracy"), r.get("agreement"), *ci_of(r, "agreement"),
                         std.get("agreement"), pa, pg, per_seed_json(r)])
        md_rows.append([MODEL_NAMES[m], r.get("n", DASH) or DASH, _cell(r, "accuracy"),
                        _cell(r, "agreement") if r.get("agreement") is not None else DASH]
                       + ([fmt(pa), fmt(pg)] if p18 else []))
    mh = ["model", "n", "test accuracy [95% CI]", "agreement (T = M = y) [95% CI]"]
    if p18:
        label = paper.paper_label(fam, "test set")
        mh += [f"{label}: test", f"{label}: agree"]
    return header, csv_rows, md_table(mh, md_rows) if md_rows else ""


def advtrain_attack_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 19: per ε and for Base–Luring and AdvTrain–Luring, AC_M,wb (white-box PGD on
    their M), AC_MoP / AC_M / DAC under MIM-W (with FGSM) and under the per-example worst
    case (over those and the adaptive family). Returns (CSV header, CSV rows, Markdown)."""
    fam = results.get("family") or ""
    p19 = paper.TABLE19.get(fam, {})
    rows = _rows(_part(results, "advtrain"), "table19")
    header = ["attack", "eps", "approach", "n", "ac_mop", "ac_m", "dac", "ac_mop_ci_low",
              "ac_mop_ci_high", "ac_m_ci_low", "ac_m_ci_high", "dac_ci_low", "dac_ci_high",
              "ac_mop_std", "ac_m_std", "dac_std", "setting", "paper_ac_m_wb", "paper_ac_m",
              "paper_dac", "per_seed"]
    csv_rows = []
    for r in rows:
        std = r.get("std") or {}
        a = str(r.get("approach"))
        pc = p19.get(a if a.endswith("-luring") else f"{a}-luring") \
            if eps_key(p19.get("eps")) == eps_key(r.get("eps")) else None
        # the paper's AC_M,wb beside our white-box rows, its AC_M and DAC beside MIM-W's
        wb_ = pc[0] if pc and r.get("attack") == "whitebox" else None
        ac_, dac_ = (pc[1], pc[2]) if pc and r.get("attack") == "mim-w" else (None, None)
        setting = r.get("setting")
        csv_rows.append([r.get("attack"), r.get("eps"), a, r.get("n"), r.get("ac_mop"),
                         r.get("ac_m"), r.get("dac"), *ci_of(r, "ac_mop"), *ci_of(r, "ac_m"),
                         *ci_of(r, "dac"), std.get("ac_mop"), std.get("ac_m"), std.get("dac"),
                         json.dumps(setting, sort_keys=True) if setting else None, wb_, ac_,
                         dac_, per_seed_json(r)])
    md_rows = []
    label = paper.paper_label(fam)
    for e in eps_values(rows):
        for m in ("base", "advtrain"):
            wb = _pick(rows, m, "whitebox", e)
            mw = _pick(rows, f"{m}-luring", "mim-w", e)
            ad = _pick(rows, f"{m}-luring", "worst-case", e)
            if not (wb or mw or ad):
                continue
            setting = (mw or {}).get("setting") or {}
            chosen = " ".join(str(v) for v in [setting.get("attack"), setting.get("p"),
                                               setting.get("kernel_size")] if v is not None)
            md_rows.append([fmt(e), MODEL_NAMES[f"{m}-luring"], "ours", ns_text((wb, mw, ad)),
                            _cell(wb, "ac_m"), _cell(mw, "ac_mop"), _cell(mw, "ac_m"),
                            _cell(mw, "dac"), chosen or DASH, _cell(ad, "ac_m"),
                            _cell(ad, "dac")])
            pc = p19.get(f"{m}-luring") if eps_key(p19.get("eps")) == e else None
            if pc:
                md_rows.append([fmt(e), MODEL_NAMES[f"{m}-luring"], label, "1000",
                                fmt(pc[0], 2), DASH, fmt(pc[1], 3), fmt(pc[2], 3), DASH, DASH,
                                DASH])
    mh = ["ε", "model", "source", "n", "AC_M,wb", "MIM-W AC_MoP", "MIM-W AC_M", "MIM-W DAC",
          "MIM-W setting", "worst case AC_M", "worst case DAC"]
    return header, csv_rows, md_table(mh, md_rows) if md_rows else ""


def trapdoor_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Table 20: per ε, AC_MoP (on the public model), AC_M and DAC of Trapdoor and Luring (the
    setting best for the adversary, and the per-example worst case), and the trapdoor
    detector's detection rate. Returns (CSV header, CSV rows, Markdown)."""
    fam = results.get("family") or ""
    p20 = {eps_key(e): v for e, v in paper.TABLE20.get(fam, {}).items()}
    rows = _rows(_part(results, "trapdoor"), "rows")
    header = ["attack", "eps", "approach", "n", "ac_mop", "ac_m", "dac", "detection_rate",
              "dac_rule", "ac_mop_ci_low", "ac_mop_ci_high", "ac_m_ci_low", "ac_m_ci_high",
              "dac_ci_low", "dac_ci_high", "detection_rate_ci_low", "detection_rate_ci_high",
              "dac_rule_ci_low", "dac_rule_ci_high", "ac_mop_std", "ac_m_std", "dac_std",
              "setting", "rule_setting", "paper_ac_mop", "paper_ac_m", "paper_dac",
              "per_seed"]
    csv_rows = []
    for r in rows:
        std = r.get("std") or {}
        pc = p20.get(eps_key(r.get("eps")), {}).get(r.get("approach")) \
            if r.get("attack") == "best" else None
        setting, rule = r.get("setting"), r.get("rule_setting")
        csv_rows.append([r.get("attack"), r.get("eps"), r.get("approach"), r.get("n"),
                         r.get("ac_mop"), r.get("ac_m"), r.get("dac"), r.get("detection_rate"),
                         r.get("dac_rule"), *ci_of(r, "ac_mop"), *ci_of(r, "ac_m"),
                         *ci_of(r, "dac"), *ci_of(r, "detection_rate"), *ci_of(r, "dac_rule"),
                         std.get("ac_mop"), std.get("ac_m"), std.get("dac"),
                         json.dumps(setting, sort_keys=True) if setting else None,
                         json.dumps(rule, sort_keys=True) if rule else None,
                         *(pc or (None, None, None)), per_seed_json(r)])
    md_rows = []
    label = paper.paper_label(fam)
    ours = eps_values(rows)
    for e in sorted(set(ours) | set(p20), key=lambda v: (v is None, v or 0.0)):
        if e in ours:
            for attack, name in (("best", "ours (best setting)"),
                                 ("worst-case", "ours (per-example worst case)")):
                tr, lu = _pick(rows, "trapdoor", attack, e), _pick(rows, "luring", attack, e)
                if tr or lu:
                    md_rows.append([fmt(e), name, ns_text((tr, lu)), _cell(tr, "ac_mop"),
                                    _cell(tr, "ac_m"), _cell(tr, "dac"),
                                    _cell(tr, "detection_rate") if tr and tr.get(
                                        "detection_rate") is not None else DASH,
                                    _cell(tr, "dac_rule") if tr and tr.get(
                                        "dac_rule") is not None else DASH,
                                    _cell(lu, "ac_mop"), _cell(lu, "ac_m"), _cell(lu, "dac")])
        if e in p20:
            tr, lu = p20[e].get("trapdoor"), p20[e].get("luring")
            md_rows.append([fmt(e), label, "1000", *[fmt(v, 2) for v in tr], DASH, DASH,
                            *[fmt(v, 2) for v in lu]])
    mh = ["ε", "source", "n", "Trapdoor AC_MoP", "Trapdoor AC_M", "Trapdoor DAC",
          "Trapdoor flagged", "Trapdoor DAC, T ≠ M reading", "Luring AC_MoP", "Luring AC_M",
          "Luring DAC"]
    return header, csv_rows, md_table(mh, md_rows) if rows else ""


def _count(v: Any, word: str) -> str:
    """``1 step``, ``5 steps``, ``0.5 epochs``."""
    return f"{v:g} {word}" + ("" if v == 1 else "s") if isinstance(v, (int, float)) else \
        f"{DASH} {word}s"


def _trapdoor_clean(part: dict) -> str:
    c = part.get("clean") or {}
    if not isinstance(c, dict) or c.get("accuracy") is None:
        return ""
    iv = c.get("intervals") or {}

    def ci(key: str) -> str:
        v = iv.get(key)
        return with_ci(c.get(key), tuple(v) if isinstance(v, (list, tuple)) and len(v) == 2
                       else (None, None))

    return (f"Trapdoored model on the test split (n = {c.get('n', DASH)}): accuracy "
            f"{ci('accuracy')}, clean false alarms {ci('false_alarm_rate')} (held-out "
            f"calibration: {fmt(c.get('heldout_false_alarm_rate'))} on "
            f"{c.get('heldout_n', DASH)} images, target {fmt(c.get('target_false_alarm'), 2)}), "
            f"trapdoor success {ci('trapdoor_success')} (worst label "
            f"{fmt(c.get('trapdoor_success_min'))}).")


def extra_sections(results: dict) -> list[tuple[str, tuple[list[str], list[list[Any]], str],
                                                 str, str]]:
    """(CSV file name, (header, rows, Markdown), section title, introduction) of each
    appendix table present in ``results``."""
    out = []
    adv = _part(results, "advtrain")
    if adv:
        tgt = (adv.get("target") or {}).get("settings") or {}
        how = (f"PGD ε = {tgt.get('adv_eps'):g}, {_count(tgt.get('adv_steps'), 'step')} of "
               f"{tgt.get('adv_step_size'):g}, {_count(tgt.get('epochs'), 'epoch')}"
               + (f", ε ramped up over {_count(tgt['adv_ramp_epochs'], 'epoch')}"
                  if tgt.get("adv_ramp_epochs") else "")
               if tgt else "PGD adversarial training")
        out.append(("table_advtrain_clean.csv", advtrain_clean_table(results),
                    "Adversarially trained M: accuracy and agreement (paper table 18)",
                    "Base: the run's M; Base–Luring: its luring T = M∘P; AdvTrain: M trained "
                    f"with PGD adversarial training ({how}; see the differences from the "
                    "paper); AdvTrain–Luring: its luring T, P trained with the run's luring "
                    "settings. Test accuracy on the whole test split; agreement: T and its M "
                    "both predict the true label. Brackets: 95% Wilson intervals."))
        out.append(("table_advtrain_attacks.csv", advtrain_attack_table(results),
                    "Adversarially trained M: white-box and transferred attacks (paper table 19)",
                    f"On {adv.get('n', DASH)} test images (which ones: see the differences "
                    "from the paper). AC_M,wb: the accuracy of T's own M under white-box PGD "
                    "on that M. MIM-W: examples crafted on T, the setting best for the "
                    "adversary among FGSM and the MIM-W grid, transferred to M; DAC: T ≠ M on "
                    "the example, or M right. Worst case (not in the paper): per example, the "
                    "worst over FGSM, the MIM-W grid and the adaptive family (margin loss, "
                    "BPDA, transfer attacks)."))
    trap = _part(results, "trapdoor")
    if trap:
        out.append(("table_trapdoor.csv", trapdoor_table(results),
                    "Trapdoor as the public model, beside Luring (paper table 20)",
                    "Examples crafted on the public model (Trapdoor: the trapdoored model; "
                    "Luring: T = M∘P), the setting best for the adversary among FGSM and the "
                    f"MIM-W grid, transferred to M, on {trap.get('n', DASH)} test images "
                    "(which ones: see the differences from the paper). "
                    "AC_MoP: accuracy of the public model; Trapdoor flagged: share the "
                    f"trapdoor's detector flags. {trap.get('dac_definition') or ''}. "
                    + _trapdoor_clean(trap)))
    return out


def extra_summary(results: dict) -> str:
    """Terminal lines for the appendix experiments (empty when neither ran)."""
    lines = []
    rows = _rows(_part(results, "advtrain"), "table19")
    for e in eps_values(rows):
        parts = []
        for m in ("base", "advtrain"):
            wb, mw = _pick(rows, m, "whitebox", e), _pick(rows, f"{m}-luring", "mim-w", e)
            parts.append(f"{MODEL_NAMES[m + '-luring']} AC_M,wb {fmt((wb or {}).get('ac_m'))}, "
                         f"MIM-W AC_M {fmt((mw or {}).get('ac_m'))} DAC "
                         f"{fmt((mw or {}).get('dac'))}")
        n = ns_text(r for r in rows if eps_key(r.get("eps")) == e)
        lines.append(f"advtrain (table 19), ε={fmt(e)}, n={n}: " + "; ".join(parts))
    rows = _rows(_part(results, "trapdoor"), "rows")
    for e in eps_values(rows):
        tr, lu = _pick(rows, "trapdoor", "best", e), _pick(rows, "luring", "best", e)
        cells = [" / ".join(fmt((r or {}).get(k)) for k in ("ac_mop", "ac_m", "dac"))
                 for r in (tr, lu)]
        lines.append(f"trapdoor (table 20), ε={fmt(e)}, n={ns_text((tr, lu))}: AC_MoP / AC_M / "
                     f"DAC Trapdoor {cells[0]}, Luring {cells[1]}")
    return "\n".join(lines) + ("\n" if lines else "")
