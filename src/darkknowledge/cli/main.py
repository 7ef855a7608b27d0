"""The ``darkknowledge`` command line.

Every sub-command is a thin wrapper over the library; a :class:`UserError` anywhere
prints ``error: <one line>`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from darkknowledge.errors import UserError
from darkknowledge.plugins import load_plugins

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, example: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register the decorated handler as sub-command ``name``; ``add_args(parser)`` adds its options."""

    def deco(handler: Handler) -> Handler:
        COMMANDS[name] = (help, example, add_args or (lambda p: None), handler)
        return handler

    return deco


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. optim.lr=0.1 method.temperature=2"
    )
    p.add_argument("--config", "-c", help="YAML config file or bundled preset name (see `darkknowledge configs`)")
    p.add_argument("--resume", action="store_true", help="continue the run in its run directory from last.pt")


# ---------------------------------------------------------------------------- train / distill
def _run_training(args: argparse.Namespace, base: dict, inherit_teacher_data: bool = False) -> int:
    from darkknowledge.config import load_config
    from darkknowledge.engine.trainer import train

    cfg = load_config(args.config, args.overrides, base=base)
    report = {}
    if inherit_teacher_data and cfg.teacher.checkpoint:
        from darkknowledge.engine.assembly import teacher_data_section

        # the teacher's dataset is the default; --config and data.* overrides still win
        inherited = teacher_data_section(cfg.teacher.checkpoint)
        cfg = load_config(args.config, args.overrides, base={**base, "data": inherited})
        default = type(cfg.data)()
        report["data_from_teacher"] = {
            k: v for k, v in inherited.items() if getattr(cfg.data, k) == v != getattr(default, k)
        }
    if getattr(args, "assistant", None):
        from darkknowledge.experiments.chain import run_assistant

        # TAKD: the student learns from an assistant distilled from the teacher (reused when done)
        report["assistant"] = run_assistant(cfg, args.assistant, log=lambda m: print(m, file=sys.stderr))
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"checkpoint": report["assistant"]})})
    summary = train(cfg, resume=args.resume)
    from darkknowledge.engine.distributed import is_main_process

    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    print(
        json.dumps(
            {"run_dir": summary["run_dir"], **report, "final": summary["final"], "best": summary["best"]}, indent=2
        )
    )
    return 0


def _add_train(p):
    _config_args(p)


@command(
    "train",
    "train a model with plain cross-entropy (teachers, student baselines) or any method",
    "darkknowledge train model.name=cnn_w64 optim.epochs=30 name=teacher-w64\n"
    "  darkknowledge train --config cifar100_teacher model.name=resnet56 data.root=/data/cifar",
    add_args=_add_train,
)
def cmd_train(args) -> int:
    return _run_training(args, base={"method": {"name": "ce"}})


def _add_distill(p):
    _config_args(p)
    p.add_argument(
        "--assistant",
        metavar="MODEL",
        help="TAKD: first distil a teacher assistant of this architecture from the "
        "teacher (same method and settings; reused when done), then the student from it",
    )


@command(
    "distill",
    "distil a student from a teacher checkpoint (or cache) with a method (default: kd); data settings default to the teacher's",
    "darkknowledge distill teacher.checkpoint=runs/teacher-w64/best.pt model.name=cnn_w8 method.name=kd method.temperature=4\n"
    "  darkknowledge distill --config cifar100_kd teacher.checkpoint=runs/r32x4/best.pt method.name=dkd method.nckd_weight=8\n"
    "  darkknowledge distill teacher.checkpoint=runs/r110/last.pt model.name=resnet8 --assistant resnet32   # TAKD",
    add_args=_add_distill,
)
def cmd_distill(args) -> int:
    return _run_training(args, base={"method": {"name": "kd"}}, inherit_teacher_data=True)


# ---------------------------------------------------------------------------- evaluate
def _add_evaluate(p):
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


@command(
    "evaluate",
    "evaluate a checkpoint on a dataset split (top-1, top-5, NLL, ECE)",
    "darkknowledge evaluate runs/teacher-w64/best.pt\n  darkknowledge evaluate runs/r56/best.pt data.name=cifar100 data.root=/data/cifar --split train",
    add_args=_add_evaluate,
)
def cmd_evaluate(args) -> int:
    from darkknowledge.data.loader import eval_batches
    from darkknowledge.engine.assembly import build_split, check_teacher_fits, checkpoint_data_config, resolve_device
    from darkknowledge.engine.checkpoint import load_model
    from darkknowledge.engine.metrics import evaluate

    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    d = checkpoint_data_config(ckpt, args.overrides, "evaluate")
    ds = build_split(d, args.split)
    check_teacher_fits(ckpt, ds.spec, args.checkpoint)
    metrics = evaluate(model, eval_batches(ds, d.eval_batch_size, device), args.precision)
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "model": ckpt["model_name"],
                "dataset": d.name,
                "split": args.split,
                **metrics,
            },
            indent=2,
        )
    )
    return 0


# ---------------------------------------------------------------------------- listings
def _add_methods(p):
    p.add_argument("name", nargs="?", help="show one method only")


