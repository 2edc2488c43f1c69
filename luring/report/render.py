"""Render a results dict into ``report.md``, CSV tables and PNG figures; terminal summary.

The results dict is the one the experiments stage writes (``results.json``); every part is
optional and every field may be null. All files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from luring.errors import LuringError
from luring.report import figures
from luring.report import paper_numbers as paper
from luring.report.adaptive import (
    adaptive_intro,
    adaptive_table,
    broken_by_table,
    diagnostics_table,
    operating_point_table,
)
from luring.report.cells import (
    DASH,
    NAMES,
    approaches_in,
    as_float,
    attacks_in,
    csv_text,
    eps_values,
    find_row,
    fmt,
    md_table,
    rows_of,
)
from luring.report.extra import extra_sections, extra_summary
from luring.report.tables import (
    characterize_table,
    clean_table,
    defend_table,
    distortion_table,
    logits_table,
)
from luring.report.verdict import paired_verdict_text, tradeoff_section, verdict_section
from luring.utils import atomic_write_bytes, atomic_write_text, ensure_dir, to_jsonable

__all__ = ["render_report", "print_summary", "luring_verdict", "verdict_text"]

_METRICS = (("dac", "DAC"), ("ac_m", "AC_M"))


def luring_verdict(results: dict, attack: str = "mim-w") -> list[dict[str, Any]]:
    """For each ε of ``attack`` (defend rows): does Luring have the highest DAC and AC_M of the
    approaches present? Returns ``[{"eps", "answer", "detail"}]`` with answer ``yes``
    (strictly highest on both), ``no`` (another approach is higher on one), ``tied`` (not
    beaten, but equalled) or ``n/a`` (no Luring value, or nothing to compare with)."""
    rows = rows_of(results, "defend", attack)
    out = []
    for e in eps_values(rows):
        lur = find_row(rows, "luring", e)
        others = [a for a in approaches_in(rows) if a != "luring"]
        if lur is None or not others:
            why = "no Luring result" if lur is None else "no other approach to compare with"
            out.append({"eps": e, "answer": "n/a", "detail": why})
            continue
        lost, tied, missing, parts = [], [], [], []
        for key, name in _METRICS:
            mine = as_float(lur.get(key))
            vals = [(a, as_float((find_row(rows, a, e) or {}).get(key))) for a in others]
            vals = [(a, v) for a, v in vals if v is not None]
            if mine is None or not vals:
                missing.append(name)
                parts.append(f"{name} n/a")
                continue
            best_a, best = max(vals, key=lambda t: t[1])
            rel = ">" if mine > best else ("=" if mine == best else "<")
            parts.append(f"{name} {fmt(mine)} {rel} {fmt(best)} ({NAMES.get(best_a, best_a)})")
            if mine < best:
                lost.append(name)
            elif mine == best:
                tied.append(name)
        answer = ("no" if lost else "n/a" if missing else "tied" if tied else "yes")
        out.append({"eps": e, "answer": answer, "detail": "; ".join(parts)})
    return out


def verdict_text(results: dict) -> str:
    """The luring-effect verdict in one line. With a paired verdict in the results (the
    adaptive experiment): how many comparisons of Luring with the other approaches (per attack
    and ε, McNemar, p < 0.05) find it higher, not different or lower, on DAC and on AC_M,
    and how many were excluded because the attack failed on T
    (:func:`luring.report.verdict.paired_verdict_text`); otherwise the highest-number
    comparison of MIM-W. Empty without either."""
    paired = paired_verdict_text(results)
    if paired:
        return paired
    v = luring_verdict(results)
    if not v:
        return ""
    yes = sum(x["answer"] == "yes" for x in v)
    per = "; ".join(f"ε={fmt(x['eps'])}: {x['answer']} ({x['detail']})" for x in v)
    return (f"Luring effect (MIM-W): Luring has the highest DAC and AC_M at {yes} of {len(v)} "
            f"ε — {per}")


def _seconds(v: Any) -> str:
    s = as_float(v)
    if s is None:
        return DASH
    return f"{s:.1f} s" if s < 120 else f"{s:.1f} s ({s / 60:.1f} min)"


def _reused(results: dict) -> str:
    """The wall time's caveat when this invocation resumed a run: it reused what an earlier
    one computed, so the figure is not the run's total."""
    got = results.get("reused") or {}
    units, models = int(got.get("units") or 0), int(got.get("models") or 0)
    if not units and not models:
        return ""
    return (f" for this invocation alone, which reused {units} stored unit{'s' * (units != 1)} "
            f"and {models} trained model{'s' * (models != 1)} from earlier invocations of the "
            "same run directory (not the run's total)")


