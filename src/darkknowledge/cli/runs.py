"""``darkknowledge train|distill|evaluate|demo``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from darkknowledge.cli.command import Command, config_args


def _report(summary: dict[str, Any], extra: dict[str, Any]) -> int:
    from darkknowledge.runs import is_main_process

    if is_main_process():  # under torchrun only rank 0 reports
        report = {"run_dir": summary["run_dir"], **extra, "final": summary["final"], "best": summary["best"]}
        print(json.dumps(report, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from darkknowledge.config import load_config
    from darkknowledge.runs import train

    cfg = load_config(args.config, args.overrides, base={"method": {"name": "ce"}})
    return _report(train(cfg, resume=args.resume), {})


def _add_distill(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument(
        "--assistant",
        metavar="MODEL",
        help="TAKD: first distil a teacher assistant of this architecture from the "
        "teacher (same method and settings; reused when done), then the student from it",
    )


def _distill(args: argparse.Namespace) -> int:
    from darkknowledge.config import CheckpointTeacher
    from darkknowledge.runs import distill_config, train

    cfg, taken = distill_config(args.config, args.overrides, base={"method": {"name": "kd"}})
    extra: dict[str, Any] = {"data_from_teacher": taken} if taken else {}
    if args.assistant:
        from darkknowledge.experiments.chain import run_assistant

        extra["assistant"] = run_assistant(cfg, args.assistant, log=lambda m: print(m, file=sys.stderr))
        fold = getattr(cfg.teacher, "fold_batchnorm", True)
        assistant = CheckpointTeacher(checkpoint=extra["assistant"], fold_batchnorm=fold)
        cfg = cfg.model_copy(update={"teacher": assistant})
    return _report(train(cfg, resume=args.resume), extra)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt / last.pt written by darkknowledge")
    p.add_argument(
        "overrides", nargs="*", metavar="data.key=value", help="data overrides (default: the checkpoint's dataset)"
    )
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="val: data.val_per_class images per class held out of training",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu")


def _evaluate(args: argparse.Namespace) -> int:
    from darkknowledge.runs import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint, args.overrides, split=args.split, precision=args.precision, device=args.device
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="runs/demo", help="output directory (must not hold a previous demo unless --overwrite)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's setting)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")


def _demo(args: argparse.Namespace) -> int:
    from darkknowledge.demo import run_demo

    run_demo(out_dir=args.out, epochs=args.epochs, overwrite=args.overwrite)
    return 0


TRAIN = Command(
    "train a model with plain cross-entropy (teachers, student baselines) or any method",
    "darkknowledge train model.name=cnn_w64 optim.epochs=30 name=teacher-w64\n"
    "  darkknowledge train --config cifar100_teacher model.name=resnet56 data.root=/data/cifar",
    config_args,
    _train,
)
DISTILL = Command(
    "distil a student from a teacher checkpoint (or cache) with a method (default: kd); data settings default to the teacher's",
    "darkknowledge distill teacher.checkpoint=runs/teacher-w64/best.pt model.name=cnn_w8 method.name=kd method.temperature=4\n"
    "  darkknowledge distill --config cifar100_kd teacher.checkpoint=runs/r32x4/best.pt method.name=dkd method.nckd_weight=8\n"
    "  darkknowledge distill teacher.checkpoint=runs/r110/last.pt model.name=resnet8 --assistant resnet32   # TAKD",
    _add_distill,
    _distill,
)
EVALUATE = Command(
    "evaluate a checkpoint on a dataset split (top-1, top-5, NLL, ECE)",
    "darkknowledge evaluate runs/teacher-w64/best.pt\n"
    "  darkknowledge evaluate runs/r56/best.pt data.name=cifar100 data.root=/data/cifar --split train",
    _add_evaluate,
    _evaluate,
)
DEMO = Command(
    "offline demo: a teacher ladder, KD students and a CE baseline on sklearn digits (~minutes)",
    "darkknowledge demo\n  darkknowledge demo --out runs/demo2 --epochs 20",
    _add_demo,
    _demo,
)
