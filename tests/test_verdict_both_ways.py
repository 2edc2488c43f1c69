"""The paired verdict in both directions (higher / no difference / lower, on DAC and AC_M,
against every other approach), the attack-failure mark and its exclusion from the counts, and
the trade-off figure. Hand-made per-example booleans with known McNemar p-values."""

from __future__ import annotations

import csv
from fractions import Fraction

import pytest
import torch

from luring.experiments.diagnostics import ATTACK_FAILED_AC_MOP, paired_verdict
from luring.metrics import newcombe_interval
from luring.report import cells, figures, print_summary, render_report, verdict_text
from luring.report.verdict import comparisons, statement, verdict_counts
from luring.utils import to_jsonable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N = 30
EPS = (0.2, 0.3, 0.4)
ATTACKS = (("mim-w", "defend"), ("adaptive-worst", "adaptive"))
# Luring defends the first 15 images. Against each other approach the discordant pairs
# (Luring only, other only) are: C_E (10, 0), Stack (1, 9), Auto (1, 5), so that the exact
# two-sided McNemar p-values are 2·(1/2)^10, 2·(1 + 10)/2^10 and 2·(1 + 6)/2^6.
_L = [True] * 15 + [False] * 15
_FLIPS = {"luring": [], "ce": list(range(10)), "stack": [0, *range(15, 24)],
          "auto": [0, *range(15, 20)]}
P_EXACT = {"ce": Fraction(2, 2 ** 10), "stack": Fraction(22, 2 ** 10),
           "auto": Fraction(14, 2 ** 6)}
DIRECTION = {"ce": "higher", "stack": "lower", "auto": "no difference"}
DISCORDANT = {"ce": (10, 0), "stack": (1, 9), "auto": (1, 5)}


def _vector(approach: str) -> torch.Tensor:
    v = torch.tensor(_L)
    v[_FLIPS[approach]] = ~v[_FLIPS[approach]]
    return v


def _outcomes(seeds=(0,), failed=()) -> dict:
    """``failed``: (approach, attack, ε) cells where T stays right on 4 of 30 images."""
    out = {}
    for s in seeds:
        for attack, _ in ATTACKS:
            for e in EPS:
                for a in _FLIPS:
                    t = torch.zeros(N, dtype=torch.bool)
                    if (a, attack, e) in failed:
                        t[:4] = True
                    v = _vector(a)
                    out[(s, a, attack, e)] = {"t_ok": t, "m_ok": v, "defended": v}
    return out


def _results(seeds=(0,), failed=(), adaptive=True) -> dict:
    """A results dict whose rows and verdict come from the same booleans."""
    out = _outcomes(seeds, failed)
    rows = []
    for attack, exp in ATTACKS:
        if exp == "adaptive" and not adaptive:
            continue
        for e in EPS:
            for a in _FLIPS:
                k, t = int(_vector(a).sum()), out[(seeds[0], a, attack, e)]["t_ok"]
                row = {"experiment": exp, "approach": a, "attack": attack, "eps": e,
                       "n": N * len(seeds), "ac_mop": float(t.float().mean()), "ac_m": k / N,
                       "dac": k / N, "ci": {"dac": [k / N - 0.1, k / N + 0.1]}}
                if len(seeds) > 1:
                    row["per_seed"] = {"dac": [{"seed": s, "value": (k - i) / N, "k": k - i,
                                                "n": N} for i, s in enumerate(seeds)]}
                rows.append(row)
    attacks = [a for a, exp in ATTACKS if adaptive or exp == "defend"]
    clean = {a: {"agreement": 0.9 + 0.01 * i, "n": 1000, "ci": {"agreement": [0.88, 0.93]}}
             for i, a in enumerate(_FLIPS)}
    if len(seeds) > 1:
        for i, a in enumerate(_FLIPS):
            clean[a]["per_seed"] = {"agreement": [0.9 + 0.01 * i + 0.002 * j
                                                  for j in range(len(seeds))]}
    verdict = paired_verdict(out, attacks, list(EPS), list(_FLIPS), list(seeds))
    return {"dataset": "mnist-5k", "family": "mnist", "seed": seeds[0], "seeds": list(seeds),
            "rows": rows, "clean": clean, "verdict": to_jsonable(verdict)}


