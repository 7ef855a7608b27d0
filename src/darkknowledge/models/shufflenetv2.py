"""ShuffleNetV2 (Ma et al. 2018) in the CIFAR form used by CRD (Tian et al. 2020),
net size 1x.

A 1x1 stem to 24 channels at full resolution, three stages (116, 232, 464 channels)
each made of one down-sampling unit followed by 3, 7, 3 basic units, a 1x1 conv to
1024 channels, global average pooling and a linear classifier. A basic unit splits the
channels in half, transforms one half (1x1 BN-ReLU, depthwise 3x3 BN, 1x1 BN-ReLU),
concatenates and shuffles; a down-sampling unit runs two strided branches on the full
input and concatenates them.

Parameter count at 100 classes: 1.36M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darkknowledge.models.base import ClassifierModel, init_weights, register_model

CONFIGS = {  # net size -> (stage channels..., final channels), units per stage
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    """Interleave the channels of ``groups`` groups (works for any memory format)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class BasicUnit(nn.Module):
    """Channel split; one half goes through 1x1 - dw3x3 - 1x1; concat; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.half_channels = half
        self.pw1 = _conv_bn(half, half)
        self.dw = _conv_bn(half, half, 3, groups=half)
        self.pw2 = _conv_bn(half, half)

    def forward(self, x: Tensor) -> Tensor:
        keep, active = x[:, : self.half_channels], x[:, self.half_channels :]
        out = F.relu(self.pw1(active))
        out = F.relu(self.pw2(self.dw(out)))
        return channel_shuffle(torch.cat([keep, out], 1))


class DownUnit(nn.Module):
    """Two stride-2 branches on the whole input, concatenated and shuffled."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        self.left_dw = _conv_bn(in_ch, in_ch, 3, stride=2, groups=in_ch)
        self.left_pw = _conv_bn(in_ch, mid)
        self.right_pw1 = _conv_bn(in_ch, mid)
        self.right_dw = _conv_bn(mid, mid, 3, stride=2, groups=mid)
        self.right_pw2 = _conv_bn(mid, mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.left_pw(self.left_dw(x)))
        right = F.relu(self.right_pw1(x))
        right = F.relu(self.right_pw2(self.right_dw(right)))
        return channel_shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(ClassifierModel):
    """CIFAR ShuffleNetV2 of the given net size (0.5, 1, 1.5 or 2)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, net_size: float = 1.0):
        super().__init__(num_classes, in_channels)
        if net_size not in CONFIGS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(CONFIGS)}, got {net_size}")
        channels, units = CONFIGS[net_size]
        self.stem = nn.Sequential(_conv_bn(in_channels, 24), nn.ReLU(inplace=True))
        prev = 24
        stages = []
        for out, n in zip(channels[:3], units):
            stages.append(nn.Sequential(DownUnit(prev, out), *[BasicUnit(out) for _ in range(n)]))
            prev = out
        self.stage1, self.stage2, self.stage3 = stages
        self.head = nn.Sequential(_conv_bn(prev, channels[3]), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels[3]
        self.classifier = nn.Linear(channels[3], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return torch.flatten(self.pool(self.head(x)), 1)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    """CRD's ``ShuffleV2``: net size 1x."""
    return ShuffleNetV2(num_classes, in_channels, net_size=1.0)
