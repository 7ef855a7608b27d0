"""darkknowledge: knowledge distillation under teacher-student capacity mismatch.

Library entry points (imported lazily so ``import darkknowledge`` stays cheap)::

    from darkknowledge import load_config, train
    summary = train(load_config("cifar100_kd", ["teacher.checkpoint=t.pt", "model.name=resnet20"]))

    from darkknowledge.methods.kd import kd_loss          # a loss in your own loop
    from darkknowledge.models import build_model
    from darkknowledge.data import build_dataset
"""

__version__ = "0.1.0"

_LAZY = {
    "load_config": ("darkknowledge.config", "load_config"),
    "RunConfig": ("darkknowledge.config", "RunConfig"),
    "train": ("darkknowledge.runs", "train"),
    "build_trainer": ("darkknowledge.engine.trainer", "build_trainer"),
    "Trainer": ("darkknowledge.engine.trainer", "Trainer"),
    "build_model": ("darkknowledge.models", "build_model"),
    "build_method": ("darkknowledge.methods", "build_method"),
    "build_dataset": ("darkknowledge.data", "build_dataset"),
    "UserError": ("darkknowledge.errors", "UserError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'darkknowledge' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]  # noqa: PLE0605 - built from the lazy table, the one list of names
