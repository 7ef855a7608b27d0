"""The seam between the trainer and a distillation method.

A method is an ``nn.Module`` the trainer calls once per step with

    terms = method(student_logits, teacher_logits, targets, ctx)

and that returns a ``dict`` of *already weighted* loss terms (``{"ce": ..., "kd": ...}``).
The trainer sums the values, back-propagates, and logs every term by name. It never
branches on a method's name; what differs between methods lives in their own file:

* ``Params``: a pydantic model with a description on every field (the CLI's
  ``method.<field>=value`` overrides are validated against it; ``darkknowledge methods``
  prints it). It is the one place of the parameters and their defaults: the plain loss
  function takes its keyword defaults from it (:func:`param_defaults`) and the module
  forwards ``**params.model_dump()`` to that function (``loss_fn``/``loss_kwargs``).
* ``needs_teacher``: ``False`` for plain supervised training (teachers, student baselines).
* learnable parameters (e.g. CTKD's temperature) are ordinary ``nn.Parameter`` s of
  the module; the trainer adds ``method.parameters()`` to the optimiser.
* ``setup(ctx)``: an optional hook run once before training, given access to the
  teacher signal and the training data (e.g. FGCR's global class relations).
* ``check_schedule(num_epochs)``: one-line warnings when a parameter counted in epochs
  does not fit the run (e.g. DKD's warm-up longer than training); the trainer prints them.
* ``record(name, values)``: per-step statistics (e.g. ISATS's per-instance temperature)
  accumulated on device without host syncs and summarised once per epoch by
  :meth:`epoch_stats` (mean and quantiles).

Loss *functions* live next to their module as plain functions importable without the
trainer (``from darkknowledge.methods.kd import kd_loss``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from darkknowledge.errors import UserError
from darkknowledge.registry import Registry


class MethodParams(BaseModel):
    """Base class of every method's hyperparameters: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def param_defaults(
    params_cls: type[MethodParams], *, exclude: tuple[str, ...] = (), subset: bool = False
) -> Callable[[_Fn], _Fn]:
    """Decorator: a function's keyword-only defaults for ``params_cls``'s fields are the
    fields' defaults, so they are written once (in the ``Params`` model).

    The function must not give those parameters defaults of its own. Unless ``subset``,
    it must take every field except ``exclude`` (so that the module can forward
    ``**params.model_dump()``); its other keyword-only parameters keep their own
    defaults. Checked at import time: drift is a ``TypeError``, not a silent difference.
    """
    fields = params_cls.model_fields

    def wrap(fn: _Fn) -> _Fn:
        kwonly = inspect.getfullargspec(fn).kwonlyargs
        own = fn.__kwdefaults__ or {}
        shared = [name for name in kwonly if name in fields]
        clash = [name for name in shared if name in own]
        missing = [] if subset else [name for name in fields if name not in kwonly and name not in exclude]
        if clash or missing:
            raise TypeError(
                f"{fn.__qualname__}: defaults of {clash} belong in {params_cls.__name__}; "
                f"fields missing from the signature: {missing}"
            )
        fn.__kwdefaults__ = {**own, **{name: fields[name].default for name in shared}}
        return fn

    return wrap


@dataclass(frozen=True)
class TeacherStatistics:
    """Statistics of the teacher's *full* distribution for the rows a method sees, recorded
    when a top-k cache was written (its truncated rows cannot give them back): ``tau_star``
    per row, and how it was searched (``tau_search``: search_rule, tau_min, tau_max,
    grid_size, refine_size). A method uses them only where its own settings match."""

    tau_star: Tensor
    tau_search: dict[str, Any]


@dataclass
class StepContext:
    """What a method may know about where training is (all 0-indexed), and the teacher's
    recorded statistics of the rows it is given (None: none were recorded)."""

    epoch: int = 0
    num_epochs: int = 1
    step_in_epoch: int = 0
    steps_per_epoch: int = 1
    teacher_statistics: TeacherStatistics | None = None

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch


@dataclass
class SetupContext:
    """Given to :meth:`DistillMethod.setup` once before training.

    ``teacher_logits_fn(batch) -> Tensor`` returns the teacher signal for a batch
    (live or cached, the method cannot tell; None without a teacher); ``train_batches()``
    iterates the training set once (un-augmented, in order); ``student`` is the model trained.
    """

    num_classes: int
    teacher_logits_fn: Any = None
    train_batches: Any = None
    device: torch.device | str = "cpu"
    student: nn.Module | None = None  # the model being trained (e.g. for gradient-based gates)


