"""Small models for tiny inputs (sklearn's 8x8 digits, MNIST, downsampled images).

Two width-parameterised families whose parameter count grows monotonically with the
width, so that they form a teacher/student *capacity ladder* (e.g. for the offline
demo):

* ``cnn_wW`` (:class:`SmallCNN`): two stages of two 3x3 conv-BN-ReLU layers with
  ``W`` and ``2W`` channels, a 2x2 max-pool between them, global average pooling and a
  linear classifier on the ``2W``-d features. Works for any input of at least 2x2
  pixels and any number of channels.
* ``mlp_hH`` (:class:`MLP`): the input is average-pooled to 8x8 (identity for 8x8
  digits), flattened, and passed through two hidden ``Linear-ReLU`` layers of width
  ``H``; the ``H``-d output of the second one is the feature vector.

Registered: ``cnn_w4`` ... ``cnn_w128`` (powers of two) and ``mlp_h32``, ``mlp_h64``,
``mlp_h128``, ``mlp_h256``, ``mlp_h512``; any ``cnn_wN`` / ``mlp_hN`` with ``N >= 1``
is accepted by :func:`~darkknowledge.models.build_model`.
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
from darkknowledge.native.batchnorm_relu import run_sequential

MLP_INPUT_SIZE = 8  # inputs are average-pooled to MLP_INPUT_SIZE x MLP_INPUT_SIZE


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(ClassifierModel):
    """Four-conv CNN of width ``width`` (feature dimension ``2 * width``)."""

    def __init__(self, width: int, num_classes: int = 10, in_channels: int = 1):
        super().__init__(num_classes, in_channels)
        if width < 1:
            raise UserError(f"cnn width must be >= 1, got {width}")
        self.width = width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.feature_dim = 2 * width
        self.classifier = nn.Linear(2 * width, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(run_sequential(self.features, x), 1)


class MLP(ClassifierModel):
    """Two-hidden-layer MLP on the (pooled to 8x8) flattened image."""

    def __init__(self, hidden: int, num_classes: int = 10, in_channels: int = 1):
        super().__init__(num_classes, in_channels)
        if hidden < 1:
            raise UserError(f"mlp hidden width must be >= 1, got {hidden}")
        self.hidden = hidden
        self.pool = nn.AdaptiveAvgPool2d(MLP_INPUT_SIZE)
        self.body = nn.Sequential(
            nn.Linear(in_channels * MLP_INPUT_SIZE**2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(torch.flatten(self.pool(x), 1))


def _cnn(width: int):
    def make(num_classes: int, in_channels: int = 3) -> SmallCNN:
        return SmallCNN(width, num_classes, in_channels)

    return make


def _mlp(hidden: int):
    def make(num_classes: int, in_channels: int = 3) -> MLP:
        return MLP(hidden, num_classes, in_channels)

    return make


for _width in (4, 8, 16, 32, 64, 128):
    register_model(f"cnn_w{_width}")(_cnn(_width))
for _hidden in (32, 64, 128, 256, 512):
    register_model(f"mlp_h{_hidden}")(_mlp(_hidden))


@register_pattern(r"cnn_w(\d+)", "cnn_wN")
def _cnn_from_name(match: re.Match[str], num_classes: int, in_channels: int) -> SmallCNN:
    return SmallCNN(int(match.group(1)), num_classes, in_channels)


@register_pattern(r"mlp_h(\d+)", "mlp_hN")
def _mlp_from_name(match: re.Match[str], num_classes: int, in_channels: int) -> MLP:
    return MLP(int(match.group(1)), num_classes, in_channels)
