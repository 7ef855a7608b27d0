"""Validate `darkknowledge tune` against committed capacity sweeps (issue 20, deliverable 2).

For each case of the spec (benchmarks/tune_validation.yaml): a student and a candidate set of
(teacher, method configuration) whose every member a capacity sweep ran over 3 seeds. Tune
searches exactly those configurations (as choices) on the validation split with a fraction of
the sweep's compute for the candidate set, once per sampler. A choice *succeeds* when its test
top-1 in the sweep (best-on-validation checkpoint, mean over seeds) is within one seed standard
deviation of the best-on-test configuration's mean. "Always KD at T = 4 from the largest
candidate teacher" is the naive baseline.

    .venv/bin/python benchmarks/tune_validation.py benchmarks/tune_validation.yaml [--cases a,b]

Resumable across machines: trial stages leave records (spec `records`), each study journal is
copied to spec `studies` after each tune; a fresh clone retrains the teachers (deterministic given
the machine kind; a differently trained teacher only means its trials run again) and goes on.
Results: docs/tune_validation/results.md and results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from darkknowledge.config import deep_merge, read_yaml, validate_config
from darkknowledge.experiments.executors import InlineExecutor
from darkknowledge.experiments.spec import parse_spec
from darkknowledge.experiments.tune import STUDY_FILE, Tune, parse_tune_spec
from darkknowledge.methods import METHODS
from darkknowledge.runs import train

OUT_DOCS = Path("docs/tune_validation")


def ground_truth(results_csv: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(teacher label, method label) -> params and per-seed test top-1 of the best-on-validation checkpoint."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            entry = table.setdefault(
                (row["teacher"], row["method"]),
                {
                    "params": json.loads(row["method_params"]),
                    "teacher_params": int(row["teacher_params"] or 0),
                    "test": [],
                    "val": [],
                },
            )
            entry["test"].append(float(row["best_top1"]))
            entry["val"].append(float(row["best_val_top1"]))
    for entry in table.values():
        entry["mean"] = statistics.mean(entry["test"])
        entry["std"] = statistics.stdev(entry["test"]) if len(entry["test"]) > 1 else 0.0
    return table


def method_search(name: str, labels: list[str], truth: dict, teacher: str) -> dict[str, Any]:
    """Tune's search entry for method ``name`` whose configurations are the sweep's ``labels``."""
    defaults = METHODS.get(name).Params().model_dump()
    params = [{k: v for k, v in truth[(teacher, label)]["params"].items() if k != "name"} for label in labels]
    keys = sorted({k for p in params for k in p})
    space: dict[str, Any] = {}
    for key in keys:
        values = sorted({p.get(key, defaults[key]) for p in params})
        space[key] = values[0] if len(values) == 1 else {"choices": values}
    return {"name": name, "params": space}


def label_of(chosen: dict[str, Any], case: dict[str, Any], truth: dict) -> str:
    """The sweep's method label of tune's choice."""
    defaults = METHODS.get(chosen["method"]).Params().model_dump()
    want = {**defaults, **chosen["params"]}
    for label in case["methods"][chosen["method"]]:
        given = {k: v for k, v in truth[(chosen["teacher"], label)]["params"].items() if k != "name"}
        if {**defaults, **given} == want:
            return label
    raise SystemExit(f"error: tune chose {chosen}, which is none of the case's configurations")


def train_teachers(ladder: dict[str, Any], out: Path, log) -> dict[str, str]:
    """Train the ladder's teachers as its sweep does (fp32); label -> checkpoint."""
    sweep = parse_spec(read_yaml(ladder["spec"]), source=ladder["spec"])
    paths: dict[str, str] = {}
    for t in sweep.teachers:
        if t.label not in ladder["teachers"]:
            continue
        keep = sorted({u.epoch for u in sweep.teachers if u.model == t.model and u.config == t.config and u.epoch})
        name = f"{t.model}-{json.dumps(t.config, sort_keys=True)}"
        run = out / "teachers" / "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]
        config = deep_merge(deep_merge(deep_merge(sweep.base, sweep.teacher_config), t.config), {})
        config = deep_merge(
            config,
            {
                "model": {"name": t.model},
                "method": config.get("method") or {"name": "ce"},
                "seed": sweep.teacher_seed,
                "engine": {"precision": "fp32", "progress": False, "keep_epochs": keep},
                "output_dir": str(run.parent),
                "name": run.name,
            },
        )
        if not (run / "summary.json").is_file():
            log(f"training teacher {t.label} ({t.model}) in {run}")
            train(validate_config(config, source=f"teacher {t.label}"), resume=(run / "last.pt").is_file())
        paths[t.label] = str(run / (f"epoch-{t.epoch}.pt" if t.epoch else f"{sweep.teacher_checkpoint}.pt"))
    return paths


