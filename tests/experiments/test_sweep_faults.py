"""Faults of the experiments layer (docs/faults.md): each bad input is one ``error:`` line,
exit status 2 and an unchanged tree; tampered records warn and name the file; killed
sweep parents leave no workers behind and a rerun recovers their stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from darkknowledge.cli.main import main
from support import BASE, quiet, write_spec


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _user_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


SMALL = {"teachers": [{"model": "mlp_h32"}], "methods": [{"name": "kd"}], "seeds": [0]}


def _case(name: str, tmp_path: Path, request) -> tuple[list[str], str]:
    """Set up one bad input under tmp_path; return (the command's arguments, the expected message)."""
    spec = tmp_path / "s.yaml"
    out = tmp_path / "out"
    if name == "report-on-user-results":
        d = _user_dir(tmp_path, {"results.csv": "my,own\n1,2\n", "results.md": "# my notes\n"})
        write_spec(spec, **SMALL)
        return [str(spec), "--out", str(d), "--report"], "holds files that no sweep wrote (no sweep.json)"
    if name in ("user-sweep-json-run", "user-sweep-json-report"):
        d = _user_dir(tmp_path, {"sweep.json": json.dumps({"sweep": "my own", "lr": [0.1, 0.2]})})
        write_spec(spec, **SMALL)
        extra = ["--report"] if name.endswith("report") else []
        return [str(spec), "--out", str(d), *extra], "a sweep.json that darkknowledge did not write"
    if name == "unknown-teacher-model":
        write_spec(spec, **{**SMALL, "teachers": [{"model": "resnet_nosuch"}]})
        return [str(spec), "--out", str(out)], "teachers[0].model: unknown model 'resnet_nosuch'"
    if name == "unknown-student-model":
        write_spec(spec, **{**SMALL, "student": {"model": "mlp_hx"}})
        return [str(spec), "--out", str(out)], "student.model:"
    if name == "three-class-teacher":
        given = request.getfixturevalue("teacher3_ckpt")
        write_spec(spec, **{**SMALL, "teachers": [{"checkpoint": str(given), "label": "three"}]})
        return [str(spec), "--out", str(out)], "predicts 3 classes but dataset 'digits' has 10"
    if name == "missing-model-init":
        base = {**BASE, "model": {"init": str(tmp_path / "missing.pt")}}
        write_spec(spec, **SMALL, base=base)
        return [str(spec), "--out", str(out)], "missing.pt does not exist"
    if name == "malicious-model-init":
        import torch

        evil = tmp_path / "evil.pt"
        torch.save({"model": _Evil(tmp_path / "PWNED")}, evil)
        write_spec(spec, **SMALL, base={**BASE, "model": {"init": str(evil)}})
        return [str(spec), "--out", str(out)], "holds Python objects other than tensors and plain data; it was refused"
    if name == "dry-run-with-status":
        write_spec(spec, **SMALL)
        return [str(spec), "--out", str(out), "--dry-run", "--status"], "--dry-run prints the plan; give it alone"
    raise AssertionError(name)


CASES = [
    "report-on-user-results",
    "user-sweep-json-run",
    "user-sweep-json-report",
    "unknown-teacher-model",
    "unknown-student-model",
    "three-class-teacher",
    "missing-model-init",
    "malicious-model-init",
    "dry-run-with-status",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, request, capsys):
    args, message = _case(case, tmp_path, request)
    before = tree(tmp_path)
    capsys.readouterr()  # what setting up the case printed
    assert main(["sweep", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert "Traceback" not in captured.out + captured.err
    assert tree(tmp_path) == before  # no directory, no sweep.json, user files untouched, no payload ran
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [[1, 2], {"key": "0123456789abcdef", "kind": "student"}])
@pytest.mark.parametrize("flag", ["--status", "--report"])
def test_tampered_record_is_a_warning_naming_the_file(content, flag, tmp_path, capsys):
    specdir = tmp_path / "spec"
    specdir.mkdir()
    spec = write_spec(specdir / "s.yaml", **SMALL, records="rec")
    from darkknowledge.experiments import open_sweep

    assert open_sweep(str(spec), tmp_path / "a", log=quiet).run() == {"done": 3}
    record = next((specdir / "rec").glob("student-mlp_h16-kd-*.json"))
    record.write_text(json.dumps(content))
    records_before = tree(specdir)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "b"), flag]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(record) in warnings[0] and "is not a stage record" in warnings[0]
    assert "Traceback" not in captured.err
    assert tree(specdir) == records_before  # the tampered file is reported, never rewritten
    if flag == "--status":
        status = {line.split()[2]: line.split()[0] for line in captured.out.splitlines() if " student " in line}
        assert status[record.stem.rsplit("-", 1)[0]] == "pending"  # the damaged record no longer counts


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_parallel_sweep_leaves_no_workers_and_a_rerun_recovers(tmp_path):
    spec = write_spec(  # a long teacher (to be killed in), quick students
        tmp_path / "s.yaml",
        teachers=[{"model": "mlp_h32"}],
        teacher_config={"optim": {"epochs": 40}},
        methods=[{"name": "kd"}],
        seeds=[0],
    )
    sw = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-m", "darkknowledge", "sweep", str(spec), "--out", str(sw), "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    workers: set[int] = set()
    deadline = time.time() + 180
    while time.time() < deadline and parent.poll() is None:  # kill while a worker trains (holds a run lock)
        for d in sw.glob("runs/*"):
            lock = d / ".lock"
            if (d / "last.pt").is_file() and not (d / "result.json").is_file() and lock.is_file():
                try:
                    workers.add(int(json.loads(lock.read_text())["pid"]))
                except (ValueError, KeyError):
                    pass
        if workers:
            parent.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    parent.wait()
    assert workers, "the sweep finished before a worker could be seen training"
    assert parent.pid not in workers
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a worker outlived its killed sweep"

    from darkknowledge.experiments import open_sweep

    sweep = open_sweep(str(spec), sw, log=quiet)
    states = {s.name: sweep.state(s) for s in sweep.stages()}
    assert "partial" in states.values()  # left in use by the dead worker
    assert sweep.run() == {"done": 3}  # the rerun takes the stage over and finishes it
    config = yaml.safe_load((sweep.store.dir(sweep.stages()[0]) / "config.yaml").read_text())
    assert config["optim"]["epochs"] == 40 and config["model"]["name"] == "mlp_h32"


