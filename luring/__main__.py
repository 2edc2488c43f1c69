"""``python -m luring ...``: the ``luring`` command (what ``torchrun ... -m luring`` runs)."""

import sys

from luring.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