@command(
    "methods",
    "list distillation methods with their parameters and defaults",
    "darkknowledge methods\n  darkknowledge methods isats",
    add_args=_add_methods,
)
def cmd_methods(args) -> int:
    from darkknowledge.methods import METHODS, describe_params

    names = [args.name] if args.name else METHODS.names()
    for name in names:
        cls = METHODS.get(name)
        print(f"{name}: {cls.summary}" + ("" if cls.needs_teacher else "  [no teacher]"))
        for pname, ptype, default, desc in describe_params(cls):
            print(f"    method.{pname}: {ptype} = {default!r}  -- {desc}")
    return 0


def _add_models(p):
    p.add_argument("--num-classes", type=int, default=100, help="classes of the counted models (default 100)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels of the counted models (default 3)")


@command(
    "models",
    "list the model zoo with parameter counts",
    "darkknowledge models --num-classes 10 --in-channels 1",
    add_args=_add_models,
)
def cmd_models(args) -> int:
    import re

    from darkknowledge.experiments import load_spec, resolve_spec_path
    from darkknowledge.models import build_model, count_parameters, model_names, model_patterns

    def row(name: str) -> str:
        model = build_model(name, num_classes=args.num_classes, in_channels=args.in_channels)
        return f"  {name:16s} {count_parameters(model) / 1e6:8.3f}M"

    def natural(name: str) -> list:  # cnn_w4 before cnn_w16
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    channels = "channel" if args.in_channels == 1 else "channels"
    print(
        f"Parameter counts for {args.num_classes} classes and {args.in_channels} input {channels} "
        f"(--num-classes, --in-channels)."
    )
    registered = sorted(model_names(), key=natural)
    print("\nRegistered models:")
    for name in registered:
        print(row(name))
    print("\nFamilies: model.name accepts any name of these forms, not only the sizes registered above:")
    for family in model_patterns():
        print(f"  {family}")
    # the demo's sizes are not all registered: show them as examples of the families
    demo = load_spec(resolve_spec_path("demo"))
    examples = [name for name in [demo.student.model, *(t.model for t in demo.teachers)] if name not in registered]
    if examples:
        print("Examples of family members (used by `darkknowledge demo`):")
        for name in examples:
            print(row(name))
    return 0


def _add_datasets(p):
    pass


@command("datasets", "list the dataset readers", "darkknowledge datasets", add_args=_add_datasets)
def cmd_datasets(args) -> int:
    from darkknowledge.data import DATASETS

    for name in DATASETS.names():
        doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}")
    return 0


def _add_configs(p):
    pass


@command("configs", "list the bundled config presets", "darkknowledge configs", add_args=_add_configs)
def cmd_configs(args) -> int:
    from darkknowledge.config import bundled_configs

    for name in bundled_configs():
        print(name)
    return 0


# ---------------------------------------------------------------------------- demo
def _add_demo(p):
    p.add_argument(
        "--out", default="runs/demo", help="output directory (must not hold a previous demo unless --overwrite)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's setting)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")


@command(
    "demo",
    "offline demo: a teacher ladder, KD students and a CE baseline on sklearn digits (~minutes)",
    "darkknowledge demo\n  darkknowledge demo --out runs/demo2 --epochs 20",
    add_args=_add_demo,
)
def cmd_demo(args) -> int:
    from darkknowledge.demo import run_demo

    run_demo(out_dir=args.out, epochs=args.epochs, overwrite=args.overwrite)
    return 0


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from darkknowledge import __version__

    parser = argparse.ArgumentParser(
        prog="darkknowledge",
        description="Knowledge distillation under teacher-student capacity mismatch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  darkknowledge demo\n  darkknowledge distill --help",
    )
    parser.add_argument("--version", action="version", version=f"darkknowledge {__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: it registers your own methods, models or datasets (repeatable; see docs/plugins.md)",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (help_text, example, add_args, _) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_args(p)
    return parser


def _load_plugins() -> None:
    """Built-in sub-commands that live next to their feature (diagnose, bench, cache,
    sweep); users' plugins are loaded by ``--plugin`` and :mod:`darkknowledge.plugins`."""
    import importlib

    for mod in (
        "darkknowledge.cli.diagnose",
        "darkknowledge.cli.bench",
        "darkknowledge.cli.cache",
        "darkknowledge.cli.sweep",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


INTERRUPTED = "interrupted (a run continues from its last checkpoint with --resume)"


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a Ctrl-C (KeyboardInterrupt in its context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__ or exc.__cause__
    return False


def main(argv: list[str] | None = None) -> int:
    _load_plugins()
    parser = build_parser()
    # overrides may come after options (`evaluate ckpt --split train data.x=1`); argparse leaves
    # positionals that follow an option unparsed, so collect them into the overrides
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides or []) + extra
    if not args.command:
        parser.print_help()
        return 2
    handler = COMMANDS[args.command][3]
    try:
        load_plugins(args.plugin)
        return handler(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # `darkknowledge models | head`: stop quietly, as other CLI tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        return 141
    except OSError as exc:
        if _interrupted(exc):
            print(INTERRUPTED, file=sys.stderr)
            return 130
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot use{where}: {exc.strerror or exc}; choose a path you can write to", file=sys.stderr)
        return UserError.exit_code
    except Exception as exc:
        if _interrupted(exc):  # Ctrl-C inside a library call that turned it into another error (e.g. torch.save)
            print(INTERRUPTED, file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":  # pragma: no cover
    # sub-commands register into the imported module, not into this __main__ copy of it
    from darkknowledge.cli.main import main as registered_main

    sys.exit(registered_main())
