"""Figures of the report (figure 2, figure 3, ROC curves, the trade-off) as PNG bytes.

Drawn with matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``): no pyplot, no global backend switch, no display needed. Each function
returns PNG bytes, or None when the results hold nothing to draw; the caller writes them
atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from luring.report.cells import (
    APPROACHES,
    NAMES,
    approaches_in,
    as_float,
    attacks_in,
    eps_values,
    find_row,
    rows_of,
)
from luring.utils import wilson_interval

__all__ = ["COLOURS", "figure2_png", "figure3_l0_png", "figure3_saliency_png", "load_saliency",
           "roc_png", "tradeoff_points", "tradeoff_png", "TRADEOFF_ATTACK"]

#: The attack of the trade-off figure's y axis.
TRADEOFF_ATTACK = "adaptive-worst"

#: One colour per approach / model, fixed so that every figure agrees.
COLOURS = {"target": "#444444", "stack": "#1f77b4", "auto": "#2ca02c", "ce": "#ff7f0e",
           "luring": "#d62728"}
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_FIG2_ATTACKS = ("fgsm", "pgd", "mim", "mim-l2")
_IMAGE_KEYS = ("image", "images", "clean", "x")
_INPUT_KEYS = ("input", "input_gradient", "target", "m")


def _colour(name: str, i: int) -> str:
    return COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)])


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _f(v: Any) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def figure2_png(results: dict) -> bytes | None:
    """Figure 2: DR (solid) and IAR (dashed) against ε, one colour per approach, one panel per
    characterization attack (FGSM, PGD, MIM, MIM-L2 in that order, then any other)."""
    rows = [r for r in rows_of(results, "characterize") if r.get("eps") is not None]
    attacks = [a for a in attacks_in(rows) if a in _FIG2_ATTACKS]
    attacks += [a for a in attacks_in(rows) if a not in _FIG2_ATTACKS]
    if not attacks:
        return None
    fig = _new_figure(3.6 * len(attacks) + 1.0, 3.4)
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    apps = approaches_in(rows)
    for ax, attack in zip(axes, attacks, strict=True):
        for i, a in enumerate(apps):
            pts = sorted((_f(r.get("eps")), _f(r.get("dr")), _f(r.get("iar"))) for r in rows
                         if r.get("attack") == attack and r.get("approach") == a)
            if not pts:
                continue
            e, dr, iar = (np.array(v) for v in zip(*pts, strict=True))
            c = _colour(a, i)
            ax.plot(e, dr, "-o", color=c, markersize=4)
            ax.plot(e, iar, "--s", color=c, markersize=4)
        ax.set_title(NAMES.get(attack, attack))
        ax.set_xlabel("ε")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rate")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour(a, i), linewidth=2) for i, a in enumerate(apps)]
    handles += [Line2D([], [], color="black", linestyle="-"),
                Line2D([], [], color="black", linestyle="--")]
    fig.legend(handles, [NAMES.get(a, a) for a in apps] + ["DR", "IAR"], loc="center right",
               fontsize=8, frameon=False)
    sep = " " if len(attacks) > 2 else "\n"
    fig.suptitle(f"{results.get('dataset', '')}: disagreement rate (solid) and inefficient"
                 f"{sep}adversarial examples rate (dashed)", fontsize=9)
    width = 3.6 * len(attacks)
    fig.subplots_adjust(left=0.25 / (width / 3.6) if len(attacks) > 1 else 0.17,
                        right=1 - 1.0 / (width + 1.0), top=0.85 if len(attacks) > 2 else 0.8,
                        bottom=0.15, wspace=0.25)
    return _png(fig)


def figure3_l0_png(results: dict) -> bytes | None:
    """Figure 3 (left/middle): l0 distortion per attacked model — a histogram of the
    per-example l0 where the lists are present, and a bar chart of the mean l0."""
    entries = [d for d in results.get("distortion") or []
               if isinstance(d, dict) and d.get("model") is not None]
    order = ["target", *APPROACHES]
    entries.sort(key=lambda d: order.index(d["model"]) if d["model"] in order else 99)
    lists = {d["model"]: [float(v) for v in d.get("l0") or [] if v is not None] for d in entries}
    has_hist = any(lists.values())
    means = [(d["model"], _f(d.get("mean_l0"))) for d in entries]
    if not has_hist and all(np.isnan(m) for _, m in means):
        return None
    fig = _new_figure(9.0 if has_hist else 4.5, 3.4)
    axes = fig.subplots(1, 2 if has_hist else 1, squeeze=False)[0]
    if has_hist:
        ax = axes[0]
        top = max(max(v) for v in lists.values() if v)
        bins = np.linspace(0, max(top, 1.0), 31)
        for i, (m, vals) in enumerate(lists.items()):
            if vals:
                ax.hist(vals, bins=bins, histtype="step", linewidth=1.5, color=_colour(m, i),
                        label=f"{NAMES.get(m, m)} (n={len(vals)})")
        ax.set_xlabel("l0 distortion (pixels changed by > half a grey level)")
        ax.set_ylabel("examples")
        ax.legend(fontsize=7)
    ax = axes[-1]
    names = [NAMES.get(m, m) for m, _ in means]
    ax.bar(range(len(means)), [0.0 if np.isnan(v) else v for _, v in means],
           color=[_colour(m, i) for i, (m, _) in enumerate(means)])
    ax.set_xticks(range(len(means)))
    ax.set_xticklabels(names, rotation=20, fontsize=8)
    ax.set_ylabel("mean l0 (pixels)")
    fig.suptitle(f"{results.get('dataset', '')}: l0 adversarial distortion", fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.87, bottom=0.2, wspace=0.3)
    return _png(fig)


def load_saliency(path: Path) -> dict[str, np.ndarray]:
    """Read a saliency file (safetensors) into numpy arrays (N, C, H, W) or (C, H, W).
    Raises OSError / ValueError on an unreadable file."""
    from safetensors.numpy import load_file

    return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}


def _base(key: str) -> str:
    """``component/luring``, ``component_luring``, ``p_luring`` → ``luring``."""
    return key.lower().split("/")[-1].removeprefix("component_").removeprefix("p_")


def _key_rank(key: str) -> tuple[int, str]:
    base = _base(key)
    if base in _IMAGE_KEYS:
        return 0, key
    if base in _INPUT_KEYS:
        return 1, key
    if base in APPROACHES:
        return 2 + APPROACHES.index(base), key
    return 10, key


def figure3_saliency_png(arrays: dict[str, np.ndarray], max_examples: int = 4) -> bytes | None:
    """Figure 3 (right): one column per saved map, one row per example (at most
    ``max_examples``). Expected keys: ``image`` (clean images), ``input`` or
    ``input_gradient`` (∇ₓ CE(M(x), y)) and one key per approach (∇ₓ P(x), named
    ``luring``, ``component_luring`` or ``component/luring``); other keys are drawn after.
    Images are drawn as they are; gradient maps as |gradient| summed over channels, scaled
    per map."""
    keys = sorted((k for k, v in arrays.items() if v.ndim in (3, 4) and v.size), key=_key_rank)
    if not keys:
        return None
    batch = {k: arrays[k] if arrays[k].ndim == 4 else arrays[k][None] for k in keys}
    n = min(max_examples, min(v.shape[0] for v in batch.values()))
    if n == 0:
        return None
    fig = _new_figure(1.6 * len(keys), 1.6 * n + 0.4)
    axes = fig.subplots(n, len(keys), squeeze=False)
    for j, k in enumerate(keys):
        is_image = _key_rank(k)[0] == 0
        for i in range(n):
            a = batch[k][i]
            ax = axes[i][j]
            if is_image:
                img = a[0] if a.shape[0] == 1 else np.transpose(a[:3], (1, 2, 0))
                ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None,
                          vmin=0, vmax=1)
            else:
                g = np.abs(a).sum(axis=0)
                ax.imshow(g / g.max() if g.max() > 0 else g, cmap="inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                base = _base(k)
                title = ("image" if is_image else "∇x CE(M(x), y)" if _key_rank(k)[0] == 1
                         else f"∇x P(x): {NAMES.get(base, base)}")
                ax.set_title(title, fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.02, wspace=0.05, hspace=0.05)
    return _png(fig)


def roc_png(curves: dict[str, Any], title: str) -> bytes | None:
    """ROC curves of the detector, one per approach (``curves[approach]`` as written by the
    experiments: ``fpr``, ``tpr``, ``auroc``, ``operating_point``, ``paper_point``), with the
    stored operating point (circle) and the paper rule's single point (cross)."""
    entries = [(a, c) for a, c in curves.items() if isinstance(c, dict) and c.get("fpr")]
    if not entries:
        return None
    order = approaches_in({"approach": a} for a, _ in entries)
    fig = _new_figure(4.8, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
    for i, a in enumerate(order):
        c = dict(entries)[a]
        col = _colour(a, i)
        ax.step(c["fpr"], c["tpr"], where="post", color=col, lw=1.5,
                label=f"{NAMES.get(a, a)} (AUROC {_f(c.get('auroc')):.3f})")
        op, pp = c.get("operating_point"), c.get("paper_point")
        if op:
            ax.plot([op[0]], [op[1]], "o", color=col, ms=5)
        if pp:
            ax.plot([pp[0]], [pp[1]], "x", color=col, ms=7, mew=1.5)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-alarm rate (clean test images)")
    ax.set_ylabel("detection rate (adversarial examples)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _interval(ci: Any) -> tuple[float | None, float | None]:
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2
    return (as_float(ci[0]), as_float(ci[1])) if ok else (None, None)


def _per_seed_dac(row: dict) -> list[tuple[Any, float | None, tuple]]:
    """``[(seed, DAC, (low, high))]`` of an adaptive row: each seed's value with the Wilson
    interval of its k / n, or the pooled value (seed None) with one seed."""
    per = (row.get("per_seed") or {}).get("dac")
    if per:
        return [(p.get("seed"), as_float(p.get("value")),
                 wilson_interval(p["k"], p["n"]) if p.get("k") is not None and p.get("n")
                 else (None, None)) for p in per]
    return [(None, as_float(row.get("dac")), _interval((row.get("ci") or {}).get("dac")))]


def _per_seed_agreement(clean: dict, seeds: list) -> list[tuple[Any, float | None, tuple]]:
    """``[(seed, agreement, (low, high))]`` of a clean-table entry: each seed's value (its
    interval from n = the test images per seed), or the pooled one (seed None)."""
    per = (clean.get("per_seed") or {}).get("agreement")
    n = clean.get("n")
    if per and len(per) == len(seeds) and isinstance(n, int) and n > 0:
        out = []
        for s, v in zip(seeds, per, strict=True):
            v = as_float(v)
            ci = wilson_interval(round(v * n), n) if v is not None else (None, None)
            out.append((s, v, ci))
        return out
    return [(None, as_float(clean.get("agreement")),
             _interval((clean.get("ci") or {}).get("agreement")))]


def tradeoff_points(results: dict) -> tuple[float | None, list[dict[str, Any]]]:
    """The trade-off figure's data: the middle ε of the adaptive worst-case rows and one point
    per approach and seed ``{"approach", "seed", "x", "x_ci", "y", "y_ci"}``: x the clean
    agreement with M (T = M = y, ``results["clean"]``), y the DAC under the adaptive worst case
    at that ε, each with its 95% interval (None where unknown). Seeds are paired when both
    sides have one value per seed, else the pooled values make one point (seed None).
    ``(None, [])`` without adaptive worst-case rows."""
    rows = rows_of(results, "adaptive", TRADEOFF_ATTACK)
    eps = [e for e in eps_values(rows) if e is not None]
    if not eps:
        return None, []
    mid = eps[len(eps) // 2]
    clean = results.get("clean") if isinstance(results.get("clean"), dict) else {}
    seeds = list(results.get("seeds") or [results.get("seed")])
    points = []
    for a in approaches_in(rows):
        row, c = find_row(rows, a, mid), clean.get(a)
        if row is None or not isinstance(c, dict):
            continue
        ys, xs = _per_seed_dac(row), _per_seed_agreement(c, seeds)
        if len(ys) != len(xs):   # not one value per seed on both sides: the pooled ones
            ys = [(None, as_float(row.get("dac")), _interval((row.get("ci") or {}).get("dac")))]
            xs = [(None, as_float(c.get("agreement")),
                   _interval((c.get("ci") or {}).get("agreement")))]
        for (s, y, y_ci), (_, x, x_ci) in zip(ys, xs, strict=True):
            if x is not None and y is not None:
                points.append({"approach": a, "seed": s, "x": x, "x_ci": x_ci, "y": y,
                               "y_ci": y_ci})
    return mid, points


def _err(v: float, ci: tuple) -> list[float]:
    lo, hi = ci
    return [max(v - lo, 0.0) if lo is not None else 0.0,
            max(hi - v, 0.0) if hi is not None else 0.0]


def tradeoff_png(results: dict) -> bytes | None:
    """The trade-off: clean agreement with M (x) against DAC under the adaptive worst case at
    the middle ε (y), one labelled point per approach and seed with 95% interval bars in both
    directions (:func:`tradeoff_points`). None without adaptive worst-case rows or clean
    agreement."""
    mid, points = tradeoff_points(results)
    if not points:
        return None
    many = len({p["seed"] for p in points}) > 1
    order = approaches_in(points)
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    seen: set[str] = set()
    for i, p in enumerate(points):
        a = p["approach"]
        col = _colour(a, order.index(a))
        xe, ye = _err(p["x"], p["x_ci"]), _err(p["y"], p["y_ci"])
        ax.errorbar([p["x"]], [p["y"]], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]],
                    fmt="o", color=col, ms=5, capsize=3, lw=1,
                    label=None if a in seen else NAMES.get(a, a))
        seen.add(a)
        label = NAMES.get(a, a) + (f" s{p['seed']}" if many and p["seed"] is not None else "")
        ax.annotate(label, (p["x"], p["y"]), textcoords="offset points",
                    xytext=(5, 5 if i % 2 == 0 else -11),
                    fontsize=7, color=col)
    ax.set_xlabel("clean agreement with M (T = M = y)")
    ax.set_ylabel(f"DAC, adaptive worst case (ε = {mid:g})")
    ax.set_title(f"{results.get('dataset') or ''}: clean agreement against adaptive DAC "
                 "(95% intervals)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)
