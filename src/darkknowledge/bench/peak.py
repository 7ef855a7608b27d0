"""What the machine can do, and what a step asks of it: the bench's yardsticks.

* :func:`matmul_peak` — GFLOP/s of a large square matmul in fp32 or bf16 on a device, the
  best of several timed blocks (a peak is a best case; other processes only lower it).
* :func:`train_step_flops` / :func:`forward_flops` — FLOPs of one training step (forward +
  cross-entropy + backward) or one inference forward, counted by
  ``torch.utils.flop_counter`` (convolutions and matrix products; element-wise work is
  not counted, so a fraction of the matmul peak is a lower bound on how busy the units are).
* :func:`capability` — the CPU's vector/bf16 flags as the kernel and torch report them, or
  the CUDA device's name and compute capability.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from darkknowledge.engine.precision import cpu_flags, cpu_has_native_bf16

# flags worth reporting: what decides which kernels oneDNN and inductor pick
REPORTED_CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    precision: str, device: torch.device | str = "cpu", size: int | None = None, seconds: float = 1.0
) -> dict[str, Any]:
    """Best GFLOP/s of ``size x size`` matmuls in ``precision`` over about ``seconds`` of blocks.

    Default size: 2048 on a CPU (the fastest of 1024-4096 on a 2-core AVX512-BF16 machine;
    large enough for the blocked kernels), 8192 on CUDA.
    """
    dev = torch.device(device)
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}")
    n = size or (8192 if dev.type == "cuda" else 2048)
    dtype = DTYPES[precision]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=dev, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=dev, dtype=dtype)
    flops = 2.0 * n**3
    # calls per block: about 0.1 s each, at least one
    _sync(dev)
    t0 = time.perf_counter()
    torch.mm(a, b)
    _sync(dev)
    first = time.perf_counter() - t0
    torch.mm(a, b)  # the first call may include kernel selection
    _sync(dev)
    t0 = time.perf_counter()
    torch.mm(a, b)
    _sync(dev)
    one = max(min(first, time.perf_counter() - t0), 1e-6)
    calls = max(1, int(0.1 / one))
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while not rates or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        _sync(dev)
        rates.append(flops * calls / (time.perf_counter() - t0) / 1e9)
    rates.sort()
    return {
        "precision": precision,
        "size": n,
        "gflops": rates[-1],
        "median_gflops": rates[len(rates) // 2],
        "blocks": len(rates),
    }


def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model: nn.Module, images: torch.Tensor) -> int:
    """FLOPs of forward + cross-entropy + backward of ``model`` on ``images`` (the whole batch).

    The model's parameters get gradients (set to None afterwards); its mode is kept.
    """
    targets = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(images), targets)
        loss.backward()

    flops = _count(step)
    model.zero_grad(set_to_none=True)
    return flops


def forward_flops(model: nn.Module, images: torch.Tensor) -> int:
    """FLOPs of one inference forward of ``model`` on ``images`` (the whole batch)."""

    def fwd() -> None:
        with torch.no_grad():
            model(images)

    return _count(fwd)


def capability(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The device's identity and the capabilities that decide its kernels."""
    dev = torch.device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return {
            "device": "cuda",
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    flags = cpu_flags()
    return {
        "device": "cpu",
        "name": _cpu_model_name() or platform.processor() or platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "flags": [f for f in REPORTED_CPU_FLAGS if f in flags],
        "native_bf16": cpu_has_native_bf16(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def _cpu_model_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        return None
    return None
