"""A sub-command of the ``darkknowledge`` command line: its help, an example, its options and its handler.

Handlers parse and print only: the work is done by :mod:`darkknowledge.runs`,
:mod:`darkknowledge.experiments` and the other library layers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


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
