"""Pass/fail against the performance targets and the on-screen table of a benchmark result."""

from __future__ import annotations

from typing import Any

from luring.benchmarks.config import (
    AGREEMENT_MAX_POINTS,
    AGREEMENT_MAX_POINTS_LOWER,
    DEMO_MAX_BYTES,
    DEMO_MAX_SECONDS,
    LOWER_PRECISION_TARGETS,
    SPSA_MEMORY_MAX_RATIO,
    TARGETS,
)

__all__ = ["evaluate_targets", "format_table"]

_TARGET_TEXT = {
    "pgd_vs_loop": "PGD throughput / bare loop",
    "mim_vs_loop": "MIM throughput / bare loop",
    "dimti_vs_loop": "DIM-TI throughput / bare loop",
    "nifgsm_vs_loop": "NI-FGSM throughput / bare loop",
    "sinifgsm_vs_loop": "SI-NI-FGSM throughput per gradient evaluation / bare loop",
    "vmifgsm_vs_loop": "VMI-FGSM throughput per gradient evaluation / bare loop",
    "vnifgsm_vs_loop": "VNI-FGSM throughput per gradient evaluation / bare loop",
    "sia_vs_loop": "SIA throughput per gradient evaluation / bare loop",
    "bsr_vs_loop": "BSR throughput per gradient evaluation / bare loop",
    "sia_vs_best_loop": "SIA per gradient evaluation / bare loop in the best precision",
    "bsr_vs_best_loop": "BSR per gradient evaluation / bare loop in the best precision",
    "spsa_vs_forward": "SPSA queries/s / bare batched forward",
    "eco_vs_forward": "ECO queries/s / bare batched forward",
    "train_p_vs_step": "P training (train_defense) / bare Adam step",
    "mim_vs_torchattacks": "luring MIM / torchattacks MIFGSM",
    "mim_vs_art": "luring MIM / ART MomentumIterativeMethod",
    "mimw_batched_vs_one_at_a_time": "MIM-W grid, settings batched / one at a time",
    "mim_vs_best_loop": "luring MIM / bare loop in the best precision",
    "dimti_vs_best_loop": "DIM-TI / bare loop in the best precision",
    "train_p_vs_best_step": "P training / bare Adam step in the best precision",
    "dimti_vs_torchattacks": "luring DIM-TI / torchattacks MIFGSM (float32)",
    "nifgsm_vs_torchattacks": "luring NI-FGSM / torchattacks MIFGSM (float32)",
    "sinifgsm_vs_torchattacks": "luring SI-NI-FGSM per gradient evaluation / torchattacks",
    "vmifgsm_vs_torchattacks": "luring VMI-FGSM per gradient evaluation / torchattacks",
    "vnifgsm_vs_torchattacks": "luring VNI-FGSM per gradient evaluation / torchattacks",
    "train_m_vs_step": "M training (train_target) / bare Adam step (float32)",
}