def tune_spec(case: dict, ladder: dict, spec: dict, checkpoints: dict[str, str], truth: dict, sampler: str) -> dict:
    sweep = read_yaml(ladder["spec"])
    base = deep_merge(sweep["base"], {"engine": {"precision": "fp32"}})
    n_configs = len(case["teachers"]) * sum(len(v) for v in case["methods"].values())
    epochs = validate_config(base).optim.epochs
    budget = int(spec["budget_fraction"] * n_configs * 3 * epochs)
    any_teacher = case["teachers"][0]
    return {
        "base": base,
        "teachers": [{"checkpoint": checkpoints[t], "label": t} for t in case["teachers"]],
        "teacher_cache": sweep.get("teacher_cache", False),
        "student": sweep["student"],
        "search": {
            **spec["search"],
            "sampler": sampler,
            "budget_epochs": max(budget, epochs),
            "methods": [method_search(m, labels, truth, any_teacher) for m, labels in case["methods"].items()],
        },
    }


def evaluate_case(case: dict, truth: dict, chosen: dict | None) -> dict[str, Any]:
    configs = [(t, label) for t in case["teachers"] for labels in case["methods"].values() for label in labels]
    best = max(configs, key=lambda c: truth[c]["mean"])
    plain = [t for t in case["teachers"] if (t, "kd") in truth and "-" not in t] or case["teachers"]
    largest = max(plain, key=lambda t: truth[(t, "kd")]["teacher_params"] if (t, "kd") in truth else 0)
    kd = (largest, "kd") if (largest, "kd") in truth else None

    def score(config: tuple[str, str] | None) -> dict[str, Any] | None:
        if config is None:
            return None
        gap = truth[best]["mean"] - truth[config]["mean"]
        return {
            "teacher": config[0],
            "method": config[1],
            "test_mean": truth[config]["mean"],
            "test_std": truth[config]["std"],
            "gap_to_best": gap,
            "within_one_std": gap <= truth[best]["std"],
        }

    return {"best": score(best), "kd_t4_largest": score(kd), "configs": len(configs), "chosen": chosen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    out = Path(spec["out"])
    studies = Path(spec["studies"])
    studies.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    wanted = set(args.cases.split(",")) if args.cases else None
    results_path = OUT_DOCS / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for case in spec["cases"]:
        if wanted and case["name"] not in wanted:
            continue
        ladder = spec["ladders"][case["ladder"]]
        truth = ground_truth(ladder["results"])
        checkpoints = train_teachers(ladder, out / case["ladder"], log)
        row = results.setdefault(case["name"], {})
        for sampler in spec["samplers"]:
            run_dir = out / f"{case['name']}-{sampler}"
            journal = studies / f"{case['name']}-{sampler}.journal"
            if journal.is_file() and not (run_dir / STUDY_FILE).is_file():
                run_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(journal, run_dir / STUDY_FILE)
            parsed = parse_tune_spec(tune_spec(case, ladder, spec, checkpoints, truth, sampler), source=case["name"])
            # records per case and sampler: no search reuses another's trials (each pays its own compute;
            # reused rungs cost a tune no budget)
            records = Path(spec["records"]) / case["name"] / sampler
            tune = Tune(parsed, run_dir, InlineExecutor(log=log), log=log, records=records)
            t0 = time.perf_counter()
            result = tune.run()
            shutil.copy(run_dir / STUDY_FILE, journal)
            label = label_of(result["chosen"], case, truth)
            row[sampler] = {
                "chosen": {"teacher": result["chosen"]["teacher"], "method": label},
                "val_top1": result["val"],
                "student_epochs": result["compute"]["student_epochs"],
                "budget_epochs": result["compute"]["budget_epochs"],
                "trials": result["compute"]["trials"],
                "wall_s": time.perf_counter() - t0,
            }
        row.update(evaluate_case(case, truth, None))
        for sampler in spec["samplers"]:
            chosen = row[sampler]["chosen"]
            gap = (
                truth[(row["best"]["teacher"], row["best"]["method"])]["mean"]
                - truth[(chosen["teacher"], chosen["method"])]["mean"]
            )
            row[sampler].update(
                {"test_mean": truth[(chosen["teacher"], chosen["method"])]["mean"], "gap_to_best": gap,
                 "within_one_std": gap <= row["best"]["test_std"]}
            )  # fmt: skip
        row.pop("chosen", None)
        OUT_DOCS.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        (OUT_DOCS / "results.md").write_text(markdown(results, spec))
        log(markdown(results, spec))
    return 0


def markdown(results: dict, spec: dict) -> str:
    lines = [
        "# Validation of `darkknowledge tune`",
        "",
        "Generated by `benchmarks/tune_validation.py benchmarks/tune_validation.yaml` (its docstring says how).",
        f"Tune budget: {int(100 * spec['budget_fraction'])} % of the sweep's compute for each candidate set; success:",
        "the choice's test top-1 in the sweep (best-on-validation checkpoint, mean over its seeds) within one seed",
        "standard deviation of the best-on-test configuration's.",
        "",
        "| case | configs | best on test (mean ± std) | TPE choice (gap) | random choice (gap) | KD T=4, largest teacher (gap) |",
        "|---|---:|---|---|---|---|",
    ]
    counts = {s: 0 for s in spec["samplers"]} | {"kd": 0}
    done = 0
    for name, row in results.items():
        if not all(s in row for s in spec["samplers"]) or "best" not in row:
            continue
        done += 1
        b = row["best"]

        def cell(entry: dict | None) -> str:
            if not entry:
                return "n/a"
            ok = "✓" if entry["within_one_std"] else "✗"
            teacher, method = (
                (entry["chosen"]["teacher"], entry["chosen"]["method"])
                if "chosen" in entry
                else (entry["teacher"], entry["method"])
            )
            return f"{method} from {teacher}: {entry['test_mean']:.2f} ({-entry['gap_to_best']:+.2f}) {ok}"

        for s in spec["samplers"]:
            counts[s] += bool(row[s]["within_one_std"])
        counts["kd"] += bool(row["kd_t4_largest"] and row["kd_t4_largest"]["within_one_std"])
        lines.append(
            f"| {name} | {row['configs']} | {b['method']} from {b['teacher']}: {b['test_mean']:.2f} ± {b['test_std']:.2f} | "
            f"{cell(row.get('tpe'))} | {cell(row.get('random'))} | {cell(row['kd_t4_largest'])} |"
        )
    lines += [
        "",
        f"Within one seed std: TPE {counts.get('tpe', 0)} of {done}, random {counts.get('random', 0)} of {done}, "
        f"KD T=4 from the largest teacher {counts['kd']} of {done}.",
        "",
        "| case | sampler | student epochs used / budget | trials | validation top-1 of the choice | wall (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        for s in spec["samplers"]:
            if s in row:
                r = row[s]
                lines.append(
                    f"| {name} | {s} | {r['student_epochs']} / {r['budget_epochs']} | {r['trials']} | {r['val_top1']:.2f} | {r['wall_s']:.0f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