def _header(results: dict) -> list[str]:
    fam = results.get("family") or DASH
    seeds = results.get("seeds") or ([results["seed"]] if results.get("seed") is not None else [])
    versions = results.get("versions") or {}
    lines = [f"# Luring report: {results.get('dataset') or 'unknown data set'}", "",
             f"- data set: {results.get('dataset') or DASH} (family {fam})",
             f"- profile: {results.get('profile') or DASH}",
             f"- seed{'s' if len(seeds) > 1 else ''}: "
             f"{', '.join(str(s) for s in seeds) if seeds else DASH}",
             f"- wall time: {_seconds(results.get('wall_time_s'))}{_reused(results)}",
             "- versions: " + (", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
                               if isinstance(versions, dict) and versions else DASH), ""]
    verdict = verdict_text(results)
    if verdict:
        lines += [f"**{verdict}**", ""]
    lines += ["## Differences from the paper", ""]
    diffs = results.get("differences_from_paper") or []
    lines += [f"- {d}" for d in diffs] if diffs else ["- none recorded"]
    fam_key = results.get("family") or ""
    ds = str(results.get("dataset") or "")
    if fam_key in paper.PAPER_LABEL and not ds.startswith(fam_key):
        lines.append(f"- the paper has no results for {ds}; the rows and columns labelled "
                     f"\"{paper.paper_label(fam_key, '…')}\" are shown for scale only")
    lines.append("")
    if len(seeds) > 1:
        lines += [f"With {len(seeds)} seeds, each rate is pooled over every seed's examples (its "
                  "n and 95% interval are the pooled ones); ± is the sample standard deviation "
                  "over seeds, and the CSV tables hold each seed's value and n.", ""]
    if results.get("settings"):
        text = json.dumps(to_jsonable(results["settings"]), indent=2, sort_keys=True)
        lines += ["## Settings", "", "<details><summary>resolved settings</summary>", "",
                  "```json", text, "```", "", "</details>", ""]
    return lines


def _mimw_settings(results: dict) -> str:
    rows = [r for r in rows_of(results, "defend", "mim-w") if r.get("setting")]
    fam = results.get("family") or ""
    seeds = results.get("seeds") or [results.get("seed")]
    out = []
    if rows:
        def chosen(r: dict) -> list[tuple[Any, dict]]:
            per = r.get("settings_per_seed") or [r["setting"]]
            return (list(zip(seeds, per, strict=True)) if len(per) == len(seeds)
                    else [(None, r["setting"])])

        many = any(len(chosen(r)) > 1 for r in rows)
        keys = sorted({k for r in rows for _, s in chosen(r) for k in s
                       if k not in ("attack", "p", "kernel_size")})
        md_rows = []
        order = approaches_in(rows)
        for r in sorted(rows, key=lambda r: (order.index(r.get("approach"))
                                             if r.get("approach") in order else 99,
                                             as_float(r.get("eps")) or 0.0)):
            ns = r.get("n_per_seed") or []
            for i, (seed, s) in enumerate(chosen(r)):
                n = ns[i] if many and i < len(ns) else r.get("n")
                md_rows.append([NAMES.get(r.get("approach"), r.get("approach")),
                                fmt(r.get("eps"))] + ([seed] if many else [])
                               + [n if n is not None else DASH,
                                  s.get("attack") or DASH,
                                  DASH if s.get("p") is None else s.get("p"),
                                  DASH if s.get("kernel_size") is None else s.get("kernel_size")]
                               + [json.dumps(to_jsonable(s.get(k))) for k in keys])
        out.append(md_table(["approach", "ε"] + (["seed"] if many else [])
                            + ["n", "chosen attack", "p", "kernel size", *keys], md_rows))
    ti = paper.TI_KERNELS.get(fam)
    if ti:
        label = paper.paper_label(fam)
        eps = ti["eps"]
        md_rows = [[a.upper(), NAMES.get(app, app)] + [f"{k}×{k}" for k in ks]
                   for a in ("mim-ti", "dim-ti") for app, ks in ti[a].items()]
        out.append(f"{label}: DIM / DIM-TI p = {paper.DIM_P[fam]}; MIM-TI / DIM-TI kernel "
                   "sizes (tables 11-13" + (", ε as printed in table 11" if fam == "mnist"
                                            else "") + "):\n\n"
                   + md_table(["attack", "approach"] + [f"ε = {e}" for e in eps], md_rows))
    return "\n".join(out)