def _row(name: str, desc: str, value: float | None, op: str, threshold: float,
         note: str = "") -> dict[str, Any]:
    ok = None
    if value is not None:
        ok = bool(value >= threshold) if op == ">=" else bool(value <= threshold)
    return {"name": name, "description": desc, "value": value, "op": op,
            "threshold": threshold, "pass": ok, "note": note}


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of the benchmark with their measured value and pass (True/False, or None
    when not measured, with the reason in ``note``)."""
    rows: list[dict[str, Any]] = []
    ratios, skipped = result.get("ratios", {}), result.get("skipped", {})
    lower = (result.get("precision") or {}).get("luring", "fp32") != "fp32"
    for key, (contender, baseline, target) in TARGETS.items():
        if lower and key in LOWER_PRECISION_TARGETS:
            target = LOWER_PRECISION_TARGETS[key]
        if target is None:
            continue
        if key in ratios:
            rows.append(_row(key, _TARGET_TEXT[key] + " (median of per-repetition ratios)",
                             ratios[key]["stats"]["median"], ">=", target))
        else:
            why = skipped.get(baseline) or skipped.get(contender) or "not measured"
            rows.append(_row(key, _TARGET_TEXT[key], None, ">=", target, f"skipped: {why}"))
    agree = result.get("agreement") or {}
    # luring's MIM in a lower precision rounds its gradients differently: within 2 points
    points = AGREEMENT_MAX_POINTS_LOWER if lower else AGREEMENT_MAX_POINTS
    for lib in ("torchattacks_mifgsm", "art_mim"):
        desc = f"|success rate (luring MIM) - success rate ({lib})|, points"
        if lib in agree:
            note = "" if agree.get("trained_model") else "model not trained: not meaningful"
            rows.append(_row(f"agreement_{lib}", desc, abs(agree[lib]["difference_points"]),
                             "<=", points, note))
        else:
            rows.append(_row(f"agreement_{lib}", desc, None, "<=", points,
                             f"skipped: {skipped.get(lib, 'not measured')}"))
    if "mimw_same_results" in result:
        same = result["mimw_same_results"]
        rows.append({"name": "mimw_batched_same_results",
                     "description": "MIM-W grid batched gives the one-at-a-time results "
                     "(fingerprints of every repetition equal)", "value": same, "op": "==",
                     "threshold": True, "pass": bool(same), "note": ""})
    scaling = (result.get("memory") or {}).get("spsa_scaling") or {}
    samples = scaling.get("samples") or [0]
    rows.append(_row("spsa_memory_flat", f"SPSA peak RSS at {samples[-1]} samples / at "
                     f"{samples[0]} (fixed chunk {scaling.get('chunk_size')})",
                     scaling.get("ratio_last_first"), "<=", SPSA_MEMORY_MAX_RATIO,
                     "; ".join(scaling.get("errors") or [])))
    demo = result.get("demo")
    if demo:
        failed = "" if demo.get("returncode") == 0 else f"demo exited {demo.get('returncode')}"
        rows.append(_row("demo_wall_time", "luring demo wall time, s", demo.get("seconds"),
                         "<=", DEMO_MAX_SECONDS, failed))
        rows.append(_row("demo_peak_memory", "luring demo peak RSS, MB",
                         demo.get("maxrss_mb"), "<=", DEMO_MAX_BYTES / 2**20, failed))
        if failed:
            for r in rows[-2:]:
                r["pass"] = False
    else:
        rows.append(_row("demo_wall_time", "luring demo wall time, s", None, "<=",
                         DEMO_MAX_SECONDS, "skipped: pass --demo"))
        rows.append(_row("demo_peak_memory", "luring demo peak RSS, MB", None, "<=",
                         DEMO_MAX_BYTES / 2**20, "skipped: pass --demo"))
    return rows


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def format_table(result: dict[str, Any]) -> str:
    """Throughputs, ratios, memory and targets as plain-text tables (min / median / max
    over repetitions)."""
    env = result.get("environment", {})
    parts = [f"luring bench ({result.get('mode')}): {env.get('device')}, torch "
             f"{env.get('torch')}, {env.get('threads')} threads, {env.get('cpu_model')}, "
             f"{result.get('config', {}).get('reps')} interleaved repetitions"]
    rows = [[name, c["unit"], _num(c["stats"]["min"]), _num(c["stats"]["median"]),
             _num(c["stats"]["max"])] for name, c in result.get("contenders", {}).items()]
    parts.append(_table(["contender", "unit", "min", "median", "max"], rows))
    rows = [[k, _num(r["stats"]["min"]), _num(r["stats"]["median"]), _num(r["stats"]["max"]),
             "-" if r["target"] is None else f">= {r['target']:g}",
             {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]]
            for k, r in result.get("ratios", {}).items()]
    parts.append(_table(["ratio (per repetition)", "min", "median", "max", "target", "pass"],
                        rows))
    mem = result.get("memory") or {}
    rows = [[k, _num(v.get("peak_rss_mb")), _num(v.get("delta_mb")),
             _num(v.get("maxrss_mb"))] for k, v in (mem.get("contenders") or {}).items()]
    if rows:
        parts.append(_table(["memory", "peak RSS MB", "delta MB", "child maxrss MB"], rows))
    sc = mem.get("spsa_scaling") or {}
    if sc.get("samples"):
        rows = [[str(s), _num(p), _num(d)] for s, p, d in
                zip(sc["samples"], sc["peak_rss_mb"], sc["delta_mb"], strict=True)]
        parts.append(_table(["SPSA samples", "peak RSS MB", "delta MB"], rows))
    agree = result.get("agreement") or {}
    if agree:
        rows = [["luring mim", _num(agree["mim"]["success_rate"]), "-", "-"]]
        rows += [[k, _num(v["success_rate"]), _num(v["difference_points"]),
                  _num(v["same_outcome"])] for k, v in agree.items()
                 if isinstance(v, dict) and k != "mim"]
        parts.append(_table([f"MIM success % (n={agree['n']}, eps={agree['eps']})",
                             "success %", "diff points", "same outcome"], rows))
    peak = result.get("peak") or {}
    if peak.get("contenders"):
        mm = peak.get("matmul_gflops", {})
        rows = [[k, v["precision"], _num(v["gflops"]), _num(v["peak_gflops"]),
                 f"{100 * v['fraction_of_peak']:.1f}%"] for k, v in peak["contenders"].items()]
        parts.append(_table(["contender (peak: " + ", ".join(
            f"{p} {g:,.0f} GFLOP/s" for p, g in mm.items()) + ")", "precision", "GFLOP/s",
            "peak GFLOP/s", "of peak"], rows))
    prec = result.get("precision") or {}
    if prec:
        parts.append(f"precision: luring's contenders {prec.get('luring')} (asked "
                     f"{prec.get('requested')}), best bare {prec.get('best')}")
    rows = [[t["name"], _num(t["value"]), f"{t['op']} {_num(t['threshold'])}",
             {True: "PASS", False: "FAIL", None: "skip"}[t["pass"]], t["note"]]
            for t in result.get("targets", [])]
    parts.append(_table(["target", "value", "needs", "result", "note"], rows))
    return "\n\n".join(parts)
