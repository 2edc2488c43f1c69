"""The paper's architectures (appendix A, tables 2-4: targets M; appendix B, tables 5-7:
defense components P; appendix H.1: MobileNetV2 and the table-15 P for ImageNet), a default
P for any image size, and the table of built-in names (:data:`ARCHITECTURES`, which
:mod:`luring.models.user` extends with a user's registrations).

Every model takes float32 NCHW images in [0, 1]. Targets return logits of shape (N, classes);
components return images of the input's shape in (0, 1) (sigmoid output).

Names are looked up and built by :func:`luring.models.lookup.arch_spec` and
:func:`luring.models.lookup.build` (also :func:`luring.models.build`), which accept besides
the names in :data:`ARCHITECTURES` ``default-component-HxW`` (e.g. ``default-component-64x48``):
the :class:`~luring.models.components.DefaultComponent` planned for H×W images, the component
:func:`default_architectures` picks for data sets the paper does not cover.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from luring.errors import LuringError
from luring.models.components import DefaultComponent
from luring.models.mobilenet import MobileNetV2

__all__ = [
    "ArchSpec",
    "ARCHITECTURES",
    "default_architectures",
    "Stacked",
    "default_component",
    "default_component_arch",
]


def _conv_bn_relu(c_in: int, c_out: int, *, pool: bool = False) -> list[nn.Module]:
    """Conv(3x3, same) [+ MaxPool(2)] + BN + ReLU, the order of tables 3 and 4."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers


class MnistTarget(nn.Module):
    """Table 2 (Madry et al.'s MNIST model): Conv(32,5)-ReLU-Pool-Conv(64,5)-ReLU-Pool-
    Dense(1024)-ReLU-Dense(C). Input (N, C_in, 28, 28)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2, bias=False), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2, bias=False), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VggTarget(nn.Module):
    """Tables 3 (SVHN, widths 64/128/256) and 4 (CIFAR10, widths 128/256/512): three blocks of
    two 3x3 convolutions, the second followed by MaxPool; two Dense(1024)+BN+ReLU; Dense(C).
    ``dropout`` (default 0) is applied before each dense layer when set."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, size: int = 32,
                 widths: tuple[int, int, int] = (64, 128, 256), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += _conv_bn_relu(c, w) + _conv_bn_relu(w, w, pool=True)
            c = w
        self.features = nn.Sequential(*layers)
        flat = c * (size // 8) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(flat, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(1024, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistComponent(nn.Module):
    """Table 5, with the shapes of the authors' code: an 8x4x4 bottleneck auto-encoder.

    Conv(16)-ReLU-Pool → 14, Conv(8)-ReLU-Pool → 7, Conv(8, stride 2)-ReLU → 4,
    Conv(8)-ReLU-Up → 8, Conv(8)-ReLU-Up → 16, Conv(16, valid)-ReLU → 14, Up → 28,
    Conv(C)-Sigmoid. Input and output (N, C, 28, 28). ``dropout`` is applied to the
    bottleneck when set.

    Options (not in table 5; the defaults are the table's P): ``width`` multiplies every
    channel count (16, 8 → 16·width, 8·width; a larger P for textured images), and
    ``residual=True`` makes P a bounded correction of its input, ``P(x) = clamp(x +
    tanh(f(x)), 0, 1)`` with f the decoder without its sigmoid; :meth:`init_identity` zeroes
    f's last convolution so that P starts as the identity (T = M at the first step).
    """

    def __init__(self, in_channels: int = 1, dropout: float = 0.0, width: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise LuringError(f"component width must be an integer ≥ 1, got {width!r}")
        w16, w8 = 16 * width, 8 * width
        self.residual = bool(residual)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w16, w8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w8, w8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Sequential(
            nn.Conv2d(w8, w8, 3, padding=1), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(w8, w8, 3, padding=1), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(w8, w16, 3), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(w16, in_channels, 3, padding=1),
            *([] if self.residual else [nn.Sigmoid()]),
        )

    def init_identity(self) -> None:
        """Residual P only: zero the last convolution (weights and bias), so P(x) = x."""
        if self.residual:
            last = self.decoder[-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.decoder(self.dropout(self.encoder(x)))
        return torch.clamp(x + torch.tanh(f), 0.0, 1.0) if self.residual else f


class VggComponent(nn.Module):
    """Tables 6 (SVHN) and 7 (CIFAR10): conv-BN-ReLU encoder/decoder ending in
    Conv(C)+BN+Sigmoid. Input and output (N, C, 32, 32). ``dropout`` before the decoder."""

    def __init__(self, plan: tuple, in_channels: int = 3, dropout: float = 0.0,
                 split: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for item in plan:
            if item == "P":
                layers.append(nn.MaxPool2d(2))
            elif item == "U":
                layers.append(nn.Upsample(scale_factor=2))
            elif item == "D":
                layers.append(nn.Dropout(dropout))
            else:
                layers += [nn.Conv2d(c, item, 3, padding=1), nn.BatchNorm2d(item),
                           nn.ReLU(inplace=True)]
                c = item
        layers += [nn.Conv2d(c, in_channels, 3, padding=1), nn.BatchNorm2d(in_channels),
                   nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_SVHN_P = (128, "P", 256, "P", 512, 1024, "P", "D", 512, 512, "U", 256, "U", 128, "U", 64)
_CIFAR_P = (128, 256, "P", 512, 1024, "D", 512, 512, 256, "U", 128, 64)
# Table 15 (ImageNet) lists three MaxPool but two UpSampling layers, which would return
# 112×112 images for 224×224 inputs; a third UpSampling before the final Conv(3) restores the
# input size (every listed layer keeps the resolution the table implies). Dropout (off by
# default) at the 28×28 bottleneck. H and W must be multiples of 8.
_IMAGENET_P = (128, "P", 256, "P", 512, "P", "D", 512, 256, "U", 128, "U", 64, "U")


class Stacked(nn.Module):
    """T = M∘P: ``head(component(x))``. Input images in [0, 1], output the head's logits."""

    def __init__(self, component: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.component = component
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.component(x))


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its role (``target`` or ``component``), the input shape it
    accepts (C, H, W; the typical one for size-agnostic models; (0, 0, 0): not declared, a
    user's factory), its constructor ``make(in_channels, num_classes, **kw)``, the paper's
    table (0: none), a description, the number of classes it always outputs (None: it takes
    ``num_classes``, or unknown) and, for a user's factory, its ``module:qualname``."""

    name: str
    role: str
    input_shape: tuple[int, int, int]
    make: Callable[..., nn.Module]
    paper_table: int
    description: str
    num_classes: int | None = None
    source: str | None = None


ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s
    for s in [
        ArchSpec("mnist-target", "target", (1, 28, 28),
                 lambda c=1, k=10, **kw: MnistTarget(c, k), 2, "Madry et al. MNIST CNN"),
        ArchSpec("svhn-target", "target", (3, 32, 32),
                 lambda c=3, k=10, **kw: VggTarget(c, k, widths=(64, 128, 256), **kw), 3,
                 "VGG-like, widths 64/128/256"),
        ArchSpec("cifar10-target", "target", (3, 32, 32),
                 lambda c=3, k=10, **kw: VggTarget(c, k, widths=(128, 256, 512), **kw), 4,
                 "VGG-like, widths 128/256/512"),
        ArchSpec("mnist-component", "component", (1, 28, 28),
                 lambda c=1, k=None, **kw: MnistComponent(c, **kw), 5,
                 "convolutional auto-encoder, 8x4x4 bottleneck"),
        ArchSpec("svhn-component", "component", (3, 32, 32),
                 lambda c=3, k=None, **kw: VggComponent(_SVHN_P, c, **kw), 6,
                 "conv-BN-ReLU encoder/decoder"),
        ArchSpec("cifar10-component", "component", (3, 32, 32),
                 lambda c=3, k=None, **kw: VggComponent(_CIFAR_P, c, **kw), 7,
                 "conv-BN-ReLU encoder/decoder"),
        ArchSpec("imagenet-target", "target", (3, 224, 224),
                 lambda c=3, k=1000, **kw: MobileNetV2(c, k, **kw), 0,
                 "MobileNetV2 (appendix H.1), torchvision's parameter names"),
        ArchSpec("mobilenetv2", "target", (3, 224, 224),
                 lambda c=3, k=1000, **kw: MobileNetV2(
                     c, k, **({"normalize": "symmetric"} if c != 3 else {}) | kw), 0,
                 "MobileNetV2, any input size and channels (ImageNet's normalisation for 3, "
                 "[-1, 1] scaling otherwise); same as imagenet-target"),
        ArchSpec("imagenet-component", "component", (3, 224, 224),
                 lambda c=3, k=None, **kw: VggComponent(_IMAGENET_P, c, **kw), 15,
                 "conv-BN-ReLU encoder/decoder, 28x28 bottleneck"),
    ]
}

# Data set family → (target architecture, component architecture).
_DEFAULTS = {
    "mnist": ("mnist-target", "mnist-component"),
    "svhn": ("svhn-target", "svhn-component"),
    "cifar10": ("cifar10-target", "cifar10-component"),
    "imagenet": ("imagenet-target", "imagenet-component"),
}


def default_component_arch(shape: Sequence[int]) -> str:
    """The architecture name of the default P for images of ``shape`` (C, H, W) or (H, W):
    ``default-component-HxW``."""
    h, w = (int(v) for v in tuple(shape)[-2:])
    return f"default-component-{h}x{w}"


def default_component(in_channels: int, height: int, width: int,
                      dropout: float = 0.0) -> nn.Module:
    """The default P for C×H×W images (randomly initialised, train mode): the paper's
    encoder-decoder scaled to the input (see :mod:`luring.models.components`). Output
    (N, C, H, W) in (0, 1)."""
    return DefaultComponent(in_channels, (height, width), dropout=dropout)


def default_architectures(family: str, shape: Sequence[int] | None = None) -> tuple[str, str]:
    """(target, component) architecture names for a data set family: ``mnist`` (also
    Fashion-MNIST and mnist-5k), ``svhn``, ``cifar10`` or ``imagenet`` (the paper's). For any
    other family (e.g. ``imagefolder``) ``shape`` (C, H, W) chooses: ``mobilenetv2`` (any
    size) and ``default-component-HxW``; without a shape that is a LuringError."""
    if family in _DEFAULTS:
        return _DEFAULTS[family]
    if shape is not None:
        return "mobilenetv2", default_component_arch(shape)
    raise LuringError(f"no default architectures for data set family {family!r}; pass the "
                      "image shape or choose the architectures explicitly")