def _saliency_section(results: dict, run_dir: Path) -> tuple[str, bytes | None]:
    sal = results.get("saliency")
    name = (sal.get("file") or sal.get("unit")) if isinstance(sal, dict) else None
    if not name:
        return "", None
    path = Path(name)
    path = path if path.is_absolute() else run_dir / path
    try:
        arrays = figures.load_saliency(path)
    except Exception as exc:  # unreadable or missing file: say so, keep rendering
        return f"Saliency file {path.name} could not be read ({type(exc).__name__}).\n", None
    png = figures.figure3_saliency_png(arrays)
    if png is None:
        return f"Saliency file {path.name} holds no image-shaped arrays.\n", None
    return ("![Figure 3 (right): saliency maps](figure3_saliency.png)\n\n"
            "Columns: clean image, ∇x CE(M(x), y) (saliency of M), then the mapping gradient "
            f"∇x P(x) of each approach (from {path.name}); one row per example.\n"), png


def render_report(results: dict, run_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, ``table_*.csv`` and ``figure*.png`` for ``results`` into
    ``run_dir`` (created if needed). The saliency maps are read from
    ``results["saliency"]["file"]`` (or ``["unit"]``), a safetensors file relative to
    ``run_dir``; see :func:`luring.report.figures.figure3_saliency_png` for its keys.
    Parts absent from ``results`` are skipped (their files are not written). Returns the
    path of ``report.md``."""
    if not isinstance(results, dict):
        raise LuringError(f"results must be a dict (results.json), got {type(results).__name__}")
    run_dir = ensure_dir(run_dir)
    fam = results.get("family") or ""
    label = paper.paper_label(fam)
    lines = _header(results)
    written: list[str] = []  # the tables and figures of these results, and only these

    def put(name: str, data: bytes) -> None:
        atomic_write_bytes(run_dir / name, data)
        written.append(name)

    def table(name: str, built: tuple[list[str], list[list[Any]], str]) -> str:
        header, rows, md = built
        if rows:
            put(name, csv_text(header, rows).encode("utf-8"))
        return md

    md = table("table_clean.csv", clean_table(results))
    if md:
        lines += ["## Clean accuracy and agreement (paper table 8)", "",
                  "Agreement: T = M∘P and M both predict the true label. False alarm: "
                  "T ≠ M on a clean image (the detector would flag it).", "", md]

    md = table("table_defend.csv", defend_table(results))
    if md:
        note = ("The paper's MNIST ε are 0.2 / 0.3 / 0.4 (table 14). " if fam == "mnist"
                else "")
        lines += ["## Defense: AC_MoP, AC_M and DAC (paper table 1 / table 14)", "",
                  "Attacks on T = M∘P, transferred to M. AC_MoP, AC_M: accuracy of M∘P and M "
                  "on the adversarial examples; DAC: detected (T ≠ M) or well classified by "
                  f"M. n: examples per cell. {note}Rows labelled \"{label}\" are the "
                  "paper's numbers, not ours.", "", md]
        v = luring_verdict(results)
        if v:
            lines += ["### Verdict: luring effect (MIM-W)", ""]
            lines += [f"- ε = {fmt(x['eps'])}: **{x['answer']}** — {x['detail']}" for x in v]
            lines.append("")

    fig2 = figures.figure2_png(results)
    md = table("table_characterize.csv", characterize_table(results))
    if fig2 or md:
        lines += ["## Characterization: DR and IAR (paper figure 2)", ""]
        if fig2:
            put("figure2.png", fig2)
            lines += ["![Figure 2: DR (solid) and IAR (dashed)](figure2.png)", ""]
        lines += ["Examples successful on M∘P of every approach, transferred to M. DR: share "
                  "where M and M∘P disagree; IAR: share where M is still right.", "", md]

    fig3 = figures.figure3_l0_png(results)
    md = table("table_distortion.csv", distortion_table(results))
    if fig3 or md:
        lines += ["## Distortion (paper table 9, figure 3 left)", "",
                  "CWL2 adversarial examples on each model; means over the successful ones. "
                  "l0: pixels changed in any channel by more than half a grey level.", "", md]
        if fig3:
            put("figure3_l0.png", fig3)
            lines += ["![Figure 3: l0 distortion](figure3_l0.png)", ""]

    sal_md, sal_png = _saliency_section(results, run_dir)
    if sal_md:
        if sal_png:
            put("figure3_saliency.png", sal_png)
        lines += ["## Saliency maps (paper figure 3, right)", "", sal_md]

    md = table("table_logits.csv", logits_table(results))
    if md:
        lines += ["## Logit variations Ω_c (paper table 10)", "",
                  "Share of examples for which Ω_c (input dimensions where the logit-c "
                  "gradients of M and M∘P have opposite signs) is higher for Luring than for "
                  "the other approach. Classes are 0-based (the paper's class 1 is our 0)."
                  + ("" if fam in paper.TABLE10 else
                     " The paper reports table 10 for SVHN and CIFAR10 only."),
                  "", md]

    header, rows, md = adaptive_table(results)
    if md:
        table("table_adaptive.csv", (header, rows, md))
        lines += ["## Adaptive evaluation (not in the paper)", "", adaptive_intro(results),
                  "", md, ""]
        md = broken_by_table(results)
        if md:
            lines += ["### Which attacks broke the worst case", "", md, ""]
    md = operating_point_table(results)
    if md:
        lines += ["## Detector at its operating point (ROC)", "", md, ""]
        for attack, per_eps in sorted((results.get("roc") or {}).items()):
            for e, curves in sorted(per_eps.items(), key=lambda kv: float(kv[0])):
                png = figures.roc_png(curves, f"{NAMES.get(attack, attack)}, ε = {e}")
                if png:
                    name = f"figure_roc_{attack}_eps{e}.png"
                    put(name, png)
                    lines += [f"![ROC, {attack}, ε = {e}]({name})", ""]
        lines += ["ROC curves: circle = the stored operating point, cross = the paper rule "
                  "(flag when T ≠ M).", ""]
    md = diagnostics_table(results)
    if md:
        lines += ["## Gradient-masking diagnostics", "", md, ""]
    lines += verdict_section(results, table)
    lines += tradeoff_section(results, put)

    for name, built, title, intro in extra_sections(results):  # appendices H.2 and I
        md = table(name, built)
        if md:
            lines += [f"## {title}", "", intro, "", md, ""]

    md = _mimw_settings(results)
    if md:
        lines += ["## MIM-W: chosen settings", "",
                  "MIM-W reports, per approach and ε, the transfer attack (MIM, DIM, MIM-TI, "
                  "DIM-TI) and parameters giving the lowest AC_M / DAC.", "", md]

    # Tables and figures left by an earlier render describe results these are not: remove
    # them, so that the directory and its report show only what results.json holds.
    for p in run_dir.iterdir():
        if (p.suffix in (".csv", ".png") and p.name.startswith(("table_", "figure"))
                and p.name not in written):
            p.unlink()
    if written:
        lines += ["## Files", ""] + [f"- [{n}]({n})" for n in sorted(written)] + [""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    return report


def print_summary(results: dict) -> str:
    """The main defense table as plain text for the terminal (returned, not printed): rows
    attack × ε, columns AC_MoP / AC_M / DAC per approach, then the verdict line."""
    if not isinstance(results, dict):
        raise LuringError(f"results must be a dict (results.json), got {type(results).__name__}")
    seeds = results.get("seeds") or [results.get("seed")]
    head = (f"luring: {results.get('dataset') or '?'} (profile {results.get('profile') or '?'}, "
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)})")
    rows = rows_of(results, "defend")
    if not rows:
        return head + "\n" + (extra_summary(results) or "no defense results\n")
    apps = approaches_in(rows)
    w = 19
    lines = [head, "defense: attacks on T = M∘P transferred to M; cells AC_MoP / AC_M / DAC",
             f"{'attack':<11}{'eps':>7}{'n':>7}  " + "".join(f"{NAMES.get(a, a):<{w}}"
                                                             for a in apps).rstrip()]
    for attack in attacks_in(rows):
        sub = [r for r in rows if r.get("attack") == attack]
        for e in eps_values(sub):
            cells = [find_row(sub, a, e) for a in apps]
            ns = sorted({c.get("n") for c in cells if c and c.get("n") is not None})
            n = "/".join(str(x) for x in ns) if ns else "-"
            cell_txt = [" ".join(fmt((c or {}).get(k)) for k in ("ac_mop", "ac_m", "dac"))
                        for c in cells]
            txt = "".join(f"{t:<{w}}" for t in cell_txt)
            lines.append(f"{attack:<11}{fmt(e):>7}{n:>7}  {txt.rstrip()}")
    verdict = verdict_text(results)
    if verdict:
        lines.append(verdict)
    return "\n".join(lines) + "\n" + extra_summary(results)
