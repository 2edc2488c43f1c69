"""Report tables of the adaptive evaluation: the adaptive attack rows, the gradient-masking
diagnostics and the paired verdict. Every number comes from the results dict."""

from __future__ import annotations

import json
from typing import Any

from luring.report.cells import (
    DASH,
    NAMES,
    approaches_in,
    as_float,
    attack_failed,
    cells_by_eps,
    ci_of,
    eps_values,
    failure_note,
    find_row,
    fmt,
    md_table,
    mop_cell,
    ns_text,
    present_rows,
    rows_of,
    std_cells,
)

__all__ = ["adaptive_table", "diagnostics_table", "operating_point_table", "ADAPTIVE_ATTACKS",
           "ATTACK_NAMES", "broken_by_table", "adaptive_intro"]

ADAPTIVE_ATTACKS = ("adaptive-w", "adaptive-worst", "substitute", "all-worst", "public")
#: Display names of every attack, the adaptive ones included.
ATTACK_NAMES = _NAMES = NAMES | {"adaptive-w": "adaptive (best setting)",
                  "adaptive-worst": "adaptive (per-example worst case)",
                  "substitute": "substitute model (queries only)",
                  "all-worst": "every attack (per-example worst case: MIM-W, query attacks, "
                               "adaptive family, substitute)",
                  "public": "public model (crafted on the attacker's own model S, never on T)"}
#: Display names of the parts of a worst case (``broken_by``).
PART_NAMES = {"family": "T alone", "transforms": "SIA/BSR on T", "ensemble": "T+S ensemble",
              "worst-case": "MIM-W grid", "adaptive-worst": "adaptive family",
              "substitute": "substitute"}
_KEYS = ("ac_mop", "ac_m", "dac", "ac_m_given_fooled")


def adaptive_table(results: dict) -> tuple[list[str], list[list[Any]], str]:
    """Per adaptive attack: rows ε, columns AC_MoP / AC_M / DAC / AC_M given T fooled per
    approach. Returns (CSV header, CSV rows, Markdown)."""
    all_rows = rows_of(results, "adaptive")
    header = ["attack", "eps", "approach", "n", *_KEYS,
              *[f"{k}_ci_{s}" for k in _KEYS for s in ("low", "high")], "setting", "queries",
              "attack_failed"]
    csv_rows: list[list[Any]] = []
    md = []
    for attack in ADAPTIVE_ATTACKS:
        rows = [r for r in all_rows if r.get("attack") == attack]
        if not rows:
            continue
        apps = approaches_in(rows)
        for _, a, r in present_rows(rows, apps):
            setting = r.get("setting")
            csv_rows.append([attack, r.get("eps"), a, r.get("n"),
                             *[r.get(k) for k in _KEYS],
                             *[v for k in _KEYS for v in ci_of(r, k)],
                             json.dumps(setting, sort_keys=True) if setting else None,
                             r.get("queries"), attack_failed(r)])
        mh = ["ε", "n"] + [f"{NAMES.get(a, a)} {m}" for a in apps
                           for m in ("AC_MoP", "AC_M", "DAC", "AC_M|fooled")]
        md_rows = []
        for e, cells in cells_by_eps(rows, apps):
            line = [fmt(e), ns_text(cells)]
            for c in cells:
                line += [mop_cell(c), *std_cells(c, _KEYS[1:])]
            md_rows.append(line)
        q = sorted({r.get("queries") for r in rows if r.get("queries") is not None})
        extra = f" Queries to T per substitute: {', '.join(map(str, q))}." if q else ""
        note = failure_note(rows)
        md.append(f"**{_NAMES[attack]}**{extra}\n\n" + md_table(mh, md_rows)
                  + (f"\n{note}\n" if note else ""))
    return header, csv_rows, "\n\n".join(md)


