"""luring: protect a classifier against transferred black-box adversarial examples by luring.

Data flows one way: ``luring.data`` → ``luring.models`` (target M) → ``luring.defense``
(component P, T = M∘P) → ``luring.attacks`` → ``luring.metrics`` → ``luring.experiments``
→ ``luring.report``; ``luring.cli`` is the command line on top.
"""

__version__ = "0.1.0"

from luring.errors import LuringError  # noqa: E402

__all__ = ["LuringError", "__version__"]
