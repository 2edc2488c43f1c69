"""MobileNetV2 (Sandler et al. 2018), the ImageNet target M of the paper's appendix H.1.

The module tree uses torchvision's names (``features.0.0.weight``, ...,
``features.17.conv.2.weight``, ``features.18.0.weight``, ``classifier.1.weight``), so that a
state dict of torchvision's ``mobilenet_v2`` (for instance its published ImageNet weights,
saved by the user as safetensors or ``.pth``) loads strictly, key for key.

Inputs are images in [0, 1]; the normalisation the weights expect happens inside the model
(``normalize``):

* ``"imagenet"`` (default): ``(x - mean) / std`` with ImageNet's channel mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), what torchvision's weights were trained
  with;
* ``"symmetric"``: ``2 x - 1``, inputs scaled to [-1, 1] as the paper's H.1 states (the
  convention of Keras' MobileNetV2 weights, the authors' framework);
* ``"none"``: the input is passed on unchanged.

The constants are non-persistent buffers: they follow ``.to(device)`` but are not part of the
state dict. Input (N, C, H, W), any H, W ≥ 1 (global average pooling before the classifier;
the paper uses 224 × 224); output (N, num_classes) logits.
"""

from __future__ import annotations

import torch
from torch import nn

from luring.errors import LuringError

__all__ = ["MobileNetV2", "NORMALIZATIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "symmetric", "none")

# The body of MobileNetV2 (paper table 2): expansion t, output channels c, repeats n, stride s.
_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))


def _round_channels(c: float, divisor: int = 8) -> int:
    """``c`` rounded to the nearest multiple of ``divisor``, never below 90% of ``c``."""
    out = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * c else out


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm + ReLU6; children named 0, 1, 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expansion 1x1 (skipped when ``expand == 1``), depthwise 3x3 with ``stride``, linear
    projection 1x1 + BN; the input is added back when the stride is 1 and the channel counts
    match. Submodule ``conv`` holds the layers in that order."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(c_in * expand))
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(c_in, hidden, kernel=1))
        layers += [_conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 with torchvision's parameter names (see the module docstring).

    ``in_channels``: C of the input (3 for ImageNet; the ImageNet normalisation needs 3);
    ``num_classes``: logits (1,000 for ImageNet); ``width``: the width multiplier (1.0 is the
    published model); ``dropout``: before the last linear layer (0.2 as published);
    ``normalize``: ``imagenet`` (default), ``symmetric`` or ``none``. Weights are initialised
    as in the MobileNetV2 reference (He normal fan-out convolutions, N(0, 0.01) classifier,
    zero biases) from the global RNG: seed it, or load weights.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width: float = 1.0,
                 dropout: float = 0.2, normalize: str = "imagenet") -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise LuringError(f"unknown MobileNetV2 normalisation {normalize!r}; choose one of: "
                              f"{', '.join(NORMALIZATIONS)}")
        if normalize == "imagenet" and in_channels != 3:
            raise LuringError(f"the ImageNet normalisation needs 3 input channels, got "
                              f"{in_channels}; pass normalize='symmetric' or 'none'")
        if not width > 0:
            raise LuringError(f"MobileNetV2 width must be > 0, got {width}")
        self.normalize = normalize
        mean = IMAGENET_MEAN if normalize == "imagenet" else (0.5,) * in_channels
        std = IMAGENET_STD if normalize == "imagenet" else (0.5,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        c = _round_channels(32 * width)
        last = _round_channels(1280 * max(1.0, width))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, c, stride=2)]
        for t, ch, n, s in _BLOCKS:
            c_out = _round_channels(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers.append(_conv_bn_relu6(c, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] → the network's input scale (see ``normalize``)."""
        if self.normalize == "none":
            return x
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(self.preprocess(x))
        z = nn.functional.adaptive_avg_pool2d(z, 1).flatten(1)
        return self.classifier(z)
