"""Re-key a spec's committed records after the key rule or the config's shape changed.

``python -m darkknowledge.experiments.migrate SPEC.yaml [--check]``

The spec's stage graph is built with the current code; stages are visited in topological
order and each is matched to the record of its name. A record is re-keyed only when it is
provably the same run: its stored config, read through the current ``RunConfig``, has the
stage's identity, and each of its inputs is the stage's input (a producer's record re-keyed
before it, or the same weight digest). Then its key, input references and identity config are
rewritten and the file renamed ``<name>-<new key[:8]>.json``. Records that do not match are
left as they are and listed. Running it again changes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from darkknowledge.errors import UserError
from darkknowledge.experiments.graph import StageSpec
from darkknowledge.experiments.identity import INPUT_PLACEHOLDER
from darkknowledge.experiments.kinds import KINDS, place_run_inputs
from darkknowledge.experiments.stage import read_json
from darkknowledge.fileio import atomic_write_json


def _legacy_config(config: dict[str, Any], kind: str, inputs: dict[str, str]) -> dict[str, Any]:
    """A stored config as the current rules read it: the record's inputs at their fields (an
    identity config leaves paths out); ``engine.keep_epochs`` beyond the run's epochs never wrote
    a file (accepted silently then, refused now): dropped; a cache stage's own cache path was
    filled in only when its job ran: its placeholder is added."""
    if kind != "diagnose":
        config = place_run_inputs(config, dict.fromkeys(inputs, INPUT_PLACEHOLDER))
    teacher = config.get("teacher") or {}
    if kind == "cache" and not teacher.get("cache"):
        config = {**config, "teacher": {**teacher, "cache": INPUT_PLACEHOLDER}}
    engine, optim = config.get("engine") or {}, config.get("optim") or {}
    if engine.get("keep_epochs") and optim.get("epochs"):
        kept = [e for e in engine["keep_epochs"] if 1 <= e <= optim["epochs"]]
        config = {**config, "engine": {**engine, "keep_epochs": kept}}
    return config


def _inputs_match(node: StageSpec, old: dict[str, str], rekeyed: dict[str, str]) -> str | None:
    """Why the record's inputs are not the stage's (None: they are)."""
    for role, ident in node.input_identities().items():
        recorded = old.get(role)
        if recorded is None:
            if role == "cache":  # caches were not a key input before: the teacher input identifies it
                continue
            return f"no {role} input"
        if ident.startswith("stage:"):
            key, _, output = ident.removeprefix("stage:").partition("/")
            old_key, _, old_output = recorded.removeprefix("stage:").partition("/")
            if not recorded.startswith("stage:") or old_output != output or rekeyed.get(old_key) != key:
                return f"{role} input {recorded} is not {ident}"
        elif recorded != ident:
            return f"{role} input {recorded} is not {ident}"
    extra = set(old) - set(node.inputs)
    return f"inputs {sorted(extra)} that the stage does not have" if extra else None


def rekey_records(spec_path: str | Path, write: bool = True, log=print) -> dict[str, Any]:
    """Re-key the records of a spec (see the module doc); return counts and the unmatched files."""
    from darkknowledge.experiments import open_sweep

    sweep = open_sweep(str(spec_path), log=log)
    records = sweep.store.records
    if records is None or not records.is_dir():
        raise UserError(f"{spec_path} keeps no records directory")
    by_name: dict[str, list[Path]] = {}
    for p in sorted(records.glob("*.json")):
        by_name.setdefault(p.stem.rsplit("-", 1)[0], []).append(p)
    rekeyed: dict[str, str] = {}  # old key -> new key
    changed, kept, problems = 0, 0, []
    used: set[Path] = set()
    for node in sweep.graph.nodes:
        reasons = []
        for path in by_name.get(node.name, []):
            rec = read_json(path)
            if not isinstance(rec, dict) or rec.get("kind") != node.kind.value or not isinstance(rec.get("key"), str):
                continue
            try:
                identity = KINDS[node.kind.value].identity(
                    _legacy_config(rec.get("config") or {}, node.kind.value, rec.get("inputs") or {})
                )
            except UserError as exc:
                reasons.append(f"{path.name}: config no longer valid ({exc})")
                continue
            if identity != node.identity:
                reasons.append(f"{path.name}: another configuration")
                continue
            why = _inputs_match(node, rec.get("inputs") or {}, rekeyed)
            if why is not None:
                reasons.append(f"{path.name}: {why}")
                continue
            rekeyed[rec["key"]] = node.key
            used.add(path)
            target = records / f"{node.name}-{node.key[:8]}.json"
            if rec["key"] == node.key and path == target:
                kept += 1
                break
            new = {**rec, "key": node.key, "inputs": node.input_identities(), "config": node.identity}
            if isinstance(rec.get("result"), dict):
                new["result"] = {**rec["result"], "key": node.key}
            if write:
                atomic_write_json(target, new)
                if path != target:
                    path.unlink()
            changed += 1
            log(f"{path.name} -> {target.name}")
            break
        else:
            if reasons:
                problems.append(f"{node.name}: " + "; ".join(reasons))
    unmatched = [str(p) for paths in by_name.values() for p in paths if p not in used]
    for line in problems:
        log(f"not re-keyed: {line}")
    return {"rekeyed": changed, "unchanged": kept, "unmatched": unmatched, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m darkknowledge.experiments.migrate SPEC.yaml [--check]", file=sys.stderr)
        return 2
    try:
        out = rekey_records(args[0], write="--check" not in args[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v if k in ("rekeyed", "unchanged") else len(v) for k, v in out.items()}))
    return 0 if not out["unmatched"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
