"""Experiments: the paper's protocol as resumable units in a run directory.

``reproduce(dataset, out, profile=...)`` runs the registered experiments
(:mod:`luring.experiments.registry`: characterize, defend, adaptive, distortion, logits,
saliency; advtrain and trapdoor on request), each ``run(ctx)`` on one
:class:`~luring.experiments.context.RunContext`; ``experiment_names(default=True)`` lists
those a run without ``--experiments`` runs.
"""

from luring.experiments.profiles import APPROACHES, PROFILES, resolve_profile
from luring.experiments.registry import names as experiment_names
from luring.experiments.reproduce import reproduce

__all__ = ["APPROACHES", "PROFILES", "reproduce", "resolve_profile", "experiment_names"]
