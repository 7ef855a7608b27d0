"""Distillation methods: one file per method, a pure loss function plus a thin module.

Importing this package registers every method in :data:`METHODS`.
"""

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
from darkknowledge.methods import ce, kd  # noqa: F401  (registration)
from darkknowledge.methods import (  # noqa: F401  (registration)
    ats,
    ctkd,
    dist,
    dkd,
    fgcr,
    isats,
    lskd,
    rckd,
    ttm,
    wttm,
)
from darkknowledge.methods import aid, eskd, regt, sckd  # noqa: F401  (registration: teacher-side remedies)

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
