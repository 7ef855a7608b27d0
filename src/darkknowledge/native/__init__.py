"""Small C kernels the engine compiles with the system's C compiler at first use.

Each kernel is one C file beside this module. :func:`load` compiles it once per source, compiler
and CPU into a shared library under the cache directory (``$DARKKNOWLEDGE_NATIVE_CACHE``, else
``$XDG_CACHE_HOME/darkknowledge/native``, else ``~/.cache/darkknowledge/native``) and opens it with
:mod:`ctypes`. Where no compiler is found or the build fails, :func:`load` returns ``None`` and
:func:`unavailable_reason` says why: the callers then use torch's own operators.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")
COMPILE_TIMEOUT_S = 120

_loaded: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def cache_dir() -> Path:
    if os.environ.get("DARKKNOWLEDGE_NATIVE_CACHE"):
        return Path(os.environ["DARKKNOWLEDGE_NATIVE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "darkknowledge" / "native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _library_path(source: Path, compiler: str) -> Path:
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    key = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(FLAGS).encode(), compiler.encode(), *map(str.encode, version)):
        key.update(part)
        key.update(b"\0")
    key.update(_cpu_flags().encode())
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"


def _build(source: Path, target: Path, compiler: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, "-o", tmp, str(source)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
            raise RuntimeError(f"{compiler} failed on {source.name}: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel ``name`` (``<name>.c`` beside this module), or None where it cannot be built."""
    if name in _loaded:
        return _loaded[name]
    source = Path(__file__).with_name(f"{name}.c")
    lib: ctypes.CDLL | None = None
    compiler = _compiler()
    if compiler is None:
        _reasons[name] = "no C compiler found (set CC, or install cc/gcc)"
    else:
        try:
            target = _library_path(source, compiler)
            if not target.exists():
                _build(source, target, compiler)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _reasons[name] = " ".join(str(exc).split())
    _loaded[name] = lib
    return lib


def unavailable_reason(name: str) -> str | None:
    """Why :func:`load` returned None for ``name`` (None if it loaded or was not tried)."""
    return _reasons.get(name)
