"""Where stage jobs run. Every executor takes stage directories (each with its
``stage.json``), runs :func:`~darkknowledge.experiments.stage.run_stage` on each, and
returns when all have finished; outcomes are read back from the directories.

* ``inline``: sequentially in this process (datasets loaded once and shared);
* ``local``: ``--jobs N`` worker processes at once, each with cores/N threads; a stage starts
  as soon as its inputs are finished and a worker is free (no waves);
* ``submitit``: an existing cluster engine — SLURM job arrays, or its local executor
  (``cluster=local``) on one machine; parameters pass through (``timeout_min``,
  ``slurm_partition``, ``cpus_per_task``, ...).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from darkknowledge.errors import UserError
from darkknowledge.experiments.stage import record_failure, run_stage


class Executor:
    name = "executor"
    streams = False  # True: the sweep submits each stage as soon as its inputs are finished (pool/submit/collect)

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


_WORKER_DATASETS: dict[str, Any] = {}


def _die_with_parent(parent: int) -> None:
    """Make this worker die when the sweep process dies, even by SIGKILL (Linux: prctl
    PR_SET_PDEATHSIG); elsewhere a thread watches the parent's pid."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    else:  # pragma: no cover - not Linux
        import threading

        def watch() -> None:
            while True:
                time.sleep(1.0)
                if os.getppid() != parent:
                    os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _init_worker(threads: int | None, parent: int) -> None:
    from darkknowledge.engine.runtime import apply_runtime

    _die_with_parent(parent)
    apply_runtime(threads)  # once per worker: the stages' own engine.threads (capped to the same) find it applied


def _run_in_worker(stage_dir: str) -> str:
    return run_stage(stage_dir, datasets=_WORKER_DATASETS)


class WorkerPool:
    """A process pool that replaces itself once a worker has died (killed, out of memory): the
    dead pool's unfinished jobs fail (:meth:`LocalExecutor.collect` records them), later jobs run
    in fresh workers instead of the whole sweep stopping."""

    def __init__(self, make: Callable[[], ProcessPoolExecutor]):
        self._make = make
        self._pool = make()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._make()
            return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown()


class LocalExecutor(Executor):
    """Run up to ``jobs`` stages at once in a pool of worker processes on this machine.

    Workers live for the whole step (imports and loaded datasets are reused); a worker
    that dies (killed, out of memory) fails only the stages that had not finished.
    """

    name = "local"
    streams = True

    def __init__(self, jobs: int = 1, cores: int | None = None):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self.cores = cores or os.cpu_count() or 1

    def threads_per_job(self) -> int | None:
        # threads oversubscribed across processes collapse on a small CPU: split the cores
        return max(1, self.cores // self.jobs)

    @contextlib.contextmanager
    def pool(self, jobs: int | None = None) -> Iterator[WorkerPool]:
        """``jobs`` (default ``--jobs``) worker processes, alive until the block ends."""
        import multiprocessing

        def make() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(
                max_workers=jobs or self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads_per_job(), os.getpid()),
            )

        workers = WorkerPool(make)
        try:
            yield workers
        finally:
            workers.close()

    @staticmethod
    def submit(pool: WorkerPool, stage_dir: Path) -> Future[str]:
        return pool.submit(_run_in_worker, str(stage_dir))

    @staticmethod
    def collect(future: Future[str], stage_dir: Path) -> None:
        """Wait for one stage; a worker that died fails that stage (its directory says why)."""
        try:
            future.result()
        except Exception as exc:
            record_failure(stage_dir, f"worker process died ({type(exc).__name__}: {exc})")

    def run(self, stage_dirs: list[Path]) -> None:
        if not stage_dirs:
            return
        with self.pool(min(self.jobs, len(stage_dirs))) as pool:
            futures = [(self.submit(pool, Path(d)), Path(d)) for d in stage_dirs]
            for future, d in futures:
                self.collect(future, d)


class SubmititExecutor(Executor):
    """Submit jobs as one submitit job array (SLURM; ``cluster='local'`` runs them on this machine)."""

    name = "submitit"

    def __init__(self, folder: str | Path, cluster: str | None = None, parameters: dict[str, Any] | None = None):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(
                "--executor submitit needs the submitit package: pip install submitit (or darkknowledge[cluster])"
            ) from None
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
            except Exception as exc:
                record_failure(
                    Path(d),
                    f"submitit job {job.job_id} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                )


def make_executor(
    kind: str,
    jobs: int = 1,
    folder: str | Path | None = None,
    cluster: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Executor:
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
