"""``luring data``: list, download and describe the data sets.

- ``luring data list``: the known data sets.
- ``luring data download NAME [--data-dir ROOT] [--url-base URL] [--format bin|py]``: fetch
  the canonical files (checksum-verified, resumable) into the layout the loaders read.
- ``luring data info NAME [--data-dir ROOT] [--json]``: split sizes, image shape, classes and
  per-class counts, value range and where the files are (``embedded`` for mnist-5k).

Errors (unknown data set, missing/truncated/corrupt files, network failures) are one line on
stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from luring.cli.common import LuringParser, pos_float

__all__ = ["register"]

_ROOT_HELP = ("data root (default: $LURING_DATA, else ~/.cache/luring/data or "
              "$XDG_CACHE_HOME/luring/data)")


def _list(args: argparse.Namespace) -> int:
    from luring.data import DATASETS

    width = max(len(n) for n in DATASETS)
    for name in sorted(DATASETS):
        spec = DATASETS[name]
        where = "embedded" if spec.embedded else "files"
        print(f"{name.ljust(width)}  {where:<8}  {spec.description}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from luring.data import data_root, get_spec
    from luring.data.download import download_dataset

    get_spec(args.name)  # unknown names fail before anything is touched
    paths = download_dataset(args.name, args.data_dir, url_base=args.url_base,
                             variant=args.format, timeout=args.timeout,
                             log=lambda msg: print(msg, flush=True))
    if paths:
        print(f"{args.name}: {len(paths)} files ready under {data_root(args.data_dir)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from luring.data.info import dataset_info, format_info
    from luring.utils import to_jsonable

    info = dataset_info(args.name, args.data_dir)
    if args.json:
        sys.stdout.write(json.dumps(to_jsonable(info), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_info(info))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``luring data`` and its actions to the top-level ``subparsers``."""
    p = subparsers.add_parser(
        "data", help="list, download and describe data sets",
        description="Data sets: mnist-5k (embedded), mnist, fashion-mnist, cifar10, svhn.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=LuringParser)

    def _help(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(handler=_help)

    ls = sub.add_parser("list", help="list the known data sets")
    ls.set_defaults(handler=_list)

    dl = sub.add_parser(
        "download", help="download a data set's canonical files (checksum-verified, resumable)",
        description="Fetch NAME's official files into the data root, verify their MD5, resume a "
                    "partial download (NAME.part) and rename atomically.")
    dl.add_argument("name", metavar="NAME", help="data set name (see `luring data list`)")
    dl.add_argument("--data-dir", default=None, help=_ROOT_HELP)
    dl.add_argument("--url-base", default=None,
                    help="fetch FILE from URL/FILE instead of the official mirror "
                         "(default: $LURING_DATA_URL, else the official URL)")
    dl.add_argument("--format", choices=["bin", "py"], default=None,
                    help="cifar10 only: binary batches (default) or python pickles")
    dl.add_argument("--timeout", type=pos_float, default=60.0,
                    help="network timeout in seconds (default 60)")
    dl.set_defaults(handler=_download)

    inf = sub.add_parser(
        "info", help="split sizes, shape, classes, per-class counts, value range, location",
        description="Load both splits of NAME and describe them.")
    inf.add_argument("name", metavar="NAME", help="data set name (see `luring data list`)")
    inf.add_argument("--data-dir", default=None, help=_ROOT_HELP)
    inf.add_argument("--json", action="store_true", help="print JSON instead of text")
    inf.set_defaults(handler=_info)
