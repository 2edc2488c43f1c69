"""Experiments: the paper's protocol as resumable units in a run directory.

``reproduce(dataset, out, profile=...)`` runs everything; ``run_characterize``,
``run_defend``, ``run_distortion``, ``run_logits`` and ``run_saliency`` are the pieces.
"""

from luring.experiments.profiles import APPROACHES, PROFILES, resolve_profile
from luring.experiments.reproduce import EXPERIMENTS, reproduce

__all__ = ["APPROACHES", "EXPERIMENTS", "PROFILES", "reproduce", "resolve_profile"]
