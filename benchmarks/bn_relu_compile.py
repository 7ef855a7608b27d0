"""BatchNorm + ReLU in training mode (forward + backward), eager against torch.compile (inductor),
on resnet20's activation shapes: does compiling the memory-bound part of the student step pay on
this CPU? (docs/performance.md, "What was tried on the training step").

    .venv/bin/python benchmarks/bn_relu_compile.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


class BatchNormReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(x))


def step_ms(module: nn.Module, x: torch.Tensor, steps: int) -> float:
    for _ in range(3):
        module(x).sum().backward()
    start = time.perf_counter()
    for _ in range(steps):
        module(x).sum().backward()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| shape (batch 64, channels_last) | dtype | eager (ms) | compiled (ms) | first compiled call (s) |")
    print("|---|---|---:|---:|---:|")
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(64, channels, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            eager = BatchNormReLU(channels)
            compiled = torch.compile(BatchNormReLU(channels))
            start = time.perf_counter()
            compiled(x).sum().backward()
            first = time.perf_counter() - start
            rounds = [(step_ms(eager, x, args.steps), step_ms(compiled, x, args.steps)) for _ in range(args.rounds)]
            e = sorted(r[0] for r in rounds)[len(rounds) // 2]
            c = sorted(r[1] for r in rounds)[len(rounds) // 2]
            name = str(dtype).removeprefix("torch.")
            print(f"| {channels} x {size} x {size} | {name} | {e:.2f} | {c:.2f} | {first:.1f} |", flush=True)


if __name__ == "__main__":
    main()
