"""The runs layer: what a user can ask for, as plain functions over typed configs.

``train`` (teachers, students, any method), ``assistant_config`` (the TAKD assistant of a
distillation), ``evaluate_checkpoint``, ``evaluate_language_model_teacher``, ``build_teacher_cache`` / ``cache_info``,
``diagnose_checkpoints``, and the catalogues behind ``darkknowledge models|datasets|methods``.
The command line (``darkknowledge.cli``) and the experiments layer both call these; neither
assembles engine parts itself.
"""

from darkknowledge.runs.assistant import assistant_config
from darkknowledge.runs.cache import build_teacher_cache, cache_info
from darkknowledge.runs.evaluate import evaluate_checkpoint, evaluate_language_model_teacher
from darkknowledge.runs.train import distill_config, is_main_process, train

__all__ = [
    "assistant_config",
    "build_teacher_cache",
    "cache_info",
    "distill_config",
    "evaluate_checkpoint",
    "evaluate_language_model_teacher",
    "is_main_process",
    "train",
]
