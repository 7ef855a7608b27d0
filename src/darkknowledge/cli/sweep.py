"""``darkknowledge sweep SPEC.yaml``: a capacity sweep (teachers x methods x seeds)."""

from __future__ import annotations

import json

from darkknowledge.cli.command import Command, executor_args, submitit_params
from darkknowledge.errors import UserError


def _add_sweep(p):
    p.add_argument("spec", help="sweep spec YAML (see docs/experiments.md), or a bundled spec name (e.g. demo)")
    p.add_argument("--out", help="sweep directory (default: runs/sweeps/<spec name>)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan: what this invocation would run, reuse or skip, and why (nothing is run or written)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print each stage's state (done / recorded / failed / partial / pending / waiting / blocked) with log paths",
    )
    p.add_argument("--report", action="store_true", help="only (re)write the results files from the finished stages")
    executor_args(p, 1, "stages run at once (local executor: cores/N threads each)")
    p.add_argument(
        "--no-retry-failed", action="store_true", help="leave failed stages failed instead of running them again"
    )


def _print_rows(rows: list[dict[str, str]], first: str) -> None:
    width = max(len(r["stage"]) for r in rows)
    for r in rows:
        print(f"{r[first]:8s} {r['kind']:9s} {r['stage']:{width}s}  {r['detail']}")


def cmd_sweep(args) -> int:
    from darkknowledge.experiments import open_sweep

    if args.dry_run and (args.status or args.report):
        raise UserError("--dry-run prints the plan; give it alone (not with --status or --report)")
    sweep = open_sweep(
        args.spec,
        args.out,
        executor=args.executor,
        jobs=args.jobs,
        cluster=args.cluster,
        submitit_params=submitit_params(args.submitit_param),
    )
    if args.dry_run:
        rows = sweep.plan_rows(retry_failed=not args.no_retry_failed)
        _print_rows(rows, "action")
        actions: dict[str, int] = {}
        for r in rows:
            actions[r["action"]] = actions.get(r["action"], 0) + 1
        print(json.dumps(actions))
        return 0
    if args.status:
        _print_rows(sweep.status_rows(), "state")
        print(json.dumps(sweep.counts()))
        return 0
    if not args.report:
        counts = sweep.run(retry_failed=not args.no_retry_failed)
    else:
        counts = sweep.counts()
    from darkknowledge.experiments.results import write_results

    written = write_results(sweep)
    print(written["table"])
    print(json.dumps({"out": str(sweep.out), "stages": counts, "files": written["files"]}, indent=2))
    return 0 if not counts.get("failed") and not counts.get("blocked") else 1


# the CLI's table of sub-commands (cli/main.py) names this
SWEEP = Command(
    "run a capacity sweep: train a teacher ladder, distil the student with every method over seeds, write tables and plots",
    "darkknowledge sweep demo --out runs/demo-sweep\n"
    "  darkknowledge sweep my_sweep.yaml --jobs 2\n"
    "  darkknowledge sweep my_sweep.yaml --dry-run\n"
    "  darkknowledge sweep my_sweep.yaml --status\n"
    "  darkknowledge sweep my_sweep.yaml --executor submitit --submitit-param timeout_min=120 --submitit-param slurm_partition=gpu",
    _add_sweep,
    cmd_sweep,
)
