"""Target models M and defense components P: the paper's architectures (also MobileNetV2 and
the table-15 P for ImageNet), a default P for any image size, safe checkpoints, target
training (also PGD adversarial training) and the import of a user's own weights and
architectures (:func:`register_architecture`, ``module:callable``, TorchScript files,
normalisation and output selection: :mod:`luring.models.user`, :mod:`luring.models.adapt`,
:mod:`luring.models.scripted`)."""

from luring.models.adapt import Adapted, Normalize
from luring.models.architectures import (
    ARCHITECTURES,
    ArchSpec,
    Stacked,
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
from luring.models.lookup import arch_spec, build
from luring.models.mobilenet import MobileNetV2
from luring.models.predict import model_device, predict_labels, predict_logits
from luring.models.user import register_architecture, unregister_architecture

__all__ = [
    "Adapted",
    "Normalize",
    "register_architecture",
    "unregister_architecture",
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