@pytest.fixture
def no_figures(monkeypatch):
    """Text-only tests: no drawing."""
    for name in ("figure2_png", "figure3_l0_png", "tradeoff_png"):
        monkeypatch.setattr(figures, name, lambda results: None)


def test_directions_p_values_and_intervals():
    rows = paired_verdict(_outcomes(), ["mim-w"], [0.3], list(_FLIPS), [0])
    assert len(rows) == 1
    row = rows[0]
    # the old fields: the best other approach by DAC (Stack, 23/30) only
    assert row["other"] == "stack" and not row["holds"] and row["discordant"] == [1, 9]
    comps = {c["other"]: c for c in row["comparisons"]}
    assert set(comps) == {"ce", "stack", "auto"} and comps["stack"]["best"]
    for a, c in comps.items():
        for key in ("dac", "ac_m"):
            cmp = c[key]
            assert cmp["p_value"] == float(P_EXACT[a]), (a, key)
            assert cmp["direction"] == DIRECTION[a] and tuple(cmp["discordant"]) == DISCORDANT[a]
            only_a, only_b = DISCORDANT[a]
            both = 15 - only_a
            assert cmp["difference"] == pytest.approx((only_a - only_b) / N)
            assert cmp["ci"] == pytest.approx(list(newcombe_interval(
                both, only_a, only_b, N - both - only_a - only_b)))
            assert cmp["ci"][0] <= cmp["difference"] <= cmp["ci"][1]
        assert not c["excluded"]
    assert row["ac_mop"] == {a: 0.0 for a in _FLIPS} and row["attack_failed"] == []
    assert row["ac_mop_limit"] == ATTACK_FAILED_AC_MOP == cells.ATTACK_FAILED_AC_MOP


def test_statements():
    comps = {c["other"]: c for c in comparisons(_results()) if c["attack"] == "mim-w"
             and c["eps"] == 0.3}
    assert statement("ce", comps["ce"]["dac"]) == "Luring higher than C_E (p = 0.00195)"
    assert statement("stack", comps["stack"]["dac"]) == "Luring lower than Stack (p = 0.0215)"
    assert statement("auto", comps["auto"]["ac_m"]) == \
        "no significant difference from Auto (p = 0.219)"
    assert statement("ce", None) == "no paired outcomes for C_E"


def test_headline_counts_every_comparison(tmp_path, no_figures):
    res = _results()
    text = verdict_text(res)
    assert text == ("Luring vs the other approaches (paired McNemar, p < 0.05), DAC: higher 6, "
                    "no difference 6, lower 6 of 18 comparisons; AC_M: higher 6, no difference "
                    "6, lower 6 of 18 comparisons; excluded: none")
    report = render_report(res, tmp_path).read_text()
    assert f"**{text}**" in report and "does not hold" not in report
    assert "- MIM-W: DAC: higher 3, no difference 3, lower 3 of 9 comparisons" in report
    assert "Luring lower than Stack (p = 0.0215)" in report
    assert text in print_summary(res)
    table = list(csv.DictReader(open(tmp_path / "table_verdict.csv", newline="")))
    assert len(table) == 2 * 3 * 3
    ce = next(r for r in table if r["attack"] == "adaptive-worst" and r["other"] == "ce"
              and float(r["eps"]) == 0.4)
    assert ce["dac_direction"] == "higher" and ce["ac_m_direction"] == "higher"
    assert float(ce["p_value"]) == float(P_EXACT["ce"]) and ce["excluded"] == "False"


