"""Where a run's per-epoch records go: ``metrics.jsonl`` always, TensorBoard when asked.

A logger receives each epoch's record (a flat dict of numbers, keys like ``loss/kd``,
``test/top1``, ``method/tau_mean``) after the epoch ends. Add a backend by subclassing
:class:`RunLogger`; the trainer calls every logger the same way.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from darkknowledge.errors import UserError


class RunLogger:
    """Interface: ``log_epoch(record)`` after each epoch, ``close()`` at the end."""

    def log_epoch(self, record: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats become ``null``: every line stays valid JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class JsonlLogger(RunLogger):
    """One JSON object per line, appended (the run's own record, read by ``--resume`` and sweeps)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def log_epoch(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(json_safe(record)) + "\n")


class TensorBoardLogger(RunLogger):
    """Scalars of each record as TensorBoard events (step = completed epochs)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "engine.tensorboard=true needs the tensorboard package: pip install tensorboard "
                "(or darkknowledge[tensorboard])"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"]) + 1
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def build_loggers(run_dir: Path, tensorboard: bool) -> list[RunLogger]:
    loggers: list[RunLogger] = [JsonlLogger(run_dir / "metrics.jsonl")]
    if tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return loggers


def print_epoch(record: dict[str, Any], epochs: int) -> None:
    parts = [f"epoch {record['epoch'] + 1}/{epochs}", f"loss {record['loss/total']:.4f}"]
    if "val/bpb" in record:  # a language model: bits per byte compare across tokenizers
        parts.append(f"val_bpb {record['val/bpb']:.4f}")
    elif "val/top1" in record:
        parts.append(f"val_top1 {record['val/top1']:.3f}")
    for k in ("test/top1", "test/top5", "test/nll", "test/bpb", "test/ece"):
        if k in record:
            parts.append(f"{k[5:]} {record[k]:.3f}")
    for unit, short in (("images", "img"), ("tokens", "tok")):
        if f"train_{unit}_per_s" in record:
            parts.append(f"{record[f'train_{unit}_per_s']:.0f} {short}/s")
    print("  ".join(parts), file=sys.stderr, flush=True)  # stdout stays for the final JSON
