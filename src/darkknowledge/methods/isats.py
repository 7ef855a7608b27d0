"""ISATS: instance-specific asymmetric temperature scaling (our reconstruction).

Li, Fan, Tao, Gan, Zhan, "Exploring Dark Knowledge under Various Teacher Capacities and
Addressing Capacity Mismatch" (arXiv 2405.13078; Frontiers of Computer Science 2026).
No official code exists. Per instance, the non-target temperature tau* maximises the
variance of the teacher's non-target probabilities (:func:`darkknowledge.nontarget.isats_search`,
rules A/B/C), the target gets tau1 (rule A: ``target_ratio * tau*`` or
``max(target_temperature, tau*)``), and the student loss is ATS's:
ce_weight * CE + kd_weight * tau_s^2 * softCE(q, softmax(v / tau_s)). tau* is recorded
each step as ``isats_tau``. The rules, the search and its cost: docs/methods.md ("ISATS").
How the defaults were chosen, and what they measured: docs/methods.md ("ISATS, ATS and FGCR on the
capacity protocol").
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from darkknowledge.methods.ats import ats_teacher_log_probs, soft_label_terms
from darkknowledge.methods.base import (
    DistillMethod,
    MethodParams,
    StepContext,
    param_defaults,
    register_method,
    require_teacher_logits,
)
from darkknowledge.methods.functional import as_float, check_logits, standardize_logits
from darkknowledge.nontarget import (
    GRID_SIZE,
    REFINE_SIZE,
    TARGET_RATIO,
    TARGET_TEMPERATURE,
    TAU_MAX,
    TAU_MIN,
    SearchRule,
    isats_search,
)

TargetRule = Literal["ratio", "fixed"]
TemperatureScope = Literal["instance", "batch"]


class ISATSParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0, description="Weight of the cross-entropy term (ATS code: 0.5).")
    kd_weight: float = Field(
        0.9,
        ge=0,
        description="Weight of the tau_s^2-scaled soft cross-entropy term (ATS code: 0.5).",
    )
    student_temperature: float = Field(4.0, gt=0, description="Student softmax temperature tau_s (ATS code: 1).")
    search_rule: SearchRule = Field(
        "A",
        description=(
            "Per-instance temperature search (our reconstruction): A = symmetric search then asymmetric "
            "application; B = ratio-tied search (tau1 = target_ratio * tau2); C = tau2 searched in "
            "[tau_min, target_temperature] with tau1 = target_temperature fixed."
        ),
    )
    tau_min: float = Field(TAU_MIN, gt=0, description="Lower end of the searched temperature range.")
    tau_max: float = Field(TAU_MAX, gt=0, description="Upper end of the searched temperature range (> tau_min).")
    grid_size: int = Field(
        GRID_SIZE,
        ge=3,
        le=1024,
        description="Points of the log-spaced search grid over [tau_min, tau_max] (first stage).",
    )
    refine_size: int = Field(
        REFINE_SIZE,
        ge=0,
        le=1024,
        description=(
            "Golden-section iterations in log tau between the best grid point's neighbours "
            "(0 = one parabolic-vertex step on the grid instead)."
        ),
    )
    target_rule: TargetRule = Field(
        "ratio",
        description=(
            "Rule A only: target temperature tau1 = target_ratio * tau* ('ratio') or "
            "max(target_temperature, tau*) ('fixed')."
        ),
    )
    target_ratio: float = Field(
        TARGET_RATIO, ge=1, description="k in tau1 = k * tau* (rule A with target_rule='ratio', and rule B)."
    )
    target_temperature: float = Field(
        TARGET_TEMPERATURE,
        gt=0,
        description="Fixed target temperature tau1 (rule A with target_rule='fixed', and rule C).",
    )
    temperature_scope: TemperatureScope = Field(
        "instance",
        description="'instance': each sample gets its own tau*; 'batch': every sample gets the batch's median tau* (an ablation).",
    )
    misclassified_temperature: float | None = Field(
        4.0,
        gt=0,
        description=(
            "Rows the teacher gets wrong (argmax != target) get plain temperature scaling at this T (tau1 = tau2 = T) "
            "instead of the search, whose optimum there is always tau_min (the label collapses on the wrong class); "
            "None: searched like the others."
        ),
    )
    center_logits: bool = Field(
        False, description="Subtract each row's mean teacher logit first (asymmetric scaling is not shift-invariant)."
    )
    logit_standardization: bool = Field(
        False, description="Z-score teacher and student logits before search and soft labels (LS-KD); CE stays raw."
    )

    @field_validator("tau_max")
    @classmethod
    def _max_above_min(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("tau_min")
        if lo is not None and v <= lo:
            raise ValueError(f"tau_max ({v}) must be larger than tau_min ({lo})")
        return v

    @field_validator("target_temperature")
    @classmethod
    def _rule_c_range(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("tau_min")
        if info.data.get("search_rule") == "C" and lo is not None and v < lo:
            raise ValueError(
                f"rule C searches [tau_min, target_temperature]; target_temperature ({v}) < tau_min ({lo})"
            )
        return v


@param_defaults(ISATSParams, subset=True)
def isats_temperatures(
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    search_rule: SearchRule,
    target_rule: TargetRule,
    target_ratio: float,
    target_temperature: float,
    tau_min: float,
    tau_max: float,
    grid_size: int,
    refine_size: int,
    temperature_scope: TemperatureScope,
    misclassified_temperature: float | None,
    searched: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(target_temperature, nontarget_temperature)``, both ``(B,)``, no grad.
    ``searched``: tau* already searched with these settings (a cache's, from the full distribution)."""
    tau = (
        searched.to(teacher_logits.device, torch.float32)
        if searched is not None
        else isats_search(
            teacher_logits,
            targets,
            search_rule=search_rule,
            tau_min=tau_min,
            tau_max=tau_max,
            target_ratio=target_ratio,
            target_temperature=target_temperature,
            grid_size=grid_size,
            refine_size=refine_size,
        )
    )
    if temperature_scope == "batch" and tau.numel():
        tau = tau.median().expand_as(tau).clone()  # no host sync
    elif temperature_scope != "instance":
        raise ValueError(f"unknown ISATS temperature scope {temperature_scope!r} (use 'instance' or 'batch')")
    if search_rule == "C":
        tau1 = torch.full_like(tau, target_temperature)
    elif search_rule == "B" or target_rule == "ratio":
        tau1 = target_ratio * tau
    elif target_rule == "fixed":
        tau1 = tau.clamp(min=target_temperature)
    else:
        raise ValueError(f"unknown ISATS target rule {target_rule!r} (use 'ratio' or 'fixed')")
    if misclassified_temperature is not None:
        wrong = teacher_logits.argmax(-1) != targets.reshape(-1)
        tau1 = torch.where(wrong, torch.full_like(tau1, misclassified_temperature), tau1)
        tau = torch.where(wrong, torch.full_like(tau, misclassified_temperature), tau)
    return tau1, tau


