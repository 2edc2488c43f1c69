"""Neutrality tuning harness (issue #13): every trial on held-out *training* images only.

The training split of a data set is cut, with a fixed seeded permutation, into V (the first
``--holdout`` images: 400 for mnist-5k, 2,000 for fashion-mnist) and the rest. M is trained
once on the rest with the quick profile's target settings and saved; each trial trains a P
on the rest (its own held-out selection split inside), then measures on V:

* ``agree``: the agreement of T = M∘P with M on all of V;
* the adaptive attack: MIM, logit margin (kappa 10), BPDA gradients, 10 steps of 2.5ε/10,
  crafted on T, on the first ``--n`` V images that M, this T and the reference C_E T all
  classify correctly; AC_M (M right on the example) and DAC (M right, or T ≠ M) judged on
  M, with the C_E T attacked on the same images.

No test image is read. One thread (``torch.set_num_threads(1)``). Usage::

    python tools/tune_neutrality.py target --dataset fashion-mnist
    python tools/tune_neutrality.py trial --dataset fashion-mnist --method ce
    python tools/tune_neutrality.py trial --dataset fashion-mnist --set residual=true \\
        --set cap=5 --seed 0

Each trial appends one JSON line to ``<root>/<dataset>/trials.jsonl`` (root ``/tmp/g``);
``python tools/tune_neutrality.py table --dataset D`` prints them as the rows of
docs/tuning.md (AC_M / DAC per ε, then C_E's on the same images).
``--set key=value`` overrides one defense setting (value parsed as JSON, else a string).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

HOLDOUT = {"mnist-5k": 400, "fashion-mnist": 2000}
EPS = (0.2, 0.3, 0.4)


def _split(dataset: str, holdout: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from luring.data import load
    from luring.utils import make_generator

    x, y = load(dataset, "train")
    perm = torch.randperm(len(x), generator=make_generator(1234))
    return x, perm[:holdout].sort().values, perm[holdout:].sort().values


def _target(root: Path, dataset: str, holdout: int, max_steps: int | None) -> Any:
    from luring.models import load_checkpoint
    from luring.models.checkpoint import save_checkpoint
    from luring.models.train import target_settings, train_target

    d = root / dataset / "target"
    if (d / "model.json").exists():
        return load_checkpoint(d, "model")[0]
    from luring.data import load

    x, y = load(dataset, "train")
    _, v, rest = _split(dataset, holdout)
    ts = target_settings("mnist", max_steps=max_steps)
    model, info = train_target(x[rest], y[rest], ts, seed=0)
    with torch.no_grad():
        acc = float((torch.cat([model(x[v][i:i + 500]).argmax(1) for i in
                                range(0, len(v), 500)]) == y[v]).float().mean())
    save_checkpoint(model, d, "model", architecture=ts.architecture, input_shape=(1, 28, 28),
                    num_classes=10, dataset=dataset, extra={"holdout_accuracy": acc,
                                                            "seconds": info["seconds"],
                                                            "settings": ts.to_dict()})
    print(json.dumps({"dataset": dataset, "M_holdout_accuracy": acc,
                      "seconds": round(info["seconds"], 1)}))
    return model


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])


def _attack(t: torch.nn.Module, m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
            ) -> dict[str, list[float]]:
    from luring.attacks import MIM, bpda

    out: dict[str, list[float]] = {"ac_m": [], "dac": []}
    for eps in EPS:
        atk = MIM(t, eps=eps, steps=10, alpha=2.5 * eps / 10, loss="margin", kappa=10.0,
                  grad_model=bpda(t))
        xa = atk(x)
        pm, pt = _predict(m, xa), _predict(t, xa)
        out["ac_m"].append(round(float((pm == y).float().mean()), 3))
        out["dac"].append(round(float(((pm == y) | (pt != pm)).float().mean()), 3))
    return out


def _train_p(target: Any, x: torch.Tensor, method: str, over: dict[str, Any], seed: int,
             profile_dataset: str) -> Any:
    from luring.defense.settings import defense_settings, resolve_settings
    from luring.defense.train import train_defense

    s = defense_settings("mnist", method, "quick", dataset=profile_dataset)
    s.update({k: v for k, v in over.items() if v is None})  # e.g. cap=null: equation 2
    s = resolve_settings(s, **{k: v for k, v in over.items() if v is not None})
    return train_defense(target, x, method=method, settings=s, seed=seed), s


def trial(args: argparse.Namespace) -> None:
    from luring.data import load

    root = Path(args.root)
    holdout = args.holdout or HOLDOUT[args.dataset]
    m = _target(root, args.dataset, holdout, args.target_steps).eval()
    x, v, rest = _split(args.dataset, holdout)
    _, y_all = load(args.dataset, "train")
    over = {}
    for item in args.set:
        k, _, val = item.partition("=")
        try:
            over[k] = json.loads(val)
        except json.JSONDecodeError:
            over[k] = val
    t0 = time.perf_counter()
    res, s = _train_p(m, x[rest], args.method, over, args.seed, args.dataset)
    secs = time.perf_counter() - t0
    t = res.augmented
    xv, yv = x[v], y_all[v]
    pm, pt = _predict(m, xv), _predict(t, xv)
    row: dict[str, Any] = {"dataset": args.dataset, "method": args.method, "set": over,
                           "seed": args.seed, "steps": res.history[-1]["step"],
                           "seconds": round(secs, 1), "M_acc_V": round(float(
                               (pm == yv).float().mean()), 4),
                           "agree_V": round(float((pt == pm).float().mean()), 4),
                           "select": res.selection}
    ref_dir = root / args.dataset / "ce-ref.pt"
    if args.method == "ce" and not over and args.seed == 0:
        torch.save(res.component.state_dict(), ref_dir)
    if ref_dir.exists() and args.n:
        from luring.models import Stacked, build

        pce = build("mnist-component", in_channels=1)
        pce.load_state_dict(torch.load(ref_dir))
        tce = Stacked(pce.eval(), m).eval()
        ok = (pm == yv) & (pt == yv) & (_predict(tce, xv) == yv)
        idx = ok.nonzero().squeeze(1)[:args.n]
        row["n"] = len(idx)
        row["adaptive"] = _attack(t, m, xv[idx], yv[idx])
        row["ce_same_images"] = _attack(tce, m, xv[idx], yv[idx])
    with torch.no_grad():
        z = _preact(res.component, xv[:500])
    if z is not None:
        row["saturated"] = round(float((z.abs() > 5).float().mean()), 3)
    print(json.dumps(row))
    with open(root / args.dataset / "trials.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _preact(component: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The pre-activation of P's output sigmoid (None when P has none)."""
    seen: list[torch.Tensor] = []
    sig = [mod for mod in component.modules() if isinstance(mod, torch.nn.Sigmoid)]
    if not sig:
        return None
    h = sig[-1].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    component(x)
    h.remove()
    return seen[-1] if seen else None


