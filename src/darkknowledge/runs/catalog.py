"""What can be named in a config: the model zoo with parameter counts, the dataset readers,
the methods with their parameters, the bundled presets."""

from __future__ import annotations

import re
from typing import Any


def _natural(name: str) -> list[Any]:  # cnn_w4 before cnn_w16
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def model_rows(num_classes: int, in_channels: int) -> dict[str, Any]:
    """Registered models and their parameter counts, the families ``model.name`` accepts, and
    family members used by the demo that are not registered by name."""
    from importlib import resources

    import yaml

    from darkknowledge.models import build_model, count_parameters, model_names, model_patterns

    def count(name: str) -> int:
        return count_parameters(build_model(name, num_classes=num_classes, in_channels=in_channels))

    registered = sorted(model_names(), key=_natural)
    demo = yaml.safe_load((resources.files("darkknowledge.configs") / "sweeps" / "demo.yaml").read_text())
    demo_models = [demo["student"]["model"], *(t["model"] for t in demo["teachers"])]
    examples = [name for name in demo_models if name not in registered]
    return {
        "registered": [(name, count(name)) for name in registered],
        "families": list(model_patterns()),
        "examples": [(name, count(name)) for name in examples],
    }


def dataset_rows() -> list[tuple[str, str]]:
    """(name, first line of the reader's description) of every dataset reader."""
    from darkknowledge.data import DATASETS

    rows = []
    for name in DATASETS.names():
        doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    return rows


def method_rows(name: str | None = None) -> list[dict[str, Any]]:
    """Every method (or ``name``) with its summary, whether it needs a teacher, and its parameters."""
    from darkknowledge.methods import METHODS, describe_params

    rows = []
    for method in [name] if name else METHODS.names():
        cls = METHODS.get(method)
        rows.append(
            {
                "name": method,
                "summary": cls.summary,
                "needs_teacher": cls.needs_teacher,
                "params": describe_params(cls),
            }
        )
    return rows
