"""Staging directories: a directory is written beside its target and renamed into place; what a
killed writer left is removed by the next writer of the same target, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys

from darkknowledge.fileio import staging_dir


def test_staging_dir_removes_what_dead_writers_left_and_nothing_else(tmp_path):
    target = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    left_by_dead = tmp_path / f".cache.tmp-{dead_pid}-abcd"
    left_by_dead.mkdir()
    (left_by_dead / "ids.npy").write_bytes(b"x")
    live = tmp_path / f".cache.tmp-{os.getpid()}-efgh"  # a writer still running (this process)
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead_pid}-ijkl"  # another target's
    other.mkdir()
    user = tmp_path / ".cache.mine"  # not our naming: never touched
    user.mkdir()
    new = staging_dir(target)
    assert new.is_dir() and new.name.startswith(f".cache.tmp-{os.getpid()}-") and new.parent == tmp_path
    assert not left_by_dead.exists()
    assert live.is_dir() and other.is_dir() and user.is_dir()
