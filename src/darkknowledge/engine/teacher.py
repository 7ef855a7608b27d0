"""The teacher signal: one seam, live teacher or cached outputs.

The trainer and the methods only ever call ``signal(batch) -> logits`` (float32,
``(B, C)``, no autograd history). Besides that, a signal says which augmentation views
it can answer for (:meth:`TeacherSignal.training_views`: the loader must replay them) and
gives its logits on the test split (:meth:`TeacherSignal.eval_logits`, for teacher
agreement and rank fidelity). :class:`LiveTeacher` runs a frozen ``nn.Module`` (any
module returning ``(B, C)`` logits; :func:`teacher_from_module`);
:class:`darkknowledge.engine.cache.CachedTeacher` replays stored outputs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from darkknowledge.data.base import ArrayDataset, DataSpec
from darkknowledge.data.loader import Batch
from darkknowledge.engine.adapter import TeacherAdapter
from darkknowledge.engine.compile import compile_module
from darkknowledge.engine.precision import autocast
from darkknowledge.errors import UserError


class TeacherSignal:
    """Interface: ``__call__(batch) -> float32 logits``; ``num_classes``;
    :meth:`replay_views`; :meth:`training_views`; :meth:`plain_batches`; :meth:`eval_logits`; :meth:`describe`."""

    num_classes: int
    #: whether the signal answers for any input (a live teacher), not only for stored ones (a cache)
    answers_any_input: bool = False

    def __call__(self, batch: Batch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def replay_views(self) -> Tensor | None:
        """The ``(N, K, 3)`` augmentation views (dy, dx, flip) this signal has outputs
        for, which the training loader must replay; ``None``: any view (a live teacher)."""
        return None

    def training_views(self, spec: DataSpec, augment: bool) -> Tensor | None:
        """The views the training loader must replay (``augment=False``: only the un-augmented
        one), or ``None`` when this signal answers for any view; an error if it cannot serve."""
        return None

    def plain_batches(self, batches: Iterable[Batch], spec: DataSpec) -> Iterable[Batch]:
        """``batches`` of un-augmented images as this signal answers them (for a method's setup)."""
        return batches

    def eval_logits(self, dataset: ArrayDataset, batches: Iterable[Batch]) -> Tensor | None:
        """Logits on ``dataset`` (the test split; ``batches`` iterates it un-augmented and
        in order), or ``None`` when this signal has none."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__}


def check_logits_width(logits: Tensor, num_classes: int, what: str) -> None:
    """UserError unless ``logits`` is ``(B, num_classes)`` (or ``(B, T, num_classes)`` over tokens)."""
    if logits.dim() not in (2, 3) or logits.shape[-1] != num_classes:
        raise UserError(
            f"{what} returns outputs of shape {tuple(logits.shape)}, expected (batch, {num_classes}) logits for "
            f"the data's {num_classes} classes; give a model for these classes or wrap it in TeacherAdapter"
        )


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model`` (0 once folded)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """``model`` (in eval mode) with every BatchNorm that follows a convolution folded into
    it (``torch.fx`` fuse, on a copy). A :class:`~darkknowledge.engine.adapter.TeacherAdapter`
    branches on input shapes in Python, so it cannot be traced: its wrapped model is folded
    instead. A model that cannot be traced keeps its BatchNorms, with one warning saying so."""
    if isinstance(model, TeacherAdapter):
        model.model = fold_batchnorms(model.model)
        return model
    kept = count_batchnorms(model)
    if kept == 0:
        return model
    failures: list[str] = []
    model = _fold_traceable(model, failures)
    left = count_batchnorms(model)
    if failures and left:
        warnings.warn(
            f"teacher {type(model).__name__}: {left} of its {kept} BatchNorm layers are not folded (same outputs, "
            f"slower): torch.fx cannot trace the modules that hold them ({failures[-1]}); fold_batchnorm=False "
            "(teacher.fold_batchnorm=false) silences this",
            UserWarning,
            stacklevel=3,
        )
    return model


def _fold_traceable(module: nn.Module, failures: list[str]) -> nn.Module:
    """``module`` folded whole when ``torch.fx`` can trace it, else each child in turn (a block
    without shape-dependent Python still folds inside a model that has some)."""
    if count_batchnorms(module) == 0:
        return module
    try:
        with warnings.catch_warnings():  # its import touches deprecated torch.jit helpers
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse

        return fuse(module).eval()
    except Exception as exc:
        failures.append((str(exc).strip().splitlines() or [type(exc).__name__])[0][:160])
    for name, child in module.named_children():
        setattr(module, name, _fold_traceable(child, failures))
    return module


def prepare_for_inference(model: nn.Module, *, channels_last: bool = True, fold_batchnorm: bool = True) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` for teacher forwards.

    ``fold_batchnorm`` folds every eval-mode BatchNorm into the preceding convolution
    (:func:`fold_batchnorms`; a :class:`~darkknowledge.engine.adapter.TeacherAdapter`'s
    wrapped model included): the same function up to float rounding (~1e-6 relative), one
    pass less over each activation (speed: docs/performance.md). Models that cannot be
    traced keep their BatchNorms, with a warning.
    """
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_batchnorm:
        model = fold_batchnorms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    return model


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


class LiveTeacher(TeacherSignal):
    """A frozen teacher model evaluated on every batch (see :func:`prepare_for_inference`).

    ``model``: any ``nn.Module`` mapping a normalised image batch to ``(B, C)`` logits;
    ``num_classes``: C (default: ``model.classifier.out_features`` of a darkknowledge
    model). The output width is checked on every batch (a shape check, no sync).
    ``compile``: run the forward through ``torch.compile`` with frozen weights (``engine.compile_teacher``).
    """

    answers_any_input = True

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        precision: str = "bf16",
        channels_last: bool = True,
        fold_batchnorm: bool = True,
        compile: bool = False,
        name: str = "teacher",
    ):
        if num_classes is None:
            classifier = getattr(model, "classifier", None)
            if not isinstance(classifier, nn.Linear):
                raise UserError(
                    f"teacher {name!r} ({type(model).__name__}) has no .classifier layer; "
                    "give num_classes (teacher_from_module(model, num_classes=...))"
                )
            num_classes = classifier.out_features
        self.num_classes = int(num_classes)
        self.model = prepare_for_inference(model, channels_last=channels_last, fold_batchnorm=fold_batchnorm)
        self._forward = compile_module(self.model, _device_of(self.model), frozen=True) if compile else self.model
        self.precision = precision
        self.name = name

    def __call__(self, batch: Any) -> Tensor:  # any batch with .inputs: images or tokens
        self.model.eval()  # guard: nothing may switch the teacher to train mode
        with torch.inference_mode(), autocast(batch.inputs.device, self.precision):
            logits = self._forward(batch.inputs)
        if not isinstance(logits, Tensor):
            raise UserError(
                f"teacher {self.name!r} returns a {type(logits).__name__}, not a logits tensor; "
                "wrap it in TeacherAdapter(model, output=...)"
            )
        check_logits_width(logits, self.num_classes, f"teacher {self.name!r}")
        # outside inference mode, a normal tensor that autograd may save for backward: the upcast of
        # bf16/fp16 logits is already a new one; float32 logits are cloned
        out = logits.float()
        return out.clone() if out is logits else out

    def eval_logits(self, dataset: ArrayDataset, batches: Iterable[Batch]) -> Tensor | None:
        return torch.cat([self(b) for b in batches])

    def describe(self) -> dict[str, Any]:
        return {"kind": "live", "name": self.name, "precision": self.precision}


def teacher_from_module(
    model: nn.Module,
    num_classes: int,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    fold_batchnorm: bool = True,
    name: str | None = None,
) -> LiveTeacher:
    """A teacher signal from any ``nn.Module`` returning ``(B, num_classes)`` logits
    (``build_trainer(cfg, teacher=teacher_from_module(model, 100))``); wrap models with other
    outputs, inputs or classes in :class:`~darkknowledge.engine.adapter.TeacherAdapter`."""
    return LiveTeacher(
        model,
        num_classes=num_classes,
        precision=precision,
        channels_last=channels_last,
        fold_batchnorm=fold_batchnorm,
        name=name or type(model).__name__,
    )
