"""Render an experiments results dict into report.md, CSV tables and PNG figures, with the
paper's own numbers beside ours; a plain-text summary for the terminal.

Imports :mod:`luring.metrics`-level helpers only (never experiments or cli).
"""

from luring.report.render import luring_verdict, print_summary, render_report, verdict_text

__all__ = ["render_report", "print_summary", "luring_verdict", "verdict_text"]