@param_defaults(ISATSParams)
def isats_loss_and_temperature(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    student_temperature: float,
    search_rule: SearchRule,
    tau_min: float,
    tau_max: float,
    grid_size: int,
    refine_size: int,
    target_rule: TargetRule,
    target_ratio: float,
    target_temperature: float,
    temperature_scope: TemperatureScope,
    misclassified_temperature: float | None,
    center_logits: bool,
    logit_standardization: bool,
    searched: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """ISATS's weighted terms ``{"ce", "kd"}`` and the per-row non-target temperature
    tau* ``(B,)`` (defaults: :class:`ISATSParams`); ``searched``: tau* already searched on the
    teacher's full distribution with these settings (see :meth:`ISATS.recorded_tau`)."""
    check_logits(student_logits, teacher_logits, targets)
    z_t = as_float(teacher_logits)
    kd_student = None
    if logit_standardization:
        z_t = standardize_logits(z_t)
        kd_student = standardize_logits(student_logits)
    if center_logits:
        z_t = z_t - z_t.mean(dim=-1, keepdim=True)
    tau1, tau2 = isats_temperatures(
        z_t,
        targets,
        search_rule=search_rule,
        target_rule=target_rule,
        target_ratio=target_ratio,
        target_temperature=target_temperature,
        tau_min=tau_min,
        tau_max=tau_max,
        grid_size=grid_size,
        refine_size=refine_size,
        temperature_scope=temperature_scope,
        misclassified_temperature=misclassified_temperature,
        searched=searched,
    )
    log_q = ats_teacher_log_probs(
        z_t, targets, target_temperature=tau1, nontarget_temperature=tau2, center_logits=False
    )
    terms = soft_label_terms(
        student_logits,
        log_q,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        student_temperature=student_temperature,
        kd_student_logits=kd_student,
    )
    return terms, tau2


def isats_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, **params: Any) -> dict[str, Tensor]:
    """ISATS as named, weighted terms ``{"ce", "kd"}``; keyword parameters and defaults are
    those of :class:`ISATSParams` (see :func:`isats_loss_and_temperature`)."""
    return isats_loss_and_temperature(student_logits, teacher_logits, targets, **params)[0]


@register_method
class ISATS(DistillMethod):
    name = "isats"
    summary = "Instance-specific ATS: per-sample temperature maximising non-target variance (reconstruction)."
    Params = ISATSParams
    params: ISATSParams

    @property
    def token_batch(self) -> str:
        """Over LM tokens the batch of the batch-median temperature is one sequence (methods/tokens.py)."""
        return "sequence" if self.params.temperature_scope == "batch" else "token"

    def recorded_tau(self, ctx: StepContext) -> Tensor | None:
        """The teacher's tau* recorded from its full distribution (a language-model cache writes it),
        where it was searched as these parameters would search it: raw logits, rule A, the same range
        and search sizes. Else None: the search runs on the rows given (a top-k cache's are truncated)."""
        stats, p = ctx.teacher_statistics, self.params
        if stats is None or p.logit_standardization or p.center_logits:
            return None
        mine = {"search_rule": p.search_rule, "tau_min": p.tau_min, "tau_max": p.tau_max,
                "grid_size": p.grid_size, "refine_size": p.refine_size}  # fmt: skip
        return stats.tau_star if stats.tau_search == mine else None

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, ctx: StepContext
    ) -> dict[str, Tensor]:
        teacher = require_teacher_logits(teacher_logits, self.name)
        terms, tau = isats_loss_and_temperature(
            student_logits, teacher, targets, searched=self.recorded_tau(ctx), **self.params.model_dump()
        )
        self.record("isats_tau", tau)
        return terms
