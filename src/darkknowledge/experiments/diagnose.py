"""Transitional: diagnostics of checkpoints moved to :mod:`darkknowledge.runs.diagnose`."""

from darkknowledge.runs.diagnose import diagnose_checkpoints, diagnose_modules, taught_by

__all__ = ["diagnose_checkpoints", "diagnose_modules", "taught_by"]