def test_attack_failure_marked_and_excluded(tmp_path, no_figures):
    # C_E's MIM-W cell at ε = 0.3 and Luring's adaptive cell at ε = 0.4 leave T right on
    # 4 of 30 images (13.3% > 10%)
    res = _results(failed={("ce", "mim-w", 0.3), ("luring", "adaptive-worst", 0.4)})
    comps = comparisons(res)
    excluded = {(c["attack"], c["eps"], c["other"]) for c in comps if c["excluded"]}
    assert excluded == {("mim-w", 0.3, "ce"), ("adaptive-worst", 0.4, "ce"),
                        ("adaptive-worst", 0.4, "stack"), ("adaptive-worst", 0.4, "auto")}
    counts = verdict_counts(comps)
    assert counts["excluded"] == 4
    assert counts["dac"] == {"higher": 4, "no difference": 5, "lower": 5, "total": 14}
    text = verdict_text(res)
    assert "DAC: higher 4, no difference 5, lower 5 of 14 comparisons" in text
    assert "excluded: attack failed on T (AC_MoP > 0.1) in 4 comparisons" in text
    report = render_report(res, tmp_path).read_text()
    defend = report.split("**MIM-W**")[1].split("\n\n")[1]
    line = next(ln for ln in defend.splitlines() if ln.startswith("| 0.300 | ours"))
    assert line.count("0.133†") == 1 and "0.000 | 0.500 | 0.500 |" in line  # Luring unmarked
    assert ("† The attack left T right on more than 10% of the images (C_E at ε = 0.300: "
            "13.3%): AC_M there measures attack failure, not luring") in report
    assert "(Luring at ε = 0.400: 13.3%)" in report  # the adaptive table's footnote
    assert report.count("excluded: attack failed on T (AC_MoP Luring") == 4
    table = list(csv.DictReader(open(tmp_path / "table_verdict.csv", newline="")))
    assert sum(r["excluded"] == "True" for r in table) == 4
    defend_csv = list(csv.DictReader(open(tmp_path / "table_defend.csv", newline="")))
    assert [(r["approach"], r["eps"]) for r in defend_csv if r["attack_failed"] == "True"] \
        == [("ce", "0.3")]


def test_results_without_the_new_fields_still_render(tmp_path, no_figures):
    res = _results(failed={("luring", "mim-w", 0.2)})
    old_keys = ("attack", "eps", "other", "luring_dac", "other_dac", "difference", "ci",
                "p_value", "n", "holds", "discordant")
    res["verdict"] = [{k: r[k] for k in old_keys} for r in res["verdict"]]
    comps = comparisons(res)
    assert len(comps) == 6 and all(c["legacy"] and c["other"] == "stack" for c in comps)
    assert [c["excluded"] for c in comps][:3] == [True, False, False]  # from the rows' AC_MoP
    text = verdict_text(res)
    assert text.startswith("Luring vs the best other approach per attack and ε (paired McNemar, "
                           "p < 0.05; results written before")
    assert "DAC: higher 0, no difference 0, lower 5 of 5 comparisons" in text
    assert "AC_M:" not in text and "in 1 comparison" in text
    report = render_report(res, tmp_path).read_text()
    assert "Luring lower than Stack (p = 0.0215)" in report and "does not hold" not in report


def test_tradeoff_figure_written_and_linked(tmp_path, monkeypatch):
    for name in ("figure2_png", "figure3_l0_png"):
        monkeypatch.setattr(figures, name, lambda results: None)
    res = _results(seeds=(0, 1))
    mid, points = figures.tradeoff_points(res)
    assert mid == 0.3 and len(points) == 4 * 2
    lur = [p for p in points if p["approach"] == "luring"]
    assert [p["seed"] for p in lur] == [0, 1]
    assert lur[1]["x"] == pytest.approx(0.902) and lur[1]["y"] == pytest.approx(14 / 30)
    assert lur[1]["y_ci"][0] < lur[1]["y"] < lur[1]["y_ci"][1]
    assert lur[1]["x_ci"][0] < lur[1]["x"] < lur[1]["x_ci"][1]
    text = render_report(res, tmp_path).read_text()
    data = (tmp_path / "figure_tradeoff.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert "![Trade-off" in text and "(figure_tradeoff.png)" in text
    assert "[figure_tradeoff.png](figure_tradeoff.png)" in text
    # results without adaptive worst-case rows: no figure, and the earlier one is removed
    text = render_report(_results(adaptive=False), tmp_path).read_text()
    assert not (tmp_path / "figure_tradeoff.png").exists() and "figure_tradeoff" not in text
    assert figures.tradeoff_points(_results(adaptive=False)) == (None, [])
