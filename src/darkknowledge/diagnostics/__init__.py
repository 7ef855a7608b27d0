"""Diagnostics for teacher-student capacity mismatch (streaming over batches).

Per teacher: accuracy, calibration, non-target mean/variance/entropy as a function of
temperature and the distribution of ISATS's per-instance optimal temperature tau*;
between models: rank consistency of the non-target classes; from features: intra- and
inter-class angles; per (teacher, student): the ATS, DKD and AID loss decompositions;
a report (JSON, CSV, PNG, one HTML page) and heuristic teacher report cards.

Every statistic is an accumulator with ``update(...)`` per chunk and ``result()``, so
50,000 x 1,000 logits are processed in bounded memory. See ``docs/diagnostics.md``.
"""

from darkknowledge.diagnostics.api import diagnose, diagnose_stream
from darkknowledge.diagnostics.card import DISCLAIMER, RULES_VERSION, TeacherCard, TunedChoice, make_card
from darkknowledge.diagnostics.collect import collect_outputs
from darkknowledge.diagnostics.decompose import (
    Decomposition,
    DecompositionAccumulator,
    aid_decomposition,
    ats_decomposition,
    dkd_decomposition,
)
from darkknowledge.diagnostics.geometry import FeatureGeometryAccumulator, GeometryResult, feature_geometry
from darkknowledge.diagnostics.isats_search import optimal_nontarget_temperature
from darkknowledge.diagnostics.logits_file import diagnose_from_logits_file, load_logits_file
from darkknowledge.diagnostics.ranks import (
    RankConsistency,
    RankConsistencyAccumulator,
    kendall_tau_b_rows,
    rank_consistency,
    rank_fidelity,
    rank_info,
    spearman_rows,
)
from darkknowledge.diagnostics.report import write_report
from darkknowledge.diagnostics.result import (
    DiagnoseOptions,
    DiagnosticsResult,
    ModelOutputs,
    OutputsBatch,
    TeacherOutputs,
)
from darkknowledge.diagnostics.stats import DEFAULT_TEMPERATURES, TeacherStats, TeacherStatsAccumulator, teacher_stats

__all__ = [
    "DEFAULT_TEMPERATURES",
    "RULES_VERSION",
    "TunedChoice",
    "DISCLAIMER",
    "Decomposition",
    "DecompositionAccumulator",
    "DiagnoseOptions",
    "DiagnosticsResult",
    "FeatureGeometryAccumulator",
    "GeometryResult",
    "ModelOutputs",
    "OutputsBatch",
    "RankConsistency",
    "RankConsistencyAccumulator",
    "TeacherCard",
    "TeacherOutputs",
    "TeacherStats",
    "TeacherStatsAccumulator",
    "aid_decomposition",
    "ats_decomposition",
    "collect_outputs",
    "diagnose",
    "diagnose_from_logits_file",
    "diagnose_stream",
    "dkd_decomposition",
    "feature_geometry",
    "kendall_tau_b_rows",
    "load_logits_file",
    "make_card",
    "optimal_nontarget_temperature",
    "rank_consistency",
    "rank_fidelity",
    "rank_info",
    "spearman_rows",
    "teacher_stats",
    "write_report",
]
