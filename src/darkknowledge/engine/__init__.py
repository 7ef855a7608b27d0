"""Training engine: trainer, teacher signals (live / cached), checkpoints, metrics."""

from darkknowledge.engine.metrics import ClassificationMeter, evaluate
from darkknowledge.engine.teacher import LiveTeacher, TeacherSignal
from darkknowledge.engine.trainer import Trainer, build_trainer, train

__all__ = ["ClassificationMeter", "LiveTeacher", "TeacherSignal", "Trainer", "build_trainer", "evaluate", "train"]
