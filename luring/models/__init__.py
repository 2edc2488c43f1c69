"""Target models M and defense components P: the paper's architectures, safe checkpoints and
target training (also PGD adversarial training)."""

from luring.models.architectures import (
    ARCHITECTURES,
    ArchSpec,
    Stacked,
    arch_spec,
    build,
    default_architectures,
)
from luring.models.checkpoint import (
    load_checkpoint,
    load_state_dict_file,
    load_weights_into,
    read_sidecar,
    save_checkpoint,
)
from luring.models.predict import predict_labels, predict_logits

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "Stacked",
    "arch_spec",
    "build",
    "default_architectures",
    "load_checkpoint",
    "load_state_dict_file",
    "load_weights_into",
    "read_sidecar",
    "save_checkpoint",
    "predict_labels",
    "predict_logits",
    "load_model",
]


def load_model(directory, name: str = "model", device="cpu"):
    """Load a target checkpoint directory; returns ``(model, sidecar)``."""
    return load_checkpoint(directory, name, device=device)