def broken_by_table(results: dict) -> str:
    """Markdown: for the per-example worst cases (``adaptive-worst``, ``all-worst``), per
    approach and ε, the DAC under each part alone, the share of the examples each part broke
    (left undefended) and broke alone, and the worst case's DAC; "" without breakdowns."""
    rows = [r for r in rows_of(results, "adaptive") if isinstance(r.get("broken_by"), dict)]
    out = []
    for attack in ("adaptive-worst", "all-worst"):
        sub = [r for r in rows if r.get("attack") == attack]
        parts = [p for p in PART_NAMES if any(p in r["broken_by"] for r in sub)]
        if not sub or not parts:
            continue
        md_rows = []
        for a in approaches_in(sub):
            for e in eps_values(sub):
                r = find_row(sub, a, e)
                if r is None:
                    continue
                b = r["broken_by"]
                line = [NAMES.get(a, a), fmt(e), (b.get("all") or {}).get("n", DASH)]
                for p in parts:
                    c = b.get(p) or {}
                    line.append(f"{fmt(c.get('dac'))} ({fmt(c.get('broke'))} / "
                                f"{fmt(c.get('only'))})" if c else DASH)
                line.append(fmt((b.get("all") or {}).get("dac")))
                md_rows.append(line)
        head = ["approach", "ε", "n", *[PART_NAMES[p] for p in parts], "worst case DAC"]
        out.append(f"**{_NAMES[attack]}**\n\n" + md_table(head, md_rows))
    if not out:
        return ""
    return ("Per part of the worst case: its DAC alone (share of the examples it broke / "
            "broke alone, i.e. no other part broke them), pooled over seeds. The first part's "
            "DAC is the worst case without the later parts.\n\n" + "\n\n".join(out))


def adaptive_intro(results: dict) -> str:
    """The adaptive section's opening paragraph, from the run's settings."""
    cfg = ((results.get("settings") or {}).get("adaptive") or {})
    fam = ", ".join(t.get("attack", str(t)) if isinstance(t, dict) else str(t)
                    for t in cfg.get("transfer_attacks") or [])
    own = "T's own gradient"
    passes = "; ".join(f"{lo} loss, {'BPDA' if g == 'bpda' else own}"
                       for lo, g in cfg.get("passes") or [])
    text = (f"The same test images as the defense table. adaptive (best setting): the single "
            f"setting best for the adversary over MIM-W's grid and {fam or 'no transfer attack'}"
            f" ({passes})")
    tr = cfg.get("transforms") or []
    if tr:
        text += ", and the input-transformation attacks " + ", ".join(
            f"{t['attack'].upper()} ({t.get('num_copies', 20)} copies"
            + (f", {t['steps']} iterations" if "steps" in t else "") + ")" for t in tr)
    ens = (cfg.get("attacker") or {}).get("ensemble")
    if ens:
        modes = "; ".join(f"{lo} loss, {'BPDA through T' if g == 'bpda' else 'T plain'}, "
                          f"{'averaged logits' if m == 'logits' else 'averaged losses'}"
                          for lo, g, m in ens.get("passes") or [])
        text += (", and T attacked together with the attacker's own model S (the family's M "
                 f"architecture trained with labels, another seed; weights {ens.get('weights')}"
                 f"; {modes})")
    text += ("; per-example worst case: defended only if it survives every one of them; "
             "substitute model: a model trained on T's answers to other test images, attacked "
             "with the MIM-W grid (per-example worst case), judged on T and M. "
             "AC_M|fooled: M's accuracy on the examples that fool T.")
    if (cfg.get("attacker") or {}).get("public"):
        text += (" public model: the MIM-W grid and the transforms crafted on S alone (the "
                 "attacker never queries T) and judged on M and T — the transfer that luring "
                 "does not address: M is exposed to it exactly as without luring, and only "
                 "the detector (T ≠ M) can catch it; not part of the worst cases or the "
                 "verdict.")
    return text


def _with_count(ac_mop: Any, n: Any) -> str:
    """AC_MoP with the count of images it stands for: ``0.001 (1 of 690)``, so that a
    flagged rate that rounds to 0.00 still shows what was left."""
    if as_float(ac_mop) is None or not isinstance(n, int) or n <= 0:
        return fmt(ac_mop, 2)
    return f"{fmt(ac_mop, 3)} ({round(float(ac_mop) * n)} of {n})"