class DistillMethod(nn.Module):
    """Base class: see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    # the plain loss function (as ``staticmethod``); the default forward calls it with
    # :meth:`loss_kwargs`, i.e. the validated parameters
    loss_fn: ClassVar[Callable[..., dict[str, Tensor]]]
    # optional: the same loss against a top-k teacher (``methods.topk.TopKRows``) without its
    # full-vocabulary rows; returns None where it does not apply (then the rows are expanded)
    topk_loss_fn: ClassVar[Callable[..., dict[str, Tensor] | None] | None] = None

    def __init__(self, params: MethodParams | None = None, num_classes: int | None = None):
        super().__init__()
        self.params = params if params is not None else self.Params()
        self.num_classes = num_classes
        self._stats: dict[str, list[Tensor]] = {}

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:  # pragma: no cover - default is a no-op
        """Run once before training; default: nothing to prepare."""

    def check_schedule(self, num_epochs: int) -> list[str]:
        """One-line warnings for schedule parameters (in epochs) that exceed a run of
        ``num_epochs`` epochs; default: none. Methods with such parameters override it."""
        return []

    def loss_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        """Keyword arguments of ``loss_fn`` for this step; default: the parameters."""
        return self.params.model_dump()

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, ctx: StepContext
    ) -> dict[str, Tensor]:
        kwargs = self.loss_kwargs(ctx)
        if not self.needs_teacher:
            return self.loss_fn(student_logits, targets, **kwargs)
        return self.loss_fn(student_logits, teacher_logits, targets, **kwargs)

    def forward_topk(
        self, student_logits: Tensor, teacher: Any, targets: Tensor, ctx: StepContext
    ) -> dict[str, Tensor] | None:
        """The terms of :meth:`forward` against a top-k teacher (``methods.topk.TopKRows``), or
        None where the method has no such path (``topk_loss_fn``) or it does not apply."""
        if self.topk_loss_fn is None:
            return None
        return self.topk_loss_fn(student_logits, teacher, targets, **self.loss_kwargs(ctx))

    # -- per-epoch statistics ------------------------------------------------------------
    def record(self, name: str, values: Tensor) -> None:
        """Keep detached values (any shape) for this epoch's summary; no host sync."""
        self._stats.setdefault(name, []).append(values.detach().float().reshape(-1))

    def epoch_stats(self, reset: bool = True) -> dict[str, float]:
        """Mean, std and quantiles (5/25/50/75/95 %) of everything recorded this epoch."""
        out: dict[str, float] = {}
        for name, chunks in self._stats.items():
            v = torch.cat(chunks)
            if v.numel() == 0:
                continue
            q = torch.quantile(v[:1_000_000], torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], device=v.device))
            out[f"{name}/mean"] = v.mean().item()
            out[f"{name}/std"] = v.std(unbiased=False).item()
            for tag, value in zip(("q05", "q25", "q50", "q75", "q95"), q.tolist()):
                out[f"{name}/{tag}"] = value
        if reset:
            self._stats = {}
        return out


def require_teacher_logits(teacher_logits: Tensor | None, method: str) -> Tensor:
    """``teacher_logits`` of a method that needs a teacher; None is a wiring error."""
    if teacher_logits is None:
        raise ValueError(f"method {method} needs teacher logits, got None")
    return teacher_logits


METHODS: Registry[type[DistillMethod]] = Registry("method")


def register_method(cls: type[DistillMethod]) -> type[DistillMethod]:
    """Class decorator: register a method under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.register(cls.name)(cls)


def validate_params(name: str, params: dict[str, Any] | None) -> MethodParams:
    """Validate ``params`` against method ``name``'s ``Params``; errors name the key."""
    cls = METHODS.get(name)
    try:
        return cls.Params.model_validate(dict(params or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(
            f"method {name!r}: bad parameter method.{loc}: {err['msg']} "
            f"(valid parameters: {', '.join(cls.Params.model_fields)})"
        ) from None


def build_method(
    name: str, params: MethodParams | dict[str, Any] | None = None, num_classes: int | None = None
) -> DistillMethod:
    """Construct a registered method from its validated ``Params`` (a dict is validated first)."""
    cls = METHODS.get(name)
    if not isinstance(params, cls.Params):
        params = validate_params(name, params.model_dump() if isinstance(params, MethodParams) else params)
    return cls(params, num_classes=num_classes)


def describe_params(cls: type[DistillMethod]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) for each parameter of a method."""
    rows = []
    for fname, field in cls.Params.model_fields.items():
        ann = getattr(field.annotation, "__name__", str(field.annotation))
        rows.append((fname, ann, field.default, field.description or ""))
    return rows
