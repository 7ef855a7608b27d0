"""``darkknowledge bench``: speed of our engine against an mdistiller-style loop."""

from __future__ import annotations

from darkknowledge.cli.command import Command


def _add_bench(p):
    p.add_argument("--quick", action="store_true", help="fewer steps/repeats: about 2 minutes on 2 CPU cores")
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="training steps per measurement")
    p.add_argument("--repeats", type=int, default=None, help="repetitions (the median is reported)")
    p.add_argument("--methods", default=None, help="comma-separated methods for the loss-overhead table (default: all)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--out", default=None, help="write the full result as JSON here")
    p.add_argument(
        "--compile-teacher",
        action="store_true",
        help="also time the live loop with the teacher compiled, frozen weights (engine.compile_teacher=true)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of our trainer's loops, e.g. engine.fused_bn_relu=false (the reference is unchanged)",
    )
    lm = p.add_argument_group(
        "language models (--lm): a distillation step in tokens/s, reference vs ours live and cached"
    )
    lm.add_argument("--lm", action="store_true", help="run the language-model section instead of the image one")
    lm.add_argument("--lm-teacher", default="lm_d256_l4")
    lm.add_argument("--lm-student", default="lm_d64_l2")
    lm.add_argument("--lm-context", type=int, default=256)
    lm.add_argument("--lm-vocab", type=int, default=4096, help="vocabulary of the BPE trained on the corpus")
    data = p.add_argument_group("data path (--data): streaming loader vs a torchvision-style reference, same files")
    data.add_argument(
        "--data", default=None, metavar="FOLDER", help="benchmark the image data path on the images under FOLDER"
    )
    data.add_argument("--data-workers", default="1,2", help="comma-separated DataLoader worker counts")
    data.add_argument("--data-passes", type=int, default=3, help="timed passes over the files (median)")
    data.add_argument("--data-limit", type=int, default=None, help="use only the first N images")
    data.add_argument("--decoder", default="auto", choices=["auto", "pil", "simplejpeg"])
    data.add_argument("--crop-size", type=int, default=224)


def cmd_bench(args) -> int:
    if args.data is not None:
        return _cmd_bench_data(args)
    if args.lm:
        return _cmd_bench_lm(args)
    from darkknowledge.bench.run import format_report, run_bench, save_result

    steps = args.steps or (12 if args.quick else 40)
    repeats = args.repeats or (3 if args.quick else 5)
    result = run_bench(
        teacher=args.teacher,
        student=args.student,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        steps=steps,
        repeats=repeats,
        loss_steps=8 if args.quick else 20,
        workers=args.workers,
        methods=args.methods.split(",") if args.methods else None,
        compile_teacher=args.compile_teacher,
        extra=args.set,
    )
    print()
    print(format_report(result))
    if args.out:
        save_result(result, args.out)
        print(f"wrote {args.out}")
    return 0


def _cmd_bench_data(args) -> int:
    import json

    from darkknowledge.bench.data import format_data_report, run_data_bench
    from darkknowledge.errors import UserError

    try:
        workers = [int(w) for w in args.data_workers.split(",")]
    except ValueError:
        raise UserError(f"--data-workers {args.data_workers!r} is not a comma-separated list of integers") from None
    result = run_data_bench(
        args.data,
        workers=workers,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        decoder=args.decoder,
        passes=args.data_passes,
        limit=args.data_limit,
    )
    print(format_data_report(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


BENCH = Command(
    "benchmark: reference mdistiller-style loop vs our trainer (live / cached teacher), loss overheads, memory",
    "darkknowledge bench --quick\n  darkknowledge bench --teacher resnet32x4 --student resnet8x4 --out bench.json"
    "\n  darkknowledge bench --data ../shared/data/imagenet_sample",
    _add_bench,
    cmd_bench,
)


def _cmd_bench_lm(args) -> int:
    import json

    from darkknowledge.bench.lm import format_lm_report, run_lm_bench

    result = run_lm_bench(
        teacher=args.lm_teacher,
        student=args.lm_student,
        context=args.lm_context,
        vocab_size=args.lm_vocab,
        batch_size=8 if args.batch_size == 64 else args.batch_size,
        steps=args.steps or (6 if args.quick else 12),
        repeats=args.repeats or 3,
    )
    print()
    print(format_lm_report(result))
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
