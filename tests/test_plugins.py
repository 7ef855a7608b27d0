"""Users' plugins (darkknowledge.plugins): the documented example registers a method and
a model, then teachers and students are trained through the CLI with --plugin; entry
points and DARKKNOWLEDGE_PLUGINS. Each case runs in a fresh process, so the test
session's registries stay as the package defines them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
PLUGINS = TESTS / "plugins"
REPO = TESTS.parent
FAST = ["engine.precision=fp32", "engine.channels_last=false", "engine.progress=false"]


def run_cli(*args: str, pythonpath: list[Path] = (), env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DARKKNOWLEDGE_PLUGINS"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)})
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "darkknowledge", *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )


def test_docs_show_the_tested_example():
    doc = (REPO / "docs/plugins.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert block == (PLUGINS / "dk_example_plugin.py").read_text()


def test_cli_trains_with_a_plugin_method_and_model(tmp_path):
    common = [
        f"output_dir={tmp_path}",
        *FAST,
        "model.name=pooled_mlp",
        "data.train_per_class=10",
        "data.test_per_class=5",
        "data.batch_size=16",
        "optim.epochs=1",
    ]
    teacher = run_cli(
        "--plugin", "dk_example_plugin", "train", *common, "method.name=ce", "name=t", pythonpath=[PLUGINS]
    )
    assert teacher.returncode == 0, teacher.stderr
    ckpt = tmp_path / "t" / "last.pt"
    student = run_cli(
        "--plugin",
        "dk_example_plugin",
        "distill",
        *common,
        f"teacher.checkpoint={ckpt}",
        "method.name=logit_mse",
        "method.kd_weight=0.2",
        "name=s",
        pythonpath=[PLUGINS],
    )
    assert student.returncode == 0, student.stderr
    lines = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss/kd"] > 0 and "test/teacher_agreement" in lines[-1]
    # without the plugin the names are unknown, and the error lists the valid ones
    plain = run_cli("train", *common, "method.name=logit_mse", "name=u")
    assert plain.returncode == 2 and "unknown" in plain.stderr and "logit_mse" in plain.stderr


def test_entry_points_and_environment_variable(tmp_path):
    dist = tmp_path / "site" / "dk_example_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dk-example-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[darkknowledge.methods]\nlogit_mse = dk_example_plugin\n\n[darkknowledge.models]\npooled_mlp = dk_example_plugin\n"
    )
    listed = run_cli("methods", pythonpath=[tmp_path / "site", PLUGINS])
    assert listed.returncode == 0 and "logit_mse" in listed.stdout, listed.stderr
    models = run_cli("models", pythonpath=[tmp_path / "site", PLUGINS])
    assert "pooled_mlp" in models.stdout
    from_env = run_cli("methods", pythonpath=[PLUGINS], env_extra={"DARKKNOWLEDGE_PLUGINS": "dk_example_plugin"})
    assert from_env.returncode == 0 and "logit_mse" in from_env.stdout
    assert "logit_mse" not in run_cli("methods").stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_missing_plugin_is_a_one_line_error(how):
    if how == "flag":
        out = run_cli("--plugin", "no_such_plugin_module", "methods")
    else:
        out = run_cli("methods", env_extra={"DARKKNOWLEDGE_PLUGINS": "no_such_plugin_module"})
    assert out.returncode == 2
    assert out.stderr.startswith("error: plugin 'no_such_plugin_module'") and out.stderr.count("\n") == 1
