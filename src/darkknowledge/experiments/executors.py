"""Where stage jobs run. Every executor takes stage directories (each with its
``stage.json``), runs :func:`~darkknowledge.experiments.stage.run_stage` on each, and
returns when all have finished; outcomes are read back from the directories.

* ``inline``: sequentially in this process (datasets loaded once and shared);
* ``local``: ``--jobs N`` subprocesses at once, each with cores/N threads;
* ``submitit``: an existing cluster engine — SLURM job arrays, or its local executor
  (``cluster=local``) on one machine; parameters pass through (``timeout_min``,
  ``slurm_partition``, ``cpus_per_task``, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from darkknowledge.errors import UserError
from darkknowledge.experiments.stage import LOG_FILE, record_failure, run_stage


class Executor:
    name = "executor"

    def run(self, stage_dirs: list[Path]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def threads_per_job(self) -> int | None:
        """Intra-op threads each job should use (None: torch's default)."""
        return None


class InlineExecutor(Executor):
    """Run jobs one after the other in this process."""

    name = "inline"

    def __init__(self, log=print):
        self.datasets: dict[str, Any] = {}
        self.log = log

    def run(self, stage_dirs: list[Path]) -> None:
        for d in stage_dirs:
            run_stage(d, datasets=self.datasets)


class LocalExecutor(Executor):
    """Run up to ``jobs`` jobs at once as subprocesses (``python -m darkknowledge.experiments.stage``)."""

    name = "local"

    def __init__(self, jobs: int = 1, cores: int | None = None):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self.cores = cores or os.cpu_count() or 1

    def threads_per_job(self) -> int | None:
        # threads oversubscribed across processes collapse on a small CPU: split the cores
        return max(1, self.cores // self.jobs)

    def run(self, stage_dirs: list[Path]) -> None:
        queue = list(stage_dirs)
        running: list[tuple[subprocess.Popen, Any]] = []
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads_per_job())}
        while queue or running:
            while queue and len(running) < self.jobs:
                d = queue.pop(0)
                log = open(Path(d) / LOG_FILE, "a")
                proc = subprocess.Popen([sys.executable, "-m", "darkknowledge.experiments.stage", str(d)],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                running.append((proc, log))
            time.sleep(0.05)
            for item in [r for r in running if r[0].poll() is not None]:
                proc, log = item
                log.close()
                running.remove(item)
                if proc.returncode not in (0, 1):  # 1: run_stage recorded the failure itself
                    record_failure(Path(proc.args[-1]), f"job process exited with status {proc.returncode}")


class SubmititExecutor(Executor):
    """Submit jobs as one submitit job array (SLURM; ``cluster='local'`` runs them on this machine)."""

    name = "submitit"

    def __init__(self, folder: str | Path, cluster: str | None = None, parameters: dict[str, Any] | None = None):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError("--executor submitit needs the submitit package: pip install submitit "
                            "(or darkknowledge[cluster])") from None
        self.folder, self.cluster = Path(folder), cluster
        self.parameters = {"name": "darkknowledge", **(parameters or {})}
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # check the parameters now, create the folder only when jobs run
            self._make(tmp)
        self.cpus = int(self.parameters.get("cpus_per_task") or self.parameters.get("slurm_cpus_per_task") or 0) or None

    def _make(self, folder: str | Path):
        import submitit

        executor = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
        try:
            executor.update_parameters(**self.parameters)
        except (ValueError, TypeError) as exc:
            raise UserError(f"--submitit-param: {str(exc).splitlines()[0]}") from None
        self.cluster = executor.cluster
        return executor

    def threads_per_job(self) -> int | None:
        # submitit's local cluster starts every job at once on this machine: one thread each
        return self.cpus or (1 if self.cluster in ("local", "debug") else None)

    def run(self, stage_dirs: list[Path]) -> None:
        if not stage_dirs:
            return
        jobs = self._make(self.folder).map_array(run_stage, [str(d) for d in stage_dirs])
        for job, d in zip(jobs, stage_dirs):
            try:
                job.result()  # run_stage records failures itself; this catches a job that never ran
            except Exception as exc:  # noqa: BLE001  a node failure, a timeout: recorded like a failed run
                record_failure(Path(d), f"submitit job {job.job_id} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def make_executor(kind: str, jobs: int = 1, folder: str | Path | None = None, cluster: str | None = None,
                  parameters: dict[str, Any] | None = None) -> Executor:
    if kind == "auto":
        kind = "inline" if jobs == 1 else "local"
    if kind == "inline":
        if jobs != 1:
            raise UserError("--executor inline runs one job at a time; use --executor local for --jobs N")
        return InlineExecutor()
    if kind == "local":
        return LocalExecutor(jobs)
    if kind == "submitit":
        return SubmititExecutor(folder or "submitit", cluster=cluster, parameters=parameters)
    raise UserError(f"unknown executor {kind!r}; choose auto, inline, local or submitit")
