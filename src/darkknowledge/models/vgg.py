"""VGG with batch norm (Simonyan & Zisserman 2015) in the CIFAR variant of CRD
(Tian et al. 2020).

Five blocks of 3x3 conv(+bias)-BN-ReLU layers with 64, 128, 256, 512, 512 channels,
a 2x2 max-pool after each of the first three blocks (a fourth one only when the map
is still larger than 4x4, e.g. for 64x64 inputs), global average pooling and a
single linear classifier on the 512-d features (no large fully connected head).
Layers per block: vgg8 1-1-1-1-1 (CRD's own small variant), vgg11 1-1-2-2-2,
vgg13 2-2-2-2-2, vgg16 2-2-3-3-3, vgg19 2-2-4-4-4.

Parameter counts at 100 classes: vgg8 3.97M (CRD rounds it down to 3.96M),
vgg13 9.46M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darkknowledge.models.base import ClassifierModel, init_weights, register_model
from darkknowledge.native.batchnorm_relu import run_sequential

WIDTHS = (64, 128, 256, 512, 512)
LAYERS_PER_BLOCK = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def _block(in_channels: int, out_channels: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` conv-BN-ReLU layers; the block's last ReLU is applied in forward."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers[:-1])


class CifarVGG(ClassifierModel):
    """VGG-``depth`` with BN for small images (depth counts conv + linear layers)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__(num_classes, in_channels)
        if depth not in LAYERS_PER_BLOCK:
            raise ValueError(f"VGG depth must be one of {sorted(LAYERS_PER_BLOCK)}, got {depth}")
        self.depth = depth
        blocks = []
        prev = in_channels
        for width, n in zip(WIDTHS, LAYERS_PER_BLOCK[depth]):
            blocks.append(_block(prev, width, n))
            prev = width
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = prev
        self.classifier = nn.Linear(prev, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(run_sequential(self.block0, x, final_relu=True), 2)
        x = F.max_pool2d(run_sequential(self.block1, x, final_relu=True), 2)
        x = F.max_pool2d(run_sequential(self.block2, x, final_relu=True), 2)
        x = run_sequential(self.block3, x, final_relu=True)
        if x.shape[-1] > 4 and x.shape[-2] > 4:
            x = F.max_pool2d(x, 2)
        x = run_sequential(self.block4, x, final_relu=True)
        return torch.flatten(self.pool(x), 1)


def _factory(depth: int):
    def make(num_classes: int, in_channels: int = 3) -> CifarVGG:
        return CifarVGG(depth, num_classes, in_channels)

    return make


for _depth in LAYERS_PER_BLOCK:
    register_model(f"vgg{_depth}")(_factory(_depth))
