"""``luring reproduce``, ``luring demo`` and one command per registered experiment
(:mod:`luring.experiments.registry`: ``characterize``, ``defend``, ``adaptive``, ...): train or
reuse M and the four P, run the paper's protocol, write ``config.json``, ``results.json``, CSV
tables, ``report.md`` and PNG figures. Every finished unit is kept; rerunning the same command
resumes."""

from __future__ import annotations

import argparse
import sys

from luring.cli.common import add_common, pos_int
from luring.experiments import registry

__all__ = ["register"]


def _experiment_list(text: str) -> tuple[str, ...]:
    """``--experiments a,b``: names of registered experiments, comma-separated."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    known = registry.names()
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown experiment(s) {', '.join(bad) or repr(text)}; choose from "
            f"{', '.join(known)} (comma-separated)")
    return names



def _options(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    if not demo:
        p.add_argument("--dataset", default="mnist-5k", help="data set (default mnist-5k)")
        p.add_argument("--profile", default="quick",
                       choices=["quick", "standard", "paper", "smoke"],
                       help="quick (minutes on a CPU), standard (every model at the paper's "
                       "training budget, an evaluation sized to decide: 1-1.5 hours per "
                       "seed on mnist-5k on a 2-core CPU with bf16), paper (the paper's "
                       "protocol in full), smoke (seconds; for tests)")
    p.add_argument("--data-dir", default=None, help="data root (default $LURING_DATA or cache)")
    p.add_argument("--seeds", type=pos_int, default=1,
                   help="train each P with this many seeds and report mean ± std")
    p.add_argument("--target", default=None,
                   help="reuse this trained M (a train-target directory) instead of training")
    p.add_argument("--restart", action="store_true",
                   help="clear the run directory (models, units, results) and start over; "
                   "without it, a rerun with other data, settings, seeds or target is refused")
    add_common(p, out=not demo)
    if demo:
        p.add_argument("--out", default="luring-demo", help="run directory (default ./luring-demo)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the paper's protocol end to end (resumable)",
                       description="Train (or reuse) M and the four P, run every experiment and "
                       "write the report. Rerunning the same command resumes.")
    _options(p)
    p.add_argument("--experiments", type=_experiment_list, default=None, metavar="A,B",
                   help=f"experiments to run, comma-separated (default: "
                   f"{','.join(registry.names(default=True))}; also "
                   f"{', '.join(registry.names(default=False))})")
    p.set_defaults(handler=lambda a: _run(a, a.experiments))
    p = sub.add_parser("demo", help="reproduce on mnist-5k with the quick profile into "
                       "./luring-demo (about 5 minutes on a 2-core CPU with bf16 units)")
    _options(p, demo=True)
    p.set_defaults(handler=lambda a: _run(a, None, dataset="mnist-5k", profile="quick"))
    for exp in registry.experiments():
        p = sub.add_parser(exp.name, help=exp.summary,
                           description=exp.summary + ". Trains what is missing.")
        _options(p)
        p.set_defaults(handler=lambda a, n=exp.name: _run(a, (n,)))


def _run(args: argparse.Namespace, experiments: tuple[str, ...] | None, **fixed) -> int:
    from luring.experiments import reproduce
    from luring.report import print_summary, render_report

    dataset = fixed.get("dataset", getattr(args, "dataset", "mnist-5k"))
    profile = fixed.get("profile", getattr(args, "profile", "quick"))
    results = reproduce(dataset, args.out, profile=profile, seed=args.seed, seeds=args.seeds,
                        device=args.device, data_dir=args.data_dir, experiments=experiments,
                        target_dir=args.target, restart=args.restart,
                        log=lambda m: print(m, file=sys.stderr), on_results=render_report)
    if not results:  # a helper process of a torchrun run: rank 0 reports
        return 0
    print(print_summary(results))
    print(f"\nreport: {args.out}/report.md   results: {args.out}/results.json")
    return 0
