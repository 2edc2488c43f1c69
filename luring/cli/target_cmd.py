"""``luring train-target``: train a target classifier M on a data set (paper appendix A),
optionally with PGD adversarial training, into a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from luring.cli.common import add_common, nonneg_int, pos_float, pos_int, unit_float

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-target", help="train a target model M (paper appendix A)",
                       description="Train the paper's target architecture for a data set. "
                       "Writes model.safetensors + model.json, config.json, results.json and "
                       "report.md into --out.")
    p.add_argument("--dataset", default="mnist-5k", help="data set name (default mnist-5k)")
    p.add_argument("--data-dir", default=None, help="data root (default $LURING_DATA or cache)")
    p.add_argument("--arch", default=None, help="architecture (default: the data set's)")
    p.add_argument("--epochs", type=nonneg_int, default=None)
    p.add_argument("--batch-size", type=pos_int, default=None)
    p.add_argument("--lr", type=pos_float, default=None, help="Adam learning rate (all phases)")
    p.add_argument("--adv-train", action="store_true",
                   help="PGD adversarial training (paper H.2: MNIST ε 0.3, 40 steps; "
                   "SVHN/CIFAR10 ε 0.03, 10 steps of 0.008)")
    p.add_argument("--adv-eps", type=unit_float, default=None)
    p.add_argument("--adv-steps", type=nonneg_int, default=None)
    p.add_argument("--adv-step-size", type=unit_float, default=None)
    p.add_argument("--force", action="store_true", help="replace a model already in --out")
    add_common(p, out_help="run directory to write the model into")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from luring.data import get_spec
    from luring.errors import LuringError
    from luring.models.train import target_settings, train_target_run
    from luring.utils import ensure_dir, resolve_device

    spec = get_spec(args.dataset)
    out = ensure_dir(args.out)
    if (Path(out) / "model.json").exists() and not args.force:
        raise LuringError(f"{out} already holds a model; pass --force to replace it or "
                          "choose another --out")
    device = resolve_device(args.device)
    settings = target_settings(
        spec.family, adv_train=args.adv_train, architecture=args.arch, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, adv_eps=args.adv_eps,
        adv_steps=args.adv_steps, adv_step_size=args.adv_step_size)
    _, info = train_target_run(args.dataset, out, settings, seed=args.seed, device=device,
                               data_dir=args.data_dir)
    print(f"test accuracy {info['test_accuracy']:.4f} (n={info['n_test']}) in "
          f"{info['seconds']:.1f} s → {out}")
    return 0
