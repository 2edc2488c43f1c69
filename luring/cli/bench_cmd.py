"""``luring bench``: measure throughput, overhead ratios against bare PyTorch loops and peak
memory of luring's attacks and trainers (and torchattacks / ART when installed) in one
interleaved run; write all raw timings, statistics, targets and pass/fail to a JSON file
and print a table."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from luring.cli.common import add_common, pos_int

__all__ = ["register", "check_out"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark attacks and training against bare PyTorch loops",
        description="Time luring's gradient attacks (PGD, MIM, DIM-TI), query attacks (SPSA, "
        "ECO) and trainers (P with the luring loss, M) against bare loops on the same model, "
        "batch and device, interleaving the contenders so that machine drift cancels; compare "
        "MIM with torchattacks and ART when installed; measure peak memory. Writes a JSON "
        "file (raw timings, min/median/max, ratios, targets, pass/fail) and prints a table. "
        "The full run takes about 17 minutes on a 2-core CPU; --quick about half a minute.")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions and smaller sizes (well under a minute)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests only
    p.add_argument("--reps", type=pos_int, default=None,
                   help="timed repetitions per contender (default 5 full, 2 quick)")
    p.add_argument("--threads", type=pos_int, default=None,
                   help="torch intra-op threads (default: torch's, usually the core count; "
                   "1 is steadier on a machine shared with other jobs)")
    p.add_argument("--demo", action="store_true",
                   help="also run `luring demo` in a child process and record its wall time "
                   "and peak memory (about 5 more minutes on a 2-core CPU with bf16)")
    add_common(p, out_help="JSON file to write the results to")
    p.set_defaults(handler=run)


def check_out(path: str) -> Path:
    """The output file ``path``, checked before any work: not a directory, its folder
    creatable and writable. A problem is a one-line LuringError."""
    from luring.errors import LuringError
    from luring.utils import ensure_dir

    out = Path(path)
    if out.is_dir():
        raise LuringError(f"--out {out} is a directory; give a file name such as "
                          f"{out / 'bench.json'}")
    ensure_dir(out.parent if str(out.parent) else Path("."))
    return out


def run(args: argparse.Namespace) -> int:
    from luring.benchmarks import format_table, preset, run_benchmark
    from luring.errors import LuringError
    from luring.utils import atomic_write_json, resolve_device

    out = check_out(args.out)
    device = resolve_device(args.device)
    cfg = preset("tiny" if args.tiny else "quick" if args.quick else "full")
    cfg = dataclasses.replace(cfg, reps=args.reps or cfg.reps,
                              threads=args.threads or cfg.threads, precision=args.precision)
    result = run_benchmark(cfg, device=device, seed=args.seed, demo=args.demo)
    try:
        atomic_write_json(out, result)
    except OSError as exc:
        raise LuringError(f"cannot write {out} ({exc.strerror or exc}); choose another "
                          "--out") from None
    print(format_table(result))
    print(f"\nresults: {out}")
    return 0
