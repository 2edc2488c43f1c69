"""One loader for every defense directory: :func:`load` reads which method a directory holds
(:func:`~luring.defense.directory.defense_method`) and returns what that method deploys — a
:class:`~luring.defense.deploy.Defense` (T = M∘P, methods luring, ce, auto and stack) or a
:class:`~luring.defense.trapdoor.TrappedModel` (method trapdoor)."""

from __future__ import annotations

import os

import torch

from luring.defense.deploy import Defense, load_augmented
from luring.defense.directory import defense_method
from luring.defense.trapdoor import TrappedModel
from luring.defense.trapdoor_store import METHOD as TRAPDOOR
from luring.defense.trapdoor_store import load_trapdoor

__all__ = ["load"]


def load(directory: str | os.PathLike, device: str | torch.device = "cpu", *,
         augmented: bool = False) -> Defense | TrappedModel:
    """Load the defense directory ``directory`` on ``device``: a :class:`Defense` for methods
    luring, ce, auto and stack (:func:`~luring.defense.deploy.load_augmented`), a
    :class:`TrappedModel` for method trapdoor (:func:`~luring.defense.trapdoor_store.
    load_trapdoor`). ``augmented=True``: the caller needs T = M∘P (to attack or export it),
    and a trapdoor directory is a one-line LuringError, raised before any weights are read.
    Raises a one-line LuringError when the directory is missing, of another format or
    incomplete, or when a weights file is not the one its ``defense.json`` records."""
    if not augmented and defense_method(directory) == TRAPDOOR:
        return load_trapdoor(directory, device)
    return load_augmented(directory, device)
