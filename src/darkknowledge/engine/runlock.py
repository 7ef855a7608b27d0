"""One writer per run directory: an advisory lock (``<run_dir>/.lock``) held while a
process trains there. A second process gets a one-line error naming the holder."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

from darkknowledge.errors import UserError

if sys.platform != "win32":  # POSIX advisory locks; on Windows runs are not locked
    import fcntl

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir):`` — exclusive while the block runs; released on exit or process death."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fh: TextIO | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        if sys.platform != "win32":
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                try:
                    info = json.loads(holder)
                    who = f"process {info['pid']} on {info['host']} since {info['since']}"
                except (ValueError, KeyError, TypeError):
                    who = "another process"
                raise UserError(
                    f"run directory {self.path.parent} is in use by {who}; wait for it to finish "
                    "or choose another name="
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        )
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock; the file stays (unlinking would race a waiting process)
            self.fh = None
