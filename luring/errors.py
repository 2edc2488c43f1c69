"""The one user-facing error type.

A :class:`LuringError` carries a one-line message that names the problem and the fix. The CLI
prints it on stderr and exits with code 2, without a traceback.
"""


class LuringError(Exception):
    """A user error (bad input, missing file, bad option). Its message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
