"""MobileNetV2 (Sandler et al. 2018) in the CIFAR form of CRD (Tian et al. 2020), whose
KD experiments use it at width multiplier 0.5 ("mobile_half").

A stride-2 3x3 stem, then inverted-residual blocks (1x1 expansion by ``t`` - present
even when ``t = 1`` - BN-ReLU, depthwise 3x3 BN-ReLU, linear 1x1 projection BN, with
an identity residual when stride is 1 and the shape is kept), a 1x1 conv to 1280
channels (not scaled for multipliers <= 1), global average pooling and a linear
classifier. Settings ``(t, c, n, s)``: (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2)
(6,96,3,1) (6,160,3,2) (6,320,1,1) - the second stage keeps stride 1 for 32x32
inputs, so the final map is 2x2.

Parameter count at 100 classes (``mobilenetv2``, width 0.5): 0.81M.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from darkknowledge.models.base import ClassifierModel, init_weights, register_model

SETTINGS = (  # (expands?, channels c, repeats n, first stride s); t = 1 or ``expand``
    (False, 16, 1, 1),
    (True, 24, 2, 1),
    (True, 32, 3, 2),
    (True, 64, 4, 2),
    (True, 96, 3, 1),
    (True, 160, 3, 2),
    (True, 320, 1, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear), residual if shapes agree."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_ch, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def _make_divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class MobileNetV2(ClassifierModel):
    """CIFAR MobileNetV2 with expansion ``expand`` and width multiplier ``width_mult``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expand: int = 6,
    ):
        super().__init__(num_classes, in_channels)
        prev = int(32 * width_mult)
        layers: list[nn.Module] = list(_conv_bn_relu(in_channels, prev, 3, stride=2))
        for expands, c, n, s in SETTINGS:
            out = int(c * width_mult)
            t = expand if expands else 1
            for i in range(n):
                layers.append(InvertedResidual(prev, out, s if i == 0 else 1, t))
                prev = out
        last = _make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        layers += _conv_bn_relu(prev, last, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = last
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    """CRD's ``mobile_half``: expansion 6, width multiplier 0.5."""
    return MobileNetV2(num_classes, in_channels, width_mult=0.5, expand=6)
