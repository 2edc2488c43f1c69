"""Target models M and defense components P: the paper's architectures (also MobileNetV2 and
the table-15 P for ImageNet), a default P for any image size, safe checkpoints, target
training (also PGD adversarial training) and the import of a user's own weights."""

from luring.models.architectures import (
    ARCHITECTURES,
    ArchSpec,
    Stacked,
    arch_spec,
    build,
    default_architectures,
    default_component,
    default_component_arch,
)
from luring.models.checkpoint import (
    load_checkpoint,
    load_state_dict_file,
    load_weights_into,
    read_sidecar,
    save_checkpoint,
)
from luring.models.importing import import_target, read_weights
from luring.models.mobilenet import MobileNetV2
from luring.models.predict import model_device, predict_labels, predict_logits

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "Stacked",
    "arch_spec",
    "build",
    "default_architectures",
    "default_component",
    "default_component_arch",
    "MobileNetV2",
    "import_target",
    "read_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "load_weights_into",
    "read_sidecar",
    "save_checkpoint",
    "predict_labels",
    "model_device",
    "predict_logits",
    "load_model",
]


def load_model(directory, name: str = "model", device="cpu"):
    """Load a target checkpoint directory; returns ``(model, sidecar)``."""
    return load_checkpoint(directory, name, device=device)
