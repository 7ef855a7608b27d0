"""Training-mode BatchNorm + (residual) + ReLU, forward + backward: torch's operators against the
fused C kernel of ``engine.fused_bn_relu`` (``src/darkknowledge/native/batchnorm_relu.c``), on
resnet20's activation shapes, batch 64, channels_last (docs/performance.md).

    .venv/bin/python benchmarks/bn_relu_kernel.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from darkknowledge.native.batchnorm_relu import batchnorm_relu, use_kernel


def step_ms(bn: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor | None, steps: int) -> float:
    leaves = [x, bn.weight, bn.bias] + ([residual] if residual is not None else [])
    grad = torch.ones_like(x)

    def step() -> None:
        torch.autograd.grad(batchnorm_relu(bn, x, residual), leaves, grad)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| shape (batch 64, channels_last) | dtype | residual | torch (ms) | fused kernel (ms) | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        for dtype in (torch.float32, torch.bfloat16):
            for with_residual in (False, True):
                x = torch.randn(64, channels, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
                residual = torch.randn_like(x).requires_grad_() if with_residual else None
                x.requires_grad_(True)
                plain, fused = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
                if not use_kernel(fused, True):
                    raise SystemExit("the fused kernel could not be built (see the warning above)")
                rounds = [
                    (step_ms(plain, x, residual, args.steps), step_ms(fused, x, residual, args.steps))
                    for _ in range(args.rounds)
                ]
                t = sorted(r[0] for r in rounds)[len(rounds) // 2]
                k = sorted(r[1] for r in rounds)[len(rounds) // 2]
                name = str(dtype).removeprefix("torch.")
                print(
                    f"| {channels} x {size} x {size} | {name} | {'yes' if with_residual else 'no'} | {t:.3f} | "
                    f"{k:.3f} | {t / k:.2f}× |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
