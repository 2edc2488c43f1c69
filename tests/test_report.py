"""luring.report: render a synthetic results dict and check files, values and the verdict."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

from luring.errors import LuringError
from luring.report import luring_verdict, print_summary, render_report, verdict_text
from luring.report import paper_numbers as paper

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
APPS = ("stack", "auto", "ce", "luring")


def _defend_row(attack, eps, approach, ac_mop, ac_m, dac, n=100, **extra):
    row = {"experiment": "defend", "approach": approach, "attack": attack, "eps": eps, "n": n,
           "ac_mop": ac_mop, "ac_m": ac_m, "dac": dac, "dr": None, "iar": None,
           "ci": {"ac_m": [max(0.0, ac_m - 0.05), min(1.0, ac_m + 0.05)],
                  "dac": [max(0.0, dac - 0.05), min(1.0, dac + 0.05)]}}
    row.update(extra)
    return row


def _results() -> dict:
    rows = []
    # MIM-W: luring best everywhere (DAC and AC_M), distinctive numbers to find in the report
    mimw = {0.2: {"stack": (0.0, 0.61, 0.66), "auto": (0.0, 0.63, 0.64),
                  "ce": (0.0, 0.70, 0.72), "luring": (0.17, 0.875, 0.915)},
            0.3: {"stack": (0.0, 0.21, 0.33), "auto": (0.0, 0.25, 0.31),
                  "ce": (0.0, 0.36, 0.48), "luring": (0.11, 0.555, 0.643)},
            0.4: {"stack": (0.0, 0.05, 0.2), "auto": (0.0, 0.04, 0.14),
                  "ce": (0.0, 0.1, 0.27), "luring": (0.06, 0.287, 0.391)}}
    for e, per in mimw.items():
        for a, (m1, m2, m3) in per.items():
            rows.append(_defend_row("mim-w", e, a, m1, m2, m3,
                                    setting={"attack": "dim-ti", "p": 1.0, "kernel_size": 5},
                                    std={"dac": 0.012}))
    for attack in ("spsa", "eco", "worst-case"):
        for e in (0.2, 0.3, 0.4):
            for i, a in enumerate(APPS):
                rows.append(_defend_row(attack, e, a, 0.01 * i, 0.5 + 0.1 * i, 0.55 + 0.1 * i))
    for attack in ("fgsm", "pgd", "mim", "mim-l2"):
        for e in (0.2, 0.3, 0.4):
            for i, a in enumerate(APPS):
                rows.append({"experiment": "characterize", "approach": a, "attack": attack,
                             "eps": e, "n": 80, "ac_mop": 0.0, "ac_m": None, "dac": None,
                             "dr": 0.3 + 0.15 * i - e / 2, "iar": 0.2 + 0.1 * i - e / 2,
                             "ci": {"dr": [0.1, 0.9]}})
    return {
        "dataset": "mnist-5k", "family": "mnist", "profile": "quick", "seed": 0, "seeds": [0],
        "settings": {"n_defend": 100, "mim_steps": 100, "eps": [0.2, 0.3, 0.4]},
        "differences_from_paper": ["n = 100 test images instead of 1000",
                                   "ECO with 2,000 queries instead of 20,000"],
        "clean": {"target": {"accuracy": 0.9612, "n": 1000},
                  "luring": {"accuracy": 0.9433, "agreement": 0.9381,
                             "false_alarm_rate": 0.0277, "n": 1000},
                  "ce": {"accuracy": 0.9544, "agreement": 0.9501, "false_alarm_rate": 0.011,
                         "n": 1000},
                  "auto": {"accuracy": 0.95, "agreement": 0.949, "false_alarm_rate": 0.0123,
                           "n": 1000},
                  "stack": {"accuracy": 0.958, "agreement": 0.947, "false_alarm_rate": 0.02,
                            "n": 1000}},
        "rows": rows,
        "distortion": [
            {"model": m, "n": 50, "success_rate": 1.0, "mean_l2": 0.9 + 0.01 * i,
             "mean_linf": 0.3 + 0.01 * i, "mean_l0": 100.0 + 25 * i,
             "l0": [int(v) for v in 100 + 25 * i + np.arange(-10, 10)]}
            for i, m in enumerate(("target",) + APPS)],
        "logits": {"n": 200, "rates": {
            "all": {str(c): 0.5 + 0.01 * c for c in range(10)},
            "ce": {str(c): 0.71 for c in range(10)},
            "auto": {str(c): 0.6 for c in range(10)},
            "stack": {str(c): 0.8 for c in range(10)}}},
        "wall_time_s": 321.5,
        "versions": {"luring": "0.1.0", "torch": "2.13.0"},
    }


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    """One full render shared by the read-only checks (figures are slow on a small CPU)."""
    d = tmp_path_factory.mktemp("full")
    render_report(_results(), d)
    return d


@pytest.fixture
def fast_figures(monkeypatch):
    """Stub figure drawing in tests that only look at the text."""
    from luring.report import figures

    monkeypatch.setattr(figures, "figure2_png", lambda results: PNG_MAGIC + b"stub")
    monkeypatch.setattr(figures, "figure3_l0_png", lambda results: PNG_MAGIC + b"stub")


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


def test_render_full_files(full_dir):
    tmp_path = full_dir
    assert (tmp_path / "report.md").exists()
    for name in ("table_clean.csv", "table_defend.csv", "table_characterize.csv",
                 "table_distortion.csv", "table_logits.csv"):
        assert (tmp_path / name).exists(), name
    for name in ("figure2.png", "figure3_l0.png"):
        assert _is_png(tmp_path / name), name
    assert not (tmp_path / "figure3_saliency.png").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_csv_contents(full_dir):
    tmp_path = full_dir
    clean = {r["model"]: r for r in _csv(tmp_path / "table_clean.csv")}
    assert set(clean) == {"target", "stack", "auto", "ce", "luring"}
    assert float(clean["luring"]["accuracy"]) == 0.9433
    assert float(clean["luring"]["paper_accuracy"]) == 0.974
    assert clean["target"]["agreement"] == ""
    defend = _csv(tmp_path / "table_defend.csv")
    assert len(defend) == 4 * 3 * 4
    lur = [r for r in defend if r["attack"] == "mim-w" and r["approach"] == "luring"
           and float(r["eps"]) == 0.3][0]
    assert float(lur["dac"]) == 0.643 and float(lur["ac_m"]) == 0.555 and lur["n"] == "100"
    assert float(lur["dac_std"]) == 0.012 and float(lur["paper_dac"]) == 0.75
    assert json.loads(lur["setting"])["attack"] == "dim-ti"
    assert float(lur["ac_m_ci_low"]) == pytest.approx(0.505)
    char = _csv(tmp_path / "table_characterize.csv")
    assert len(char) == 4 * 3 * 4 and {r["attack"] for r in char} == {"fgsm", "pgd", "mim",
                                                                       "mim-l2"}
    dist = {r["model"]: r for r in _csv(tmp_path / "table_distortion.csv")}
    assert float(dist["luring"]["mean_l0"]) == 200.0
    assert float(dist["target"]["paper_mean_l2"]) == 0.96
    logits = _csv(tmp_path / "table_logits.csv")
    assert len(logits) == 4 * 10
    assert float([r for r in logits if r["versus"] == "ce"][0]["rate"]) == 0.71


def test_report_md_ours_and_paper(full_dir):
    text = (full_dir / "report.md").read_text()
    # header
    for s in ("mnist-5k", "quick", "321.5 s", "torch 2.13.0", "ECO with 2,000 queries",
              "n = 100 test images instead of 1000"):
        assert s in text, s
    # ours, formatted, with n
    for s in ("0.943", "0.938", "0.028", "0.875", "0.915 ± 0.012", "0.643 ± 0.012",
              "175.00", "0.710", "| 100 |", "| 200 |", "dim-ti"):
        assert s in text, s
    # the paper's MNIST numbers, labelled
    label = paper.PAPER_LABEL["mnist"]
    assert label == "paper (full MNIST, 1,000 images)" and label in text
    assert "paper (full MNIST, test set): accuracy" in text  # table 8 is over the test set
    for s in ("0.974", "0.969", "0.92 | 0.93", "0.69 | 0.75", "0.96 | 0.27"):
        assert s in text, s
    assert "0.2 / 0.3 / 0.4" in text
    for s in ("figure2.png", "figure3_l0.png", "table 8", "table 9", "table 10", "MIM-W"):
        assert s in text, s


def test_verdict_yes_everywhere():
    v = luring_verdict(_results())
    assert [x["answer"] for x in v] == ["yes", "yes", "yes"]
    assert [x["eps"] for x in v] == [0.2, 0.3, 0.4]
    assert "3 of 3" in verdict_text(_results())


def test_verdict_luring_loses_at_one_eps(tmp_path, fast_figures):
    res = _results()
    for r in res["rows"]:
        if r["attack"] == "mim-w" and r["approach"] == "ce" and r["eps"] == 0.3:
            r["ac_m"] = 0.6                      # beats luring's 0.555
    v = luring_verdict(res)
    assert [x["answer"] for x in v] == ["yes", "no", "yes"]
    assert "AC_M 0.555 < 0.600 (C_E)" in v[1]["detail"]
    text = render_report(res, tmp_path).read_text()
    assert "ε = 0.300: **no**" in text and "2 of 3" in text


def test_verdict_tie_and_missing():
    res = _results()
    for r in res["rows"]:
        if r["attack"] == "mim-w" and r["approach"] == "stack" and r["eps"] == 0.2:
            r["dac"] = 0.915
        if r["attack"] == "mim-w" and r["approach"] == "luring" and r["eps"] == 0.4:
            r["dac"] = None
    assert [x["answer"] for x in luring_verdict(res)] == ["tied", "yes", "n/a"]
    res["rows"] = [r for r in res["rows"] if r["approach"] == "luring"]
    assert {x["answer"] for x in luring_verdict(res)} == {"n/a"}


@pytest.mark.parametrize("drop", ["clean", "rows", "distortion", "logits", "settings",
                                  "versions", "differences_from_paper", "everything"])
def test_partial_results_render(tmp_path, drop, monkeypatch):
    if drop not in ("rows", "distortion", "everything"):   # figures as in the full render
        from luring.report import figures

        monkeypatch.setattr(figures, "figure2_png", lambda results: PNG_MAGIC)
    res = _results()
    if drop == "everything":
        res = {"dataset": "svhn", "family": None}
    else:
        res.pop(drop)
    report = render_report(res, tmp_path)
    assert report.exists() and report.read_text().startswith("# Luring report")
    if drop == "rows":
        assert not (tmp_path / "table_defend.csv").exists()
        assert not (tmp_path / "figure2.png").exists()


def test_nulls_and_cifar_paper_numbers(tmp_path, monkeypatch):
    from luring.report import figures

    monkeypatch.setattr(figures, "figure2_png", lambda results: PNG_MAGIC)
    res = _results()
    res.update(dataset="cifar10", family="cifar10")
    res["clean"]["luring"]["agreement"] = None
    res["distortion"][1]["l0"] = None
    res["rows"][0]["ac_m"] = None
    res["rows"] = [r for r in res["rows"] if r["approach"] != "auto"]
    text = render_report(res, tmp_path).read_text()
    assert "paper (full CIFAR10, 1,000 images)" in text
    assert "0.86 | 0.88 | 0.88" in text            # table 10, CIFAR row
    assert "—" in text
    assert _is_png(tmp_path / "figure3_l0.png")


def test_fashion_mnist_is_flagged(tmp_path, fast_figures):
    res = _results()
    res["dataset"] = "fashion-mnist"
    text = render_report(res, tmp_path).read_text()
    assert "no results for fashion-mnist" in text


def test_wall_time_of_a_resumed_run_says_it_is_not_the_total(tmp_path, fast_figures):
    res = _results()
    res["reused"] = {"units": 295, "models": 1}
    text = render_report(res, tmp_path).read_text()
    assert ("- wall time: 321.5 s (5.4 min) for this invocation alone, which reused 295 stored "
            "units and 1 trained model from earlier invocations" in text)
    res["reused"] = {"units": 0, "models": 0}  # nothing reused: the figure is the run's
    text = render_report(res, tmp_path).read_text()
    assert "- wall time: 321.5 s (5.4 min)\n" in text


def test_saliency_figure(tmp_path, fast_figures):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    arrays = {k: rng.random((3, 1, 28, 28), dtype=np.float32)
              for k in ("image", "input", "luring", "ce", "auto")}
    save_file(arrays, str(tmp_path / "saliency.safetensors"))
    res = _results()
    res["saliency"] = {"file": "saliency.safetensors"}
    text = render_report(res, tmp_path).read_text()
    assert _is_png(tmp_path / "figure3_saliency.png")
    assert "figure3_saliency.png" in text
    # the layout the experiments stage writes: "unit" path, component_<approach> keys
    (tmp_path / "units").mkdir()
    save_file({"image": arrays["image"], "input_gradient": arrays["input"],
               "component_luring": arrays["luring"]}, str(tmp_path / "units" / "s.safetensors"))
    (tmp_path / "figure3_saliency.png").unlink()
    res["saliency"] = {"unit": "units/s.safetensors"}
    render_report(res, tmp_path)
    assert _is_png(tmp_path / "figure3_saliency.png")
    res["saliency"] = {"file": "missing.safetensors"}
    (tmp_path / "figure3_saliency.png").unlink()
    text = render_report(res, tmp_path).read_text()
    assert "could not be read" in text and not (tmp_path / "figure3_saliency.png").exists()


def test_print_summary():
    out = print_summary(_results())
    lines = out.splitlines()
    assert "mnist-5k" in lines[0] and "quick" in lines[0]
    header = lines[2]
    for name in ("Stack", "Auto", "C_E", "Luring"):
        assert name in header
    assert header.index("Stack") < header.index("Auto") < header.index("C_E") < \
        header.index("Luring")
    mimw = [ln for ln in lines if ln.startswith("mim-w") and "0.300" in ln][0]
    assert "0.110 0.555 0.643" in mimw and "100" in mimw
    assert sum(ln.startswith(("spsa", "eco", "mim-w", "worst-case")) for ln in lines) == 12
    assert "Luring effect (MIM-W)" in out
    assert "no defense results" in print_summary({"dataset": "x"})


def test_bad_results_type(tmp_path):
    with pytest.raises(LuringError):
        render_report([1, 2], tmp_path)
    with pytest.raises(LuringError):
        print_summary("nope")


def test_render_does_not_mutate_results(tmp_path, fast_figures):
    res = _results()
    before = copy.deepcopy(res)
    render_report(res, tmp_path)
    print_summary(res)
    assert res == before


def test_rerender_of_fewer_parts_removes_and_unlinks_stale_files(tmp_path, monkeypatch):
    from luring.report import figures

    monkeypatch.setattr(figures, "figure2_png", lambda r: PNG_MAGIC if r.get("rows") else None)
    monkeypatch.setattr(figures, "figure3_l0_png", lambda r: PNG_MAGIC)
    render_report(_results(), tmp_path)
    assert (tmp_path / "table_defend.csv").exists() and (tmp_path / "figure2.png").exists()
    (tmp_path / "notes.csv").write_text("mine")  # not the report's: left alone
    res = _results()
    res.pop("rows")  # e.g. `luring logits --out DIR` after a full reproduce
    text = render_report(res, tmp_path).read_text()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"table_defend.csv", "table_characterize.csv", "figure2.png"}.isdisjoint(names)
    assert "table_defend.csv" not in text and "figure2.png" not in text
    assert "[table_clean.csv](table_clean.csv)" in text and "notes.csv" in names
