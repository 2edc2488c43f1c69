"""``luring bench``: throughput, overhead ratios and peak memory of luring's attacks and
trainers against bare PyTorch loops (and torchattacks / ART when installed), measured in one
run on the same model, batch and device with the contenders interleaved so that machine
drift cancels.

``run_benchmark(preset("full"|"quick"|"tiny"), device=..., seed=..., demo=...)`` returns the
result dict; :func:`format_table` renders it; the CLI writes it as JSON.
"""

from luring.benchmarks.config import MODES, TARGETS, BenchConfig, preset
from luring.benchmarks.report import evaluate_targets, format_table
from luring.benchmarks.runner import FORMAT, run_benchmark

__all__ = ["BenchConfig", "preset", "MODES", "TARGETS", "run_benchmark", "format_table",
           "evaluate_targets", "FORMAT"]