def test_a_given_teacher_is_checked_at_the_image_size_of_the_data(tmp_path, monkeypatch, capsys):
    """The up-front check reads the data as the runs do (data.image_size applied): a teacher
    trained on resized images fits a spec that resizes the same way, and is refused otherwise."""
    from darkknowledge.runs import train
    from support import fast_config

    monkeypatch.chdir(tmp_path)
    run = train(fast_config(tmp_path, "model.name=cnn_w4", "optim.epochs=1", "data.image_size=12", "name=t12"))
    given = str(Path(run["run_dir"]) / "last.pt")
    teachers = [{"checkpoint": given, "label": "t12"}]
    resized = {**BASE, "data": {**BASE["data"], "image_size": 12}}
    write_spec(tmp_path / "fits.yaml", **{**SMALL, "teachers": teachers}, base=resized)
    assert main(["sweep", str(tmp_path / "fits.yaml"), "--out", str(tmp_path / "a"), "--dry-run"]) == 0
    write_spec(tmp_path / "other.yaml", **{**SMALL, "teachers": teachers})
    assert main(["sweep", str(tmp_path / "other.yaml"), "--out", str(tmp_path / "b"), "--dry-run"]) == 2
    assert "was trained on 12x12 images but the data gives 8x8" in capsys.readouterr().err
