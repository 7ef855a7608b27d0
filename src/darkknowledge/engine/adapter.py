"""Adapt a model from another library (a pretrained torchvision/timm/Hugging Face
classifier, say) to the teacher contract: normalised images of the data in, ``(B, C)``
logits for the data's C classes out. docs/teachers.md has a worked example."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darkknowledge.errors import UserError


class TeacherAdapter(nn.Module):
    """Wrap ``model`` so that it takes this data's normalised images and returns logits
    of this data's classes.

    * ``data_mean``/``data_std`` and ``model_mean``/``model_std`` (per channel): undo the
      data's normalisation and apply the one the model was trained with;
    * ``input_size`` (H, W): resize the images bilinearly to the model's resolution;
    * ``in_channels``: repeat one-channel (grey) images to this many channels;
    * ``output``: pick the logits from what the model returns (default: the tensor
      itself, ``out["logits"]`` of a dict, or ``out.logits`` of an output object);
    * ``classes``: the model's output index of each of the data's classes, in the data's
      label order (e.g. the ImageNet indices of a 10-class subset); default: all outputs.
    """

    data_mean: Tensor | None
    data_std: Tensor | None
    model_mean: Tensor | None
    model_std: Tensor | None
    classes: Tensor | None

    def __init__(
        self,
        model: nn.Module,
        *,
        classes: Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
        in_channels: int | None = None,
        data_mean: Sequence[float] | None = None,
        data_std: Sequence[float] | None = None,
        model_mean: Sequence[float] | None = None,
        model_std: Sequence[float] | None = None,
        output: Callable[[Any], Tensor] | None = None,
    ):
        super().__init__()
        self.model = model
        self.input_size = tuple(input_size) if input_size is not None else None
        self.in_channels = in_channels
        self.output = output
        given = [x is not None for x in (data_mean, data_std, model_mean, model_std)]
        if any(given) and not all(given):
            raise UserError("TeacherAdapter: give all of data_mean, data_std, model_mean, model_std, or none")
        for key, values in (
            ("data_mean", data_mean),
            ("data_std", data_std),
            ("model_mean", model_mean),
            ("model_std", model_std),
        ):
            stats = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1) if values is not None else None
            self.register_buffer(key, stats)
        index = torch.as_tensor(list(classes), dtype=torch.long) if classes is not None else None
        if index is not None and (index.dim() != 1 or index.numel() < 2 or bool((index < 0).any())):
            raise UserError("TeacherAdapter: classes must list at least 2 non-negative output indices")
        self.register_buffer("classes", index)

    def _logits(self, out: Any) -> Tensor:
        if self.output is not None:
            return self.output(out)
        if isinstance(out, Tensor):
            return out
        if isinstance(out, dict) and "logits" in out:
            return out["logits"]
        if hasattr(out, "logits"):
            return out.logits
        raise UserError(f"TeacherAdapter: cannot find logits in a {type(out).__name__}; pass output=...")

    def forward(self, images: Tensor) -> Tensor:
        x = images
        if self.data_mean is not None and self.data_std is not None:  # back to pixel values in [0, 1]
            x = x * self.data_std.to(x.dtype) + self.data_mean.to(x.dtype)
        if self.in_channels is not None and x.shape[1] == 1 and self.in_channels > 1:
            x = x.expand(-1, self.in_channels, -1, -1)
        if self.model_mean is not None and self.model_std is not None:  # the model's normalisation
            x = (x - self.model_mean.to(x.dtype)) / self.model_std.to(x.dtype)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        logits = self._logits(self.model(x))
        if self.classes is not None:
            if int(self.classes.max()) >= logits.shape[-1]:
                raise UserError(
                    f"TeacherAdapter: class index {int(self.classes.max())} is out of range for a model "
                    f"with {logits.shape[-1]} outputs"
                )
            logits = logits.index_select(-1, self.classes)
        return logits