def diagnostics_table(results: dict) -> str:
    """Markdown: per approach (and seed), the four masking checks, each 'ok' or 'FLAGGED'."""
    diag = results.get("diagnostics") or {}
    if not isinstance(diag, dict) or not diag:
        return ""
    md_rows = []
    for a in approaches_in({"approach": k} for k in diag):
        d = diag[a]
        for seed, c in sorted((d.get("seeds") or {}).items()):
            def mark(name: str, text: str, c: dict = c) -> str:
                return f"{'FLAGGED' if c[name]['flagged'] else 'ok'}: {text}"

            g, st, ub, gf = c["gradient"], c["steps"], c["unbounded"], c["gradient_free"]
            md_rows.append([
                NAMES.get(a, a), seed,
                mark("gradient", f"{g['grad_t']:.1e} vs M {g['grad_m']:.1e}"),
                mark("steps", " → ".join(f"{s}: {fmt(v, 2)}"
                                         for s, v in zip(st["steps"], st["ac_mop"], strict=False))),
                mark("unbounded", _with_count(ub["ac_mop"], c.get("n"))),
                mark("gradient_free", f"SPSA {fmt(gf['ac_mop_spsa'], 2)} vs "
                                      f"MIM {fmt(gf['ac_mop_gradient'], 2)}"),
                ", ".join(c["flagged"]) or "none"])
    first = next(iter(diag.values()))
    check = next(iter((first.get("seeds") or {}).values()), {})
    n = check.get("n", DASH)
    ub = check.get("unbounded") or {}  # the ε = 1 attack as the run recorded it (newer runs)
    ub_how = (f" with {ub['steps']} steps of {ub['alpha']:.3g}"
              if ub.get("steps") and as_float(ub.get("alpha")) is not None else "")
    return (f"Checks at ε = {fmt(first.get('eps'))} (n = {n} test images): median "
            "input-gradient magnitude of T against M's (flagged below the threshold ratio); "
            "AC_MoP of plain MIM as the number of steps grows (flagged "
            "if it rises); AC_MoP of the same MIM at ε = 1" + ub_how
            + " (flagged unless 0: an unbounded attack must always win; in brackets, the "
            "images it left T right on); SPSA against MIM on T "
            "(flagged if the gradient-free attack fools T more often). A flagged approach's "
            "plain-attack numbers measure attack failure as much as the defense.\n\n"
            + md_table(["approach", "seed", "input gradient", "AC_MoP vs steps",
                        "AC_MoP at ε = 1", "SPSA vs MIM", "flagged"], md_rows))


def operating_point_table(results: dict) -> str:
    """Markdown: for every attack row with a detector figure (SPSA, ECO, MIM-W, adaptive best
    setting), per approach: DAC with the paper rule, DAC at the stored operating point, the
    detection rate there and the AUROC of the stored score."""
    rows = [r for r in (results.get("rows") or []) if isinstance(r, dict)
            and r.get("dac_op") is not None]
    if not rows:
        return ""
    apps = approaches_in(rows)
    md_rows = []
    order = ("spsa", "eco", "mim-w", "adaptive-w")
    for attack in [a for a in order if any(r.get("attack") == a for r in rows)]:
        sub = [r for r in rows if r.get("attack") == attack]
        for e, cells in cells_by_eps(sub, apps):
            line = [_NAMES.get(attack, attack), fmt(e), ns_text(cells)]
            for c in cells:
                c = c or {}
                line += [f"{fmt(c.get('dac'))} / {fmt(c.get('dac_op'))}",
                         fmt(c.get("detection_rate")),
                         fmt(c.get("auroc")) if c.get("auroc") is not None else DASH]
            md_rows.append(line)
    rules = sorted({str(r["detector"]["rule"]) for r in rows
                    if isinstance(r.get("detector"), dict) and r["detector"].get("rule")})
    head = ["attack", "ε", "n"] + [f"{NAMES.get(a, a)} {m}" for a in apps
                                   for m in ("DAC paper / op", "detected", "AUROC")]
    return (f"Score rule(s): {', '.join(rules) or DASH}; each defense's threshold was "
            "calibrated on held-out training images to its false-alarm target (see the clean "
            "table). DAC op: M right or flagged at the operating point; detected: share of the "
            "adversarial examples flagged; AUROC: clean versions of the attacked images "
            "against the adversarial examples.\n\n" + md_table(head, md_rows))
