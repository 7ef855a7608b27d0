"""A live CNN teacher's forward on the CPU, four ways: the engine's (BatchNorm folded, channels_last,
bf16 autocast), the same with bf16 weights instead of autocast, with weights prepacked for oneDNN
(``torch.utils.mkldnn``), and compiled with frozen weights (``engine.compile_teacher=true``;
``--compile``). Rounds are interleaved; images/s per round (docs/performance.md).

    .venv/bin/python benchmarks/teacher_forward.py --model resnet56 --rounds 4 --compile
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch.utils.mkldnn

from darkknowledge.engine.compile import compile_module
from darkknowledge.engine.teacher import prepare_for_inference
from darkknowledge.models import build_model


def images_per_s(forward: Callable[[], torch.Tensor], batch: int, steps: int) -> float:
    forward()
    start = time.perf_counter()
    for _ in range(steps):
        forward()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also the compiled forward with frozen weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = prepare_for_inference(build_model(args.model, args.classes), channels_last=True, fold_batchnorm=True)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def autocast(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def forward() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()

        return forward

    bf16_model = copy.deepcopy(teacher).to(torch.bfloat16)
    packed = torch.utils.mkldnn.to_mkldnn(
        copy.deepcopy(teacher).to(memory_format=torch.contiguous_format), torch.bfloat16
    )

    def bf16_weights() -> torch.Tensor:
        with torch.inference_mode():
            return bf16_model(x.to(torch.bfloat16)).float()

    def prepacked() -> torch.Tensor:
        with torch.inference_mode():
            return packed(x.to(torch.bfloat16).to_mkldnn()).to_dense().float()

    ways = {"engine (autocast)": autocast(teacher), "bf16 weights": bf16_weights, "oneDNN prepacked": prepacked}
    if args.compile:
        ways["compiled, frozen"] = autocast(compile_module(teacher, "cpu", frozen=True))
    reference = ways["engine (autocast)"]()
    for name, forward in ways.items():
        gap = (forward() - reference).abs().max().item() / reference.abs().max().item()
        print(f"{name}: largest difference to the engine's logits {gap:.2%} of the largest logit")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.model}, batch {args.batch_size}; images/s:")
    print("| round | " + " | ".join(ways) + " |")
    print("|---:|" + "---:|" * len(ways))
    for r in range(args.rounds):
        rates = [images_per_s(f, args.batch_size, args.steps) for f in ways.values()]
        print(f"| {r + 1} | " + " | ".join(f"{v:.0f}" for v in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
