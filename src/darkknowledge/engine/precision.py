"""Precision of forward passes: resolving ``engine.precision`` per device, and the
matching autocast context.

``auto`` means bf16 only where bf16 is *native*: on CUDA, and on CPUs with the
AVX512_BF16 or AMX-BF16 instructions. Any other CPU computes bf16 by conversion: on
AVX2 several times slower than fp32 (measured in docs/performance.md), and AVX-512 CPUs without
AVX512_BF16 (Skylake-class) are similarly slow. oneDNN's own check
(``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on any AVX-512 CPU, so it is
not used.

``fp16`` (CUDA only) autocasts to float16 and scales the loss with a
``torch.amp.GradScaler`` (:func:`grad_scaler`), which fp16's narrow exponent range needs;
bf16 has fp32's range and needs no scaler.
"""

from __future__ import annotations

import functools
import sys

import torch

from darkknowledge.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# CPU flags (as /proc/cpuinfo names them) of instructions that compute in bf16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _proc_cpuinfo_flags() -> set[str] | None:
    """The CPU flags the Linux kernel reports; None where /proc/cpuinfo is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / arm64
                    return set(value.split())
    except OSError:
        return None
    return None


def _torch_cpu_flags() -> set[str]:
    """The native-bf16 flags torch's own CPU probe (cpuinfo, every OS) reports.

    ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` are private;
    a torch without them reports nothing. Every AMX CPU so far has AMX-BF16 with AMX-TILE.
    """
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    flags = set()
    for flag, probe in probes.items():
        try:
            if getattr(torch.cpu, probe)():
                flags.add(flag)
        except (AttributeError, RuntimeError):
            pass
    return flags


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU flags relevant here: the kernel's list on Linux, plus torch's native-bf16 probes."""
    return frozenset((_proc_cpuinfo_flags() or set()) | _torch_cpu_flags())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16)."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast pays on ``device``: CUDA, or a CPU with native bf16."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return True
    if dev.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where it is fast (see :func:`bf16_is_fast`), else ``fp32``;
    an explicit ``bf16`` or ``fp32`` is kept as asked."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use auto, bf16, fp16 (CUDA) or fp32")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise UserError(
            f"engine.precision=fp16 (autocast with a gradient scaler) is CUDA-only, and the device is "
            f"{torch.device(device).type}; use engine.precision=bf16 or fp32 there"
        )
    return precision


def autocast(device: torch.device | str, precision: str):
    """``torch.autocast`` for bf16 / fp16 (``auto`` resolved per device), a no-op context for fp32."""
    device_type = torch.device(device).type
    resolved = resolve_precision(precision, device)
    return torch.autocast(device_type, dtype=DTYPES.get(resolved, torch.bfloat16), enabled=resolved in DTYPES)


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs (CUDA); ``None`` for bf16 and fp32."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def configure_backends(device: torch.device | str, deterministic: bool = False) -> None:
    """Process-wide kernel choices for training on ``device``: on CUDA, cuDNN's benchmark mode
    (it times the convolution algorithms once per input shape and keeps the fastest; the
    training loader's batches all have one shape); not with ``engine.deterministic``."""
    if torch.device(device).type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True
