"""The ``luring`` command line. Each stage's commands live in their own module of this
package and expose ``register(subparsers)``; a command's handler takes the parsed arguments
and returns an exit code. A :class:`~luring.errors.LuringError` becomes one line on stderr
and exit code 2."""

from __future__ import annotations

import importlib
import os
import sys

from luring import precision
from luring.cli.common import LuringParser
from luring.errors import LuringError

# Command modules, in the order of the data flow. Each has ``register(subparsers)``.
COMMAND_MODULES = [
    "luring.cli.data_cmd",
    "luring.cli.target_cmd",
    "luring.cli.defense_cmd",
    "luring.cli.attack_cmd",
    "luring.cli.experiment_cmd",
    "luring.cli.bench_cmd",
]


def build_parser() -> LuringParser:
    import luring

    parser = LuringParser(prog="luring", description=(
        "Luring defense against transferred black-box adversarial examples: train a target M, "
        "train the luring component P (T = M∘P), attack, measure and deploy."))
    parser.add_argument("--version", action="version", version=f"luring {luring.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=LuringParser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a stage not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``luring`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error (already printed)
        return int(exc.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        precision.set_default(getattr(args, "precision", None))
        code = args.handler(args)
    except LuringError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0 only
            sys.stderr.write(f"luring: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("luring: interrupted; finished units are kept, rerun to resume\n")
        return 130
    finally:
        precision.set_default(None)  # the option lives for one command
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
