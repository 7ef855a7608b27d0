"""A sub-command of the ``darkknowledge`` command line: its help, an example, its options and its handler.

Handlers parse and print only: the work is done by :mod:`darkknowledge.runs`,
:mod:`darkknowledge.experiments` and the other library layers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def config_args(p: argparse.ArgumentParser) -> None:
    """A run configuration: a YAML file or preset plus ``key.sub=value`` overrides."""
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. optim.lr=0.1 method.temperature=2"
    )
    p.add_argument("--config", "-c", help="YAML config file or bundled preset name (see `darkknowledge configs`)")
    p.add_argument("--resume", action="store_true", help="continue the run in its run directory from last.pt")


def no_args(p: argparse.ArgumentParser) -> None:
    pass


def executor_args(p: argparse.ArgumentParser, jobs_default: int | None, jobs_help: str) -> None:
    """Where stages run: ``--jobs``, ``--executor``, ``--cluster``, ``--submitit-param`` (sweep, tune)."""
    p.add_argument("--jobs", "-j", type=int, default=jobs_default, help=jobs_help)
    p.add_argument(
        "--executor",
        choices=["auto", "inline", "local", "submitit"],
        default="auto",
        help="inline: in this process; local: subprocesses; submitit: SLURM job arrays (auto: inline for 1 job, else local)",
    )
    p.add_argument("--cluster", default=None, help="submitit cluster: slurm (default where available), local, debug")
    p.add_argument(
        "--submitit-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit executor parameter, e.g. timeout_min=120 slurm_partition=gpu cpus_per_task=4 (repeatable)",
    )


def submitit_params(items: list[str]) -> dict[str, Any]:
    """``--submitit-param KEY=VALUE`` items as a dict (values parsed as YAML scalars)."""
    import yaml

    from darkknowledge.errors import UserError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--submitit-param {item!r} is not KEY=VALUE (e.g. timeout_min=60)")
        params[key] = yaml.safe_load(value)
    return params
