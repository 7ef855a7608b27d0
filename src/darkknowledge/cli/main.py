"""The ``darkknowledge`` command line: parsing, the table of sub-commands, and error reporting.

Every sub-command parses and prints; the work is done by the library (:mod:`darkknowledge.runs`,
:mod:`darkknowledge.experiments`, ...). A :class:`UserError` anywhere prints ``error: <one line>``
and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from darkknowledge.cli import bench, cache, catalog, diagnose, runs, sweep, tune
from darkknowledge.cli.command import Command
from darkknowledge.errors import UserError
from darkknowledge.plugins import load_plugins

COMMANDS: dict[str, Command] = {
    "train": runs.TRAIN,
    "distill": runs.DISTILL,
    "evaluate": runs.EVALUATE,
    "sweep": sweep.SWEEP,
    "tune": tune.TUNE,
    "diagnose": diagnose.DIAGNOSE,
    "cache": cache.CACHE,
    "bench": bench.BENCH,
    "demo": runs.DEMO,
    "methods": catalog.METHODS,
    "models": catalog.MODELS,
    "datasets": catalog.DATASETS,
    "configs": catalog.CONFIGS,
}


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
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=f"example:\n  {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_args(p)
    return parser


INTERRUPTED = "interrupted (a run continues from its last checkpoint with --resume)"


def _interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised while handling a Ctrl-C (KeyboardInterrupt in its context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__ or exc.__cause__
    return False


def main(argv: list[str] | None = None) -> int:
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
    try:
        load_plugins(args.plugin)
        return COMMANDS[args.command].run(args) or 0
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
    sys.exit(main())
