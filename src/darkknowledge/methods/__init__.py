"""Distillation methods: one file per method, a pure loss function plus a thin module.

Importing this package registers every method in :data:`METHODS`.
"""

from darkknowledge.methods import (  # noqa: F401  (registration)  # noqa: F401  (registration)  # noqa: F401  (registration: teacher-side remedies)
    aid,
    ats,
    ce,
    ctkd,
    dist,
    dkd,
    eskd,
    fgcr,
    isats,
    kd,
    lm_losses,
    lskd,
    rckd,
    regt,
    sckd,
    ttm,
    wttm,
)
from darkknowledge.methods.base import (
    METHODS,
    DistillMethod,
    MethodParams,
    SetupContext,
    StepContext,
    build_method,
    describe_params,
    param_defaults,
    register_method,
    validate_params,
)

__all__ = [
    "METHODS",
    "DistillMethod",
    "MethodParams",
    "SetupContext",
    "StepContext",
    "build_method",
    "describe_params",
    "param_defaults",
    "register_method",
    "validate_params",
]
