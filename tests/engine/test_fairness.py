"""Fair runs by construction: a student's start and its batches depend only on
(seed, student model, data), never on the teacher, the method or a cache; stages start
from a checkpoint's weights (``model.init``); runs log to JSONL and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darkknowledge.engine.checkpoint import load_checkpoint
from darkknowledge.engine.trainer import Trainer, build_trainer, train
from darkknowledge.errors import UserError
from support import fast_config, read_metrics, state_equal

STUDENT = [
    "model.name=mlp_h16",
    "data.train_per_class=20",
    "data.test_per_class=10",
    "data.batch_size=32",
    "optim.epochs=1",
]


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory) -> list[Path]:
    """Two teachers of different size (the second builds a larger model, consuming more random numbers)."""
    out = tmp_path_factory.mktemp("fair-teachers")
    paths = []
    for name in ("mlp_h32", "mlp_h256"):
        s = train(
            fast_config(
                out,
                f"model.name={name}",
                "method.name=ce",
                "optim.epochs=1",
                "data.train_per_class=20",
                "data.test_per_class=10",
                f"name={name}",
                "seed=5",
            )
        )
        paths.append(Path(s["run_dir"]) / "last.pt")
    return paths


def _batches(trainer: Trainer, epoch: int = 0) -> list[torch.Tensor]:
    return [b.indices.clone() for b in trainer.loader.epoch(epoch)]


def test_student_start_and_batches_do_not_depend_on_teacher_or_method(tmp_path, two_teachers, digits_splits):
    runs = {
        "ce": [],
        "kd-small": [f"teacher.checkpoint={two_teachers[0]}", "method.name=kd"],
        "kd-large": [f"teacher.checkpoint={two_teachers[1]}", "method.name=kd"],
        "ctkd-large": [f"teacher.checkpoint={two_teachers[1]}", "method.name=ctkd"],  # a method with parameters
    }
    trainers = {k: build_trainer(fast_config(tmp_path, *STUDENT, "seed=3", *extra)) for k, extra in runs.items()}
    ref = trainers["ce"]
    ref_batches = _batches(ref)
    for name, t in trainers.items():
        assert state_equal(t.model.state_dict(), ref.model.state_dict()), name
        assert all(torch.equal(a, b) for a, b in zip(_batches(t), ref_batches)), name
    other = build_trainer(fast_config(tmp_path, *STUDENT, "seed=4"))
    assert not state_equal(other.model.state_dict(), ref.model.state_dict())


def test_global_rng_after_setup_is_independent_of_teacher(tmp_path, two_teachers):
    states = []
    for extra in ([], [f"teacher.checkpoint={two_teachers[1]}", "method.name=kd"]):
        build_trainer(fast_config(tmp_path, *STUDENT, "seed=3", *extra))
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])


def test_cached_teacher_sees_same_batch_order_as_live(tmp_path, two_teachers):
    live = build_trainer(
        fast_config(tmp_path, *STUDENT, "seed=3", f"teacher.checkpoint={two_teachers[0]}", "method.name=kd")
    )
    cached = build_trainer(
        fast_config(
            tmp_path,
            *STUDENT,
            "seed=3",
            f"teacher.checkpoint={two_teachers[0]}",
            "method.name=kd",
            f"teacher.cache={tmp_path / 'cache'}",
            "teacher.build=true",
            "teacher.cache_views=2",
        )
    )
    assert state_equal(live.model.state_dict(), cached.model.state_dict())
    # same samples in the same order; a cache replays one of its stored views of each
    assert all(torch.equal(a, b) for a, b in zip(_batches(live), _batches(cached)))


def test_model_init_starts_from_checkpoint_weights(tmp_path, two_teachers):
    ckpt = load_checkpoint(two_teachers[0])
    t = build_trainer(fast_config(tmp_path, *STUDENT, "model.name=mlp_h32", f"model.init={two_teachers[0]}"))
    assert state_equal(t.model.state_dict(), ckpt["model"])
    summary = t.fit()
    assert Path(summary["run_dir"], "last.pt").is_file()


def test_model_init_errors(tmp_path, two_teachers):
    with pytest.raises(UserError, match="holds a 'mlp_h32' but model.name is 'mlp_h16'"):
        build_trainer(fast_config(tmp_path, *STUDENT, f"model.init={two_teachers[0]}"))
    with pytest.raises(UserError, match="does not exist"):
        build_trainer(fast_config(tmp_path, *STUDENT, f"model.init={tmp_path / 'nope.pt'}"))
    with pytest.raises(UserError, match="do not fit"):  # 3 classes instead of 10
        build_trainer(
            fast_config(
                tmp_path, *STUDENT, "model.name=mlp_h32", "data.classes=[0,1,2]", f"model.init={two_teachers[0]}"
            )
        )


def test_epoch_line_printed_without_progress_bar(tmp_path, capsys):
    train(fast_config(tmp_path, *STUDENT, "optim.epochs=2"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = train(fast_config(tmp_path, *STUDENT, "optim.epochs=2", "engine.tensorboard=true"))
    acc = EventAccumulator(str(Path(s["run_dir"]) / "tensorboard"))
    acc.Reload()
    top1 = acc.Scalars("test/top1")
    assert [e.step for e in top1] == [1, 2]
    assert [e.value for e in top1] == pytest.approx([m["test/top1"] for m in read_metrics(s["run_dir"])])


def test_metrics_lines_stay_valid_json_with_non_finite_values(tmp_path):
    from darkknowledge.engine.loggers import JsonlLogger

    JsonlLogger(tmp_path / "m.jsonl").log_epoch({"epoch": 0, "loss/total": float("nan"), "x": float("inf"), "ok": 1.5})
    line = (tmp_path / "m.jsonl").read_text()
    assert json.loads(line) == {"epoch": 0, "loss/total": None, "x": None, "ok": 1.5}
    assert "NaN" not in line and "Infinity" not in line


def test_schedule_warning_printed_at_start(tmp_path, two_teachers, capsys):
    train(
        fast_config(
            tmp_path, *STUDENT, f"teacher.checkpoint={two_teachers[0]}", "method.name=dkd", "method.warmup_epochs=20"
        )
    )
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "warmup_epochs" in err


def test_keep_epochs_writes_snapshots(tmp_path):
    from darkknowledge.engine.checkpoint import load_checkpoint

    s = train(fast_config(tmp_path, *STUDENT, "optim.epochs=3", "engine.keep_epochs=[1,3]", "name=k"))
    run = Path(s["run_dir"])
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-3.pt"]
    assert load_checkpoint(run / "epoch-1.pt")["epoch"] == 1
    assert state_equal(load_checkpoint(run / "epoch-3.pt")["model"], load_checkpoint(run / "last.pt")["model"])
