"""The model contract, the model registry and ``build_model``.

Every model in :mod:`darkknowledge.models` is a :class:`ClassifierModel`:

* ``model(x)`` returns the logits ``(B, num_classes)`` and nothing else (the trainer
  uses this);
* ``model.forward_features(x)`` returns the penultimate, globally pooled features
  ``(B, model.feature_dim)`` (the diagnostics use this);
* ``model.classifier`` is the final ``nn.Linear`` so that
  ``model.classifier(model.forward_features(x))`` is ``model(x)``.

Models are registered by name in :data:`MODELS` as factories
``factory(num_classes, in_channels) -> ClassifierModel``. Families with a free
hyperparameter (``wrn_D_W``, ``cnn_wN``, ``mlp_hN``, ...) additionally register a
*name pattern*, so that :func:`build_model` accepts every name that parses, not only
the pre-registered ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from darkknowledge.errors import UserError
from darkknowledge.registry import Registry

ModelFactory = Callable[[int, int], "ClassifierModel"]
"""``factory(num_classes, in_channels) -> ClassifierModel``."""

MODELS: Registry[ModelFactory] = Registry("model")


class ClassifierModel(nn.Module):
    """Base class of every model: ``forward = classifier ∘ forward_features``.

    Subclasses implement :meth:`forward_features` and set ``self.classifier`` (an
    ``nn.Linear``) and ``self.feature_dim`` (its ``in_features``).
    """

    classifier: nn.Linear
    feature_dim: int

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate pooled features, shape ``(B, feature_dim)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape ``(B, num_classes)``."""
        return self.classifier(self.forward_features(x))


def init_weights(model: nn.Module) -> None:
    """Standard initialisation used throughout the CIFAR KD zoo.

    Convolutions: Kaiming-normal (fan-out, ReLU gain), zero bias. Batch/group norm:
    weight 1, bias 0. Linear layers keep PyTorch's default initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class _NamePattern:
    regex: re.Pattern[str]
    example: str
    make: Callable[[re.Match[str], int, int], ClassifierModel]


_PATTERNS: list[_NamePattern] = []


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes, in_channels)`` under ``name``."""
    return MODELS.register(name)


def register_pattern(
    pattern: str, example: str
) -> Callable[[Callable[[re.Match[str], int, int], ClassifierModel]], Callable]:
    """Decorator registering ``make(match, num_classes, in_channels)`` for every model
    name that fully matches the regular expression ``pattern`` (``example`` is shown in
    error messages, e.g. ``"wrn_D_W"``). ``make`` raises :class:`UserError` when the
    name parses but its values are invalid."""

    def deco(make: Callable[[re.Match[str], int, int], ClassifierModel]) -> Callable:
        _PATTERNS.append(_NamePattern(re.compile(pattern), example, make))
        return make

    return deco


def model_names() -> list[str]:
    """Sorted names of the registered models (patterns accept more, see ``build_model``)."""
    return MODELS.names()


def model_patterns() -> list[str]:
    """The parametric name families ``build_model`` also accepts, e.g. ``"wrn_D_W"``."""
    return [p.example for p in _PATTERNS]


def build_model(name: str, num_classes: int, in_channels: int = 3) -> ClassifierModel:
    """Build the model called ``name`` for ``num_classes`` classes and ``in_channels``
    input channels (1 for MNIST/digits, 3 for CIFAR).

    Raises :class:`UserError` for an unknown name (listing the valid ones) or invalid
    sizes.
    """
    for value, what in ((num_classes, "num_classes"), (in_channels, "in_channels")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"model {name!r}: {what} must be a positive integer, got {value!r}")
    if name in MODELS:
        return MODELS.get(name)(num_classes, in_channels)
    for pattern in _PATTERNS:
        match = pattern.regex.fullmatch(name)
        if match is not None:
            try:
                return pattern.make(match, num_classes, in_channels)
            except UserError as err:
                raise UserError(f"model {name!r}: {err}") from None
    try:
        MODELS.get(name)
    except UserError as err:
        families = ", ".join(model_patterns())
        raise UserError(f"{err}; also accepted: any name of the form {families}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
