"""Experiments: the paper's protocol as resumable units in a run directory.

``reproduce(dataset, out, profile=...)`` runs the registered experiments
(:mod:`luring.experiments.registry`: characterize, defend, adaptive, distortion, logits,
saliency; advtrain and trapdoor on request), each ``run(ctx)`` on one
:class:`~luring.experiments.context.RunContext`.
"""

from luring.experiments.profiles import APPROACHES, PROFILES, resolve_profile
from luring.experiments.registry import names as experiment_names
from luring.experiments.reproduce import reproduce

#: The experiments a run without ``--experiments`` runs, and the others, in run order.
EXPERIMENTS = experiment_names(default=True)
EXTRA_EXPERIMENTS = experiment_names(default=False)

__all__ = ["APPROACHES", "EXPERIMENTS", "EXTRA_EXPERIMENTS", "PROFILES", "reproduce",
           "resolve_profile", "experiment_names"]
