"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2) as used by CRD
(Tian et al. 2020, "Contrastive Representation Distillation") and most KD papers since.

A 3x3 stem, three stages of ``(depth - 2) / 6`` basic blocks each (the second and
third stage halve the resolution), global average pooling and a linear classifier.
``resnetD`` uses widths 16-16-32-64 (stem, stage 1-3); CRD's ``resnetDx4`` uses
32-64-128-256. Shortcuts are identity where shapes agree and a strided 1x1
convolution + BN otherwise (option B).

Parameter counts at 100 classes: resnet8 0.08M, resnet20 0.28M, resnet32 0.47M,
resnet56 0.86M, resnet110 1.74M, resnet8x4 1.23M, resnet32x4 7.43M.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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

NARROW = (16, 16, 32, 64)
WIDE_X4 = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (post-activation)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = batchnorm_relu(self.bn1, self.conv1(x))
        return batchnorm_relu(self.bn2, self.conv2(out), residual=self.shortcut(x))


class CifarResNet(ClassifierModel):
    """CIFAR ResNet of depth ``6n + 2`` with stem/stage widths ``widths``."""

    def __init__(
        self,
        depth: int,
        widths: Sequence[int] = NARROW,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__(num_classes, in_channels)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UserError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {widths}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = batchnorm_relu(self.bn1, self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


def _factory(depth: int, widths: Sequence[int]):
    def make(num_classes: int, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, in_channels)

    return make


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_factory(_depth, NARROW))
for _depth in (8, 32):
    register_model(f"resnet{_depth}x4")(_factory(_depth, WIDE_X4))


@register_pattern(r"resnet(\d+)(x4)?", "resnetD / resnetDx4 (D = 6n+2)")
def _resnet_from_name(match: re.Match[str], num_classes: int, in_channels: int) -> CifarResNet:
    widths = WIDE_X4 if match.group(2) else NARROW
    return CifarResNet(int(match.group(1)), widths, num_classes, in_channels)