def table(root: Path, dataset: str) -> None:
    """Print the trials of ``dataset`` as markdown table rows."""
    for line in (root / dataset / "trials.jsonl").read_text().splitlines():
        r = json.loads(line)
        setting = ", ".join(f"{k}={v}" for k, v in r["set"].items()) or "profile"
        cells = []
        for key in ("adaptive", "ce_same_images"):
            a = r.get(key)
            cells.append(" · ".join(f"{m:.2f}/{d:.2f}" for m, d in zip(a["ac_m"], a["dac"],
                                                                     strict=True))
                         if a else "—")
        print(f"| {r['method']} {setting} | {r['seed']} | {r['steps']} | {r['agree_V']:.3f} "
              f"| {r['select']['step']} | {cells[0]} | {cells[1]} | {r.get('saturated', '—')} "
              f"| {r['seconds']:.0f} |")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["target", "trial", "table"])
    ap.add_argument("--dataset", required=True, choices=sorted(HOLDOUT))
    ap.add_argument("--method", default="luring")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100, help="attacked V images (0: no attack)")
    ap.add_argument("--holdout", type=int, default=0)
    ap.add_argument("--target-steps", type=int, default=4000,
                    help="M's step budget (the quick profile's)")
    ap.add_argument("--root", default="/tmp/g")
    args = ap.parse_args()
    if args.command == "table":
        table(Path(args.root), args.dataset)
    elif args.command == "target":
        _target(Path(args.root), args.dataset, args.holdout or HOLDOUT[args.dataset],
                args.target_steps)
    else:
        trial(args)


if __name__ == "__main__":
    main()
