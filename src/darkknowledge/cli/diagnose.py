"""``darkknowledge diagnose``: dark-knowledge diagnostics of a teacher ladder (and students)."""

from __future__ import annotations

import json
import math
import sys

from darkknowledge.cli.command import Command
from darkknowledge.errors import UserError


def _add_diagnose(p):
    p.add_argument(
        "--teacher",
        "-t",
        action="append",
        default=[],
        metavar="CKPT",
        help="teacher checkpoint (repeat for a ladder, smallest first or any order: sorted by size)",
    )
    p.add_argument(
        "--student", "-s", action="append", default=[], metavar="CKPT", help="student checkpoint (repeatable)"
    )
    p.add_argument(
        "--logits",
        metavar="FILE",
        help="diagnose a .npy/.npz of logits instead of checkpoints (see docs/diagnostics.md)",
    )
    p.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="DIR",
        help="diagnose language-model teachers from their top-k caches of one corpus (repeat, smallest first)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="data.key=value", help="dataset (default: the first teacher's training data)"
    )
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default="train",
        help="split to diagnose (default train: what distillation sees)",
    )
    p.add_argument("--temperatures", default=None, help="comma-separated temperatures, e.g. 1,2,4,8")
    p.add_argument("--out", default="runs/diagnose", help="output directory (diagnostics.json, CSV, PNG, report.html)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots (JSON/CSV/HTML only)")
    p.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="diagnose the first N rows only (language models: predicted tokens; default 16384 there, all images)",
    )
    p.add_argument(
        "--tuned",
        metavar="TUNE_JSON",
        help="a `darkknowledge tune` result: the chosen teacher's card recommends its choice",
    )


def _diagnose(args) -> int:
    from darkknowledge.diagnostics import DiagnoseOptions, diagnose_from_logits_file
    from darkknowledge.diagnostics.report import check_report_dir
    from darkknowledge.runs.diagnose import diagnose_checkpoints

    opts = DiagnoseOptions(plots=not args.no_plots)
    if args.temperatures:
        try:
            opts.temperatures = tuple(float(t) for t in args.temperatures.split(","))
        except ValueError:
            raise UserError(f"--temperatures must be comma-separated numbers, got {args.temperatures!r}") from None
        if not all(math.isfinite(t) and t > 0 for t in opts.temperatures):
            raise UserError(f"--temperatures must be positive finite numbers, got {args.temperatures!r}")
    check_report_dir(args.out)
    if args.max_rows is not None and args.max_rows < 1:
        raise UserError(f"--max-rows must be at least 1, got {args.max_rows}")
    if sum(map(bool, (args.logits, args.cache, args.teacher))) > 1:
        raise UserError("diagnose one kind of source at a time: --teacher CKPT, --logits FILE or --cache DIR")
    if args.logits:
        result = diagnose_from_logits_file(args.logits, out_dir=args.out, options=opts)
    elif args.cache:
        from darkknowledge.runs.diagnose import diagnose_lm_caches

        result = diagnose_lm_caches(args.cache, out_dir=args.out, options=opts, max_rows=args.max_rows)
    else:
        if not args.teacher:
            raise UserError("give at least one --teacher CKPT (or --logits FILE, or --cache DIR)")
        result = diagnose_checkpoints(
            args.teacher,
            args.student,
            args.overrides,
            split=args.split,
            out_dir=args.out,
            options=opts,
            device=args.device,
            tuned=args.tuned,
            max_rows=args.max_rows,
        )
    for card in result.cards:
        print(card.to_text())
        print()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "files": result.files}, indent=2))
    return 0


DIAGNOSE = Command(
    "diagnose teachers' dark knowledge: non-target variance vs capacity/temperature, rank consistency, angles, decompositions, report card",
    "darkknowledge diagnose -t runs/demo/teacher-mlp_h64/last.pt -t runs/demo/teacher-mlp_h1024/last.pt --out runs/diag\n"
    "  darkknowledge diagnose -t r56.pt -t r110.pt -s r20.pt data.name=cifar100 data.root=/data/cifar --temperatures 1,2,4,8\n"
    "  darkknowledge diagnose --cache runs/lm/runs/cache-lm_d96_l3-*/cache --cache runs/lm/runs/cache-lm_d256_l4-*/cache",
    _add_diagnose,
    _diagnose,
)
