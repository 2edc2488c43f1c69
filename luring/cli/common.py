"""Shared CLI pieces: common options, option validators and the argument parser type.

Every command gets ``--seed``, ``--device auto|cpu|cuda``, ``--precision auto|fp32|bf16|fp16``
and (where it writes) ``--out``.
Validators raise :class:`argparse.ArgumentTypeError`, which the parser turns into a one-line
error with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_common", "add_amp", "nonneg_int", "pos_int", "unit_float", "pos_float",
           "nonneg_float", "fraction", "LuringParser"]


class LuringParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``luring: error: MESSAGE`` on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())}\n")
        sys.exit(2)


def add_common(p: argparse.ArgumentParser, *, out: bool = True, out_help: str = "output directory",
               out_required: bool = True) -> None:
    """Add ``--seed``, ``--device``, ``--precision`` and optionally ``--out``."""
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to compute (default auto: CUDA when available)")
    p.add_argument("--precision", default=os.environ.get("LURING_PRECISION") or "auto",
                   choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of gradient work (attacks, training): bf16/fp16 autocast "
                        "with channels-last, fp32, or auto (default; $LURING_PRECISION): the "
                        "fastest on this device when ≥ 1.3x float32's. Judgements "
                        "(accuracy, AC, DAC, detection, selection) are always float32")
    if out:
        p.add_argument("--out", required=out_required, help=out_help)


def add_amp(p: argparse.ArgumentParser) -> None:
    """Add ``--amp [bf16|fp16|off]`` (mixed-precision training; ``--amp`` alone is bf16)."""
    p.add_argument("--amp", nargs="?", const="bf16", default="off",
                   choices=["off", "bf16", "fp16"],
                   help="mixed-precision training: bf16 autocast (CPU or CUDA; --amp alone) "
                        "or fp16 autocast with a gradient scaler (CUDA); default off (float32)")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def nonneg_int(text: str) -> int:
    """An integer ≥ 0."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {v}")
    return v


def pos_int(text: str) -> int:
    """An integer ≥ 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v:
        raise argparse.ArgumentTypeError("NaN is not allowed")
    return v


def unit_float(text: str) -> float:
    """A number in [0, 1] (ε in pixel units, probabilities, rates)."""
    v = _float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def nonneg_float(text: str) -> float:
    """A finite number ≥ 0."""
    v = _float(text)
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text}")
    return v


def fraction(low: float, high: float, *, high_open: bool = False):
    """A parser for a number in [low, high] (or [low, high) with ``high_open``)."""
    def parse(text: str) -> float:
        v = _float(text)
        ok = low <= v < high if high_open else low <= v <= high
        if not ok:
            raise argparse.ArgumentTypeError(
                f"must be in [{low}, {high}{')' if high_open else ']'}, got {v}")
        return v
    return parse


def pos_float(text: str) -> float:
    """A number > 0."""
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v
