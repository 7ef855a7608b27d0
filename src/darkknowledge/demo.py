"""``darkknowledge demo``: the whole pipeline offline, on scikit-learn's digits, in minutes.

The demo is a small sweep (the bundled spec ``configs/sweeps/demo.yaml``): a teacher
ladder of three MLPs, one small student distilled from each with KD and ISATS over three
seeds, the student alone (CE), a table, a plot and the ladder's diagnostics. Digits is
tiny (1,438 training images of 8x8 pixels): the numbers show that the pipeline works end
to end; they are not evidence about capacity mismatch (docs/results.md says what is).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from darkknowledge.config import deep_merge
from darkknowledge.errors import UserError
from darkknowledge.experiments import load_spec, open_sweep, resolve_spec_path
from darkknowledge.experiments.results import write_results
from darkknowledge.experiments.spec import parse_spec


def run_demo(
    out_dir: str = "runs/demo", epochs: int | None = None, overwrite: bool = False, log=print
) -> dict[str, Any]:
    """Run the demo sweep under ``out_dir``; finished stages of an earlier demo are reused
    unless ``overwrite`` (which deletes only what an earlier demo wrote there)."""
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    spec = load_spec(resolve_spec_path("demo"))
    if epochs is not None:
        spec = parse_spec(
            deep_merge(spec.model_dump(mode="json", exclude_none=True), {"base": {"optim": {"epochs": epochs}}}), "demo"
        )
    sweep = open_sweep(spec, out_dir, log=log)
    sweep.check_out_dir()  # everything is validated before anything is deleted
    if overwrite:
        removed = sweep.clear()
        if removed:
            log(f"removed {len(removed)} outputs of an earlier demo in {out_dir}")
    t0 = time.perf_counter()
    log(
        f"darkknowledge demo: digits, teachers {', '.join(t.label for t in spec.teachers)}, student {spec.student.model}, "
        f"methods {', '.join(m.label for m in spec.methods)} + ce, seeds {spec.seeds}, "
        f"{spec.base['optim']['epochs']} epochs; writing {out_dir}"
    )
    counts = sweep.run()
    written = write_results(sweep)
    wall = time.perf_counter() - t0
    log("\n" + written["table"])
    log(f"wrote {Path(out_dir) / 'results.md'}, results.csv, the plot and diagnostics/report.html ({wall:.0f}s)")
    return {
        "stages": counts,
        "files": written["files"],
        "teachers": written["teachers"],
        "students": written["students"],
        "wall_time_s": wall,
    }
