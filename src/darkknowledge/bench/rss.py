"""The process's resident memory on Linux (``/proc/self/status``), and resetting its peak
(``/proc/self/clear_refs``) so that one phase's peak can be read on its own."""

from __future__ import annotations

import os

_STATUS, _CLEAR_REFS = "/proc/self/status", "/proc/self/clear_refs"


def can_reset_peak() -> bool:
    """Whether this system lets a process reset its peak resident set (Linux)."""
    return os.path.exists(_CLEAR_REFS) and os.access(_CLEAR_REFS, os.W_OK)


def reset_peak() -> bool:
    """Reset the peak resident set (``VmHWM``) to the current one; False where the system cannot."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_mib() -> float | None:
    """The resident set now (``VmRSS``), MiB; None off Linux."""
    return _status_mib("VmRSS")


def peak_mib() -> float:
    """The peak resident set since the last :func:`reset_peak` (``VmHWM``), MiB; elsewhere the
    process's lifetime peak (``ru_maxrss``)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
