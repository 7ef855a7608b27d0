"""The experiments layer: a typed stage graph (graph.py, kinds.py) keyed by content, one
store for stage directories and records (store.py), sweeps over teachers x methods x seeds
(sweep.py) and executors (inline, local processes, submitit).

Layering: cli -> experiments -> runs -> engine / diagnostics / methods / models / data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from darkknowledge.experiments.executors import make_executor
from darkknowledge.experiments.spec import SweepSpec, load_spec
from darkknowledge.experiments.sweep import Sweep


def resolve_spec_path(spec: str) -> Path:
    """A spec file, or the name of a bundled spec (``darkknowledge/configs/sweeps/<name>.yaml``)."""
    from importlib import resources

    path = Path(spec)
    if path.is_file():
        return path
    bundled = resources.files("darkknowledge.configs") / "sweeps" / f"{spec.removesuffix('.yaml')}.yaml"
    if bundled.is_file():
        return Path(str(bundled))
    return path


def open_sweep(
    spec: str | SweepSpec,
    out: str | Path | None = None,
    *,
    executor: str = "auto",
    jobs: int = 1,
    cluster: str | None = None,
    submitit_params: dict[str, Any] | None = None,
    log=print,
) -> Sweep:
    """A :class:`Sweep` of a spec file / bundled name / parsed spec, writing under ``out``."""
    if isinstance(spec, SweepSpec):
        parsed, name, base = spec, "sweep", Path.cwd()
    else:
        path = resolve_spec_path(spec)
        parsed, name, base = load_spec(path), path.stem, path.parent
    out = Path(out) if out else Path("runs") / "sweeps" / name
    ex = make_executor(executor, jobs=jobs, folder=out / "submitit", cluster=cluster, parameters=submitit_params)
    records = base / parsed.records if parsed.records else None
    return Sweep(parsed, out, executor=ex, log=log, records=records)


__all__ = ["Sweep", "SweepSpec", "load_spec", "open_sweep", "resolve_spec_path"]
