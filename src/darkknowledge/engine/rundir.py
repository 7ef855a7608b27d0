"""The files of a run directory: what may change on resume, reading back damaged
records, and the temporaries of killed writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# what atomic writes leave behind when a process is killed mid-write (fileio.atomic_write)
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "config.yaml")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``.<run file>.*.tmp`` left by killed writes (call only while holding the run's lock)."""
    stale = [p for name in (*RUN_FILES, "epoch-*.pt") for p in run_dir.glob(f".{name}.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def comparable_config(config_yaml: str) -> str:
    """The part of a saved config.yaml that a resumed run must keep (the settings declared
    ``resumable`` may differ: the run may be moved, resumed on another device, run longer)."""
    import yaml

    from darkknowledge.config import resume_comparable, validate_config

    data = validate_config(yaml.safe_load(config_yaml) or {}, source="config.yaml").model_dump(mode="json")
    return json.dumps(resume_comparable(data), sort_keys=True)


def saved_config(run_dir: Path, ckpt: dict[str, Any]) -> str:
    """config.yaml of the run, or the checkpoint's copy when the file is missing or damaged."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        text = path.read_text()
        if isinstance(yaml.safe_load(text), dict):
            return text
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    if path.exists():
        print(
            f"warning: {path} is damaged; using the configuration stored in the checkpoint (rewritten)", file=sys.stderr
        )
    return ckpt["config"]


def read_history(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; lines a crash left half-written (or edited into garbage) are dropped, with a warning."""
    if not path.is_file():
        return []
    records, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
        else:
            dropped += 1
    if dropped:
        print(
            f"warning: {path}: dropped {dropped} unreadable line(s) (e.g. a crash mid-write); the file is rewritten",
            file=sys.stderr,
        )
    return records
