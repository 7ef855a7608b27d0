"""``darkknowledge tune SPEC.yaml``: choose teacher, method and parameters on the validation split."""

from __future__ import annotations

import argparse
import json

from darkknowledge.cli.command import Command, executor_args, submitit_params


def _add_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="tune spec YAML (see docs/tune.md)")
    p.add_argument("--out", help="tune directory (default: runs/tune/<spec name>)")
    executor_args(p, None, "trials side by side (default: search.jobs)")


def _tune(args: argparse.Namespace) -> int:
    from darkknowledge.experiments.tune import open_tune, result_markdown

    if args.jobs is not None and args.jobs < 1:
        from darkknowledge.errors import UserError

        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    tune = open_tune(
        args.spec,
        args.out,
        executor=args.executor,
        jobs=args.jobs,
        cluster=args.cluster,
        submitit_params=submitit_params(args.submitit_param),
    )
    result = tune.run()
    print(result_markdown(result))
    print(json.dumps({"out": str(tune.out), "result": str(tune.out / "tune.json")}, indent=2))
    return 0


TUNE = Command(
    "choose teacher, method and its parameters for a student on the validation split, within a budget (Optuna, successive halving)",
    "darkknowledge tune my_tune.yaml --out runs/tune1\n  darkknowledge tune my_tune.yaml --jobs 2",
    _add_tune,
    _tune,
)
