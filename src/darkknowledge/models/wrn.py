"""Wide Residual Networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks") in the
CIFAR form used by CRD (Tian et al. 2020).

``wrn_D_W``: a 3x3 stem with 16 channels, then three stages of ``(D - 4) / 6``
pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3) with ``16W``, ``32W``,
``64W`` channels (stages 2 and 3 halve the resolution), a final BN-ReLU, global
average pooling and a linear classifier. Shortcuts are identity where shapes agree,
otherwise a strided 1x1 convolution applied to the pre-activated input.

Any ``wrn_D_W`` with ``D - 4`` divisible by 6 and ``W >= 1`` can be built. Parameter
counts at 100 classes: wrn_16_2 0.70M, wrn_40_1 0.57M, wrn_40_2 2.26M.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from darkknowledge.errors import UserError
from darkknowledge.models.base import (
    ClassifierModel,
    init_weights,
    register_model,
    register_pattern,
)
from darkknowledge.native.batchnorm_relu import batchnorm_relu


class PreActBlock(nn.Module):
    """Pre-activation basic block of a WRN (optional dropout between the convs)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.equal_in_out = stride == 1 and in_planes == planes
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = batchnorm_relu(self.bn1, x)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(batchnorm_relu(self.bn2, out)))
        residual = x if self.shortcut is None else self.shortcut(pre)
        return out + residual


class WideResNet(ClassifierModel):
    """WRN-``depth``-``width`` for small (CIFAR-sized) images."""

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__(num_classes, in_channels)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UserError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}")
        if width < 1:
            raise UserError(f"WRN width must be >= 1, got {width}")
        n = (depth - 4) // 6
        self.depth, self.width = depth, width
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        in_planes = channels[0]
        stages = []
        for i, planes in enumerate(channels[1:]):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if j == 0 else 1, drop_rate))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)
        init_weights(self)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = batchnorm_relu(self.bn, x)
        return torch.flatten(self.pool(x), 1)


def _factory(depth: int, width: int):
    def make(num_classes: int, in_channels: int = 3) -> WideResNet:
        return WideResNet(depth, width, num_classes, in_channels)

    return make


for _depth, _widths in ((16, (1, 2, 4, 8)), (28, (1, 2, 4, 8, 10)), (40, (1, 2, 4))):
    for _width in _widths:
        register_model(f"wrn_{_depth}_{_width}")(_factory(_depth, _width))


@register_pattern(r"wrn_(\d+)_(\d+)", "wrn_D_W (D = 6n+4)")
def _wrn_from_name(match: re.Match[str], num_classes: int, in_channels: int) -> WideResNet:
    return WideResNet(int(match.group(1)), int(match.group(2)), num_classes, in_channels)
