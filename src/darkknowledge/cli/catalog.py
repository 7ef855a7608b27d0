"""``darkknowledge methods|models|datasets|configs``: what a config can name."""

from __future__ import annotations

import argparse

from darkknowledge.cli.command import Command, no_args


def _add_methods(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show one method only")


def _methods(args: argparse.Namespace) -> int:
    from darkknowledge.runs.catalog import method_rows

    for row in method_rows(args.name):
        print(f"{row['name']}: {row['summary']}" + ("" if row["needs_teacher"] else "  [no teacher]"))
        for pname, ptype, default, desc in row["params"]:
            print(f"    method.{pname}: {ptype} = {default!r}  -- {desc}")
    return 0


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=int, default=100, help="classes of the counted models (default 100)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels of the counted models (default 3)")


def _models(args: argparse.Namespace) -> int:
    from darkknowledge.runs.catalog import model_rows

    rows = model_rows(args.num_classes, args.in_channels)
    channels = "channel" if args.in_channels == 1 else "channels"
    print(
        f"Parameter counts for {args.num_classes} classes and {args.in_channels} input {channels} "
        f"(--num-classes, --in-channels)."
    )
    print("\nRegistered models:")
    for name, count in rows["registered"]:
        print(f"  {name:16s} {count / 1e6:8.3f}M")
    print("\nFamilies: model.name accepts any name of these forms, not only the sizes registered above:")
    for family in rows["families"]:
        print(f"  {family}")
    if rows["examples"]:
        print("Examples of family members (used by `darkknowledge demo`):")
        for name, count in rows["examples"]:
            print(f"  {name:16s} {count / 1e6:8.3f}M")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from darkknowledge.runs.catalog import dataset_rows

    for name, line in dataset_rows():
        print(f"{name:16s} {line}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from darkknowledge.config import bundled_configs

    for name in bundled_configs():
        print(name)
    return 0


METHODS = Command(
    "list distillation methods with their parameters and defaults",
    "darkknowledge methods\n  darkknowledge methods isats",
    _add_methods,
    _methods,
)
MODELS = Command(
    "list the model zoo with parameter counts",
    "darkknowledge models --num-classes 10 --in-channels 1",
    _add_models,
    _models,
)
DATASETS = Command("list the dataset readers", "darkknowledge datasets", no_args, _datasets)
CONFIGS = Command("list the bundled config presets", "darkknowledge configs", no_args, _configs)
