"""Metrics and the trainer: teacher training, distillation, run directories, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from darkknowledge.config import load_config
from darkknowledge.engine.checkpoint import load_checkpoint, load_model
from darkknowledge.engine.metrics import ClassificationMeter
from darkknowledge.engine.trainer import build_trainer, train
from darkknowledge.errors import UserError
from support import fast_config, read_metrics, state_equal

# A tiny, quick run: cnn_w4 on 20 digits per class (200 images), batch 32 -> 6 steps per epoch.
TINY = [
    "model.name=cnn_w4",
    "data.train_per_class=20",
    "data.test_per_class=10",
    "data.batch_size=32",
    "optim.lr=0.05",
    "optim.schedule=multistep",
    "optim.milestones=[1]",
]


# ----------------------------------------------------------------------------- metrics


def _meter(logits, targets, chunks: int = 1) -> dict:
    m = ClassificationMeter()
    for lo, t in zip(torch.tensor_split(logits, chunks), torch.tensor_split(targets, chunks)):
        m.update(lo, t)
    return m.compute()


def test_metrics_perfectly_confident_and_correct():
    targets = torch.tensor([0, 3, 7, 9, 2])
    logits = 100.0 * F.one_hot(targets, 10).float()
    out = _meter(logits, targets)
    assert out["top1"] == 100.0 and out["top5"] == 100.0
    assert out["nll"] == pytest.approx(0.0, abs=1e-6)
    assert out["ece"] == pytest.approx(0.0, abs=1e-6)
    assert out["n"] == 5


def test_metrics_confident_and_wrong():
    targets = torch.tensor([0, 1, 2, 3])
    logits = 50.0 * F.one_hot((targets + 1) % 10, 10).float()
    out = _meter(logits, targets)
    assert out["top1"] == 0.0
    assert out["nll"] == pytest.approx(50.0, rel=1e-4)
    assert out["ece"] == pytest.approx(100.0, abs=1e-6)


def test_metrics_uniform_logits():
    targets = torch.arange(10)
    out = _meter(torch.zeros(10, 10), targets)
    assert out["nll"] == pytest.approx(math.log(10), rel=1e-6)
    # every prediction has confidence 0.1; exactly one of ten is right -> calibrated
    assert out["top1"] == pytest.approx(10.0)
    assert out["ece"] == pytest.approx(0.0, abs=1e-5)


def test_metrics_top5():
    # target ranks: 0 (top-1), 3 (top-5 only), 6 (neither)
    base = torch.arange(10, 0, -1).float()  # class 0 highest, class 9 lowest
    logits = base.repeat(3, 1)
    targets = torch.tensor([0, 3, 6])
    out = _meter(logits, targets)
    assert out["top1"] == pytest.approx(100 / 3)
    assert out["top5"] == pytest.approx(200 / 3)
    log_p = F.log_softmax(base, 0)
    assert out["nll"] == pytest.approx(-(log_p[0] + log_p[3] + log_p[6]).item() / 3, rel=1e-6)


def test_metrics_top5_with_fewer_classes():
    out = _meter(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]))
    assert out["top1"] == 0.0 and out["top5"] == 100.0


def _two_class(conf: float, correct: bool) -> tuple[list[float], int]:
    # predicted class 0 with probability conf; target 0 if correct else 1
    return [math.log(conf), math.log(1 - conf)], 0 if correct else 1


def test_ece_known_binning_example():
    rows = [(0.95, True), (0.95, False), (0.62, True), (0.55, True), (0.56, False)]
    logits, targets = zip(*(_two_class(c, ok) for c, ok in rows))
    logits, targets = torch.tensor(logits), torch.tensor(targets)
    # 15 equal-width bins: {0.95, 0.95} in bin 14 (conf .95, acc .5), {0.62} in bin 9 (conf .62, acc 1),
    # {0.55, 0.56} in bin 8 (conf .555, acc .5)
    expected = (2 * 0.45 + 1 * 0.38 + 2 * 0.055) / 5
    out = _meter(logits, targets)
    assert out["ece"] == pytest.approx(100 * expected, rel=1e-5)
    assert out["top1"] == pytest.approx(60.0)
    # streamed in chunks: same result
    assert _meter(logits, targets, chunks=3) == pytest.approx(out)


def test_metrics_empty():
    assert ClassificationMeter().compute() == {}


# ----------------------------------------------------------------------------- teacher training


def test_teacher_training_reaches_accuracy_and_writes_run_dir(teacher_run):
    run_dir = teacher_run["run_dir"]
    summary = teacher_run["summary"]
    # Structural, not a trajectory: 10 classes, chance is 10 % (binomial sd 1.6 points on 359
    # test images), and 3 epochs at a constant lr 0.1 move a lot between CPUs (AVX2 / AVX-512
    # pick other oneDNN kernels): 5 seeds x 4 kernel sets gave 54-94 %. 30 % = 3x chance, and
    # the loss falls (below).
    assert summary["final"]["test/top1"] > 30.0, summary["final"]
    assert summary["final"]["test/n"] == 359
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt"):
        assert (run_dir / name).is_file(), name
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == [
        ".lock"
    ]  # no temp files left, only the run lock
    lines = read_metrics(run_dir)
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    for line in lines:
        for key in ("loss/ce", "loss/total", "lr", "test/top1", "test/top5", "test/nll", "test/ece"):
            assert key in line and math.isfinite(line[key]), key
        assert line["lr"] == 0.1
        assert line["loss/total"] == pytest.approx(line["loss/ce"])
    assert lines[-1]["loss/ce"] < lines[0]["loss/ce"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["final"] == summary["final"]
    assert on_disk["model"] == "cnn_w16" and on_disk["method"] == "ce" and on_disk["dataset"] == "digits"
    assert on_disk["best"]["test/top1"] == max(line["test/top1"] for line in lines)
    # config.yaml is the resolved config and loads back
    cfg = load_config(str(run_dir / "config.yaml"))
    assert cfg.model.name == "cnn_w16" and cfg.optim.epochs == 3
    # checkpoints
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 3 and last["num_classes"] == 10 and last["in_channels"] == 1
    best = load_checkpoint(run_dir / "best.pt")
    assert best["metrics"]["test/top1"] == on_disk["best"]["test/top1"]
    # the saved model reproduces the logged accuracy
    from darkknowledge.data import build_dataset
    from darkknowledge.data.loader import eval_batches
    from darkknowledge.engine.metrics import evaluate

    model, _ = load_model(run_dir / "last.pt")
    test = build_dataset("digits", train=False)
    assert evaluate(model, eval_batches(test, 512, channels_last=False))["top1"] == pytest.approx(
        lines[-1]["test/top1"]
    )


# ----------------------------------------------------------------------------- distillation


def test_kd_distillation_leaves_teacher_untouched(tmp_path, teacher_ckpt):
    before = teacher_ckpt.read_bytes()
    # unfolded, so the teacher's BatchNorm running statistics are there to check
    cfg = fast_config(
        tmp_path,
        *TINY,
        "optim.epochs=1",
        "method.name=kd",
        f"teacher.checkpoint={teacher_ckpt}",
        "teacher.fold_batchnorm=false",
        "name=kd",
    )
    trainer = build_trainer(cfg)
    teacher = trainer.teacher.model
    start = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any("running_mean" in k for k in start)  # BN statistics are part of the check
    modes: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: modes.append(mod.training)) for m in teacher.modules()]
    summary = trainer.fit()
    for h in hooks:
        h.remove()
    assert modes and not any(modes), "the teacher ran in training mode"
    assert not teacher.training
    assert state_equal(start, teacher.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher_ckpt.read_bytes() == before
    lines = read_metrics(summary["run_dir"])
    assert len(lines) == 1
    line = lines[0]
    for key in ("loss/ce", "loss/kd", "loss/total", "test/top1", "test/teacher_agreement"):
        assert key in line and math.isfinite(line[key]), key
    assert line["loss/total"] == pytest.approx(line["loss/ce"] + line["loss/kd"])
    assert line["loss/kd"] > 0
    assert summary["teacher"]["kind"] == "live"


def test_folded_teacher_gives_the_same_logits(teacher_ckpt, digits_splits):
    """BatchNorm folding of the frozen teacher changes nothing but float rounding, and
    leaves the caller's model (with its BatchNorms) untouched."""
    from darkknowledge.data.loader import eval_batches
    from darkknowledge.engine.teacher import LiveTeacher

    model, _ = load_model(teacher_ckpt)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0
    folded = LiveTeacher(model, precision="fp32", channels_last=False, fold_batchnorm=True)
    plain = LiveTeacher(model, precision="fp32", channels_last=False, fold_batchnorm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn
    batch = next(iter(eval_batches(digits_splits[0], 256, channels_last=False)))
    torch.testing.assert_close(folded(batch), plain(batch), rtol=1e-4, atol=1e-4)


def test_kd_through_library_train_with_channels_last(tmp_path, teacher_ckpt):
    cfg = fast_config(
        tmp_path,
        *TINY,
        "optim.epochs=1",
        "method.name=kd",
        f"teacher.checkpoint={teacher_ckpt}",
        "engine.channels_last=true",
        "name=kdcl",
    )
    summary = train(cfg)
    assert math.isfinite(read_metrics(summary["run_dir"])[0]["loss/kd"])


def test_bf16_training_and_distillation_give_finite_losses(tmp_path, teacher_ckpt):
    for method in ("ce", "kd"):
        cfg = fast_config(
            tmp_path,
            *TINY,
            "optim.epochs=1",
            f"method.name={method}",
            f"teacher.checkpoint={teacher_ckpt}",
            "engine.precision=bf16",
            "engine.channels_last=true",
            f"name=bf16-{method}",
        )
        summary = train(cfg)
        line = read_metrics(summary["run_dir"])[0]
        losses = {k: v for k, v in line.items() if k.startswith("loss/")}
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
        assert math.isfinite(summary["final"]["test/nll"])


def test_teacher_with_other_classes_is_refused(tmp_path, teacher3_ckpt):
    cfg = fast_config(
        tmp_path, *TINY, "optim.epochs=1", "method.name=kd", f"teacher.checkpoint={teacher3_ckpt}", "name=bad"
    )
    with pytest.raises(UserError) as exc:
        train(cfg)
    assert "3 classes" in str(exc.value) and "10" in str(exc.value)
    assert not (tmp_path / "bad").exists()


def test_teacher_of_matching_class_subset_is_accepted(tmp_path, teacher3_ckpt):
    cfg = fast_config(
        tmp_path,
        *TINY,
        "optim.epochs=1",
        "method.name=kd",
        f"teacher.checkpoint={teacher3_ckpt}",
        "data.classes=[0,1,2]",
        "name=ok3",
    )
    summary = train(cfg)
    assert summary["final"]["test/n"] == 30


def test_method_needing_a_teacher_without_one(tmp_path):
    with pytest.raises(UserError, match="teacher.checkpoint"):
        build_trainer(fast_config(tmp_path, *TINY, "method.name=kd"))


def test_missing_teacher_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_trainer(fast_config(tmp_path, *TINY, "method.name=kd", f"teacher.checkpoint={tmp_path / 'nope.pt'}"))


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(UserError, match="batch_size"):
        build_trainer(fast_config(tmp_path, *TINY, "data.batch_size=201"))


# ----------------------------------------------------------------------------- run directories and resume


@pytest.fixture
def one_epoch_run(tmp_path) -> Path:
    """A finished 1-epoch tiny run ``tmp_path/r`` (output_dir is part of the saved config, so
    a resume must use the same output_dir)."""
    summary = train(fast_config(tmp_path, *TINY, "optim.epochs=1", "engine.deterministic=true", "name=r"))
    return Path(summary["run_dir"])


def _snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.iterdir())}


def test_kill_and_resume_gives_identical_weights(tmp_path, one_epoch_run):
    common = [*TINY, "engine.deterministic=true"]
    straight = train(fast_config(tmp_path / "a", *common, "optim.epochs=2", "name=r"))
    # the 1-epoch run, continued to 2 epochs
    resumed = train(fast_config(tmp_path, *common, "optim.epochs=2", "name=r"), resume=True)

    a = load_checkpoint(Path(straight["run_dir"]) / "last.pt")
    b = load_checkpoint(Path(resumed["run_dir"]) / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert state_equal(a["model"], b["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    la, lb = read_metrics(straight["run_dir"]), read_metrics(resumed["run_dir"])
    assert [line["epoch"] for line in lb] == [0, 1]
    for x, y in zip(la, lb):
        for key in ("loss/ce", "lr", "test/top1", "test/nll"):
            assert x[key] == y[key], key
    assert la[1]["lr"] == pytest.approx(0.005)  # the milestone at epoch 1 applies after resume too
    assert straight["final"] == resumed["final"]
    assert yaml.safe_load((Path(resumed["run_dir"]) / "config.yaml").read_text())["optim"]["epochs"] == 2


def test_resume_drops_metrics_of_epochs_without_checkpoint(tmp_path, one_epoch_run):
    # killed after logging epoch 1 but before its checkpoint: the resumed run logs it again, once
    run = one_epoch_run
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 1, "loss/ce": 123.0}) + "\n")
    train(fast_config(tmp_path, *TINY, "optim.epochs=2", "engine.deterministic=true", "name=r"), resume=True)
    lines = read_metrics(run)
    assert [line["epoch"] for line in lines] == [0, 1]
    assert lines[1]["loss/ce"] != 123.0


def test_existing_run_dir_without_resume_is_refused(tmp_path, one_epoch_run):
    run = one_epoch_run
    before = _snapshot(run)
    with pytest.raises(UserError, match="--resume"):
        train(fast_config(tmp_path, *TINY, "optim.epochs=2", "engine.deterministic=true", "name=r"))
    assert _snapshot(run) == before


def test_resume_with_changed_config_is_refused(tmp_path, one_epoch_run):
    run = one_epoch_run
    before = _snapshot(run)
    for change in ("optim.lr=0.2", "model.name=cnn_w8", "seed=1", "data.train_per_class=21"):
        with pytest.raises(UserError, match="config"):
            train(
                fast_config(tmp_path, *TINY, "optim.epochs=2", "engine.deterministic=true", "name=r", change),
                resume=True,
            )
        assert _snapshot(run) == before, change


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train(fast_config(tmp_path, *TINY, "optim.epochs=1", "name=none"), resume=True)


def test_fresh_run_over_a_killed_first_epoch_starts_clean_metrics(tmp_path):
    # a run killed during its first epoch leaves config.yaml/metrics.jsonl but no checkpoint;
    # starting it again must not append to the stale metrics
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("stale: true\n")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "loss/ce": 99.0}) + "\n")
    train(fast_config(tmp_path, *TINY, "optim.epochs=1", "name=r"))
    lines = read_metrics(run)
    assert len(lines) == 1 and lines[0]["loss/ce"] != 99.0
    assert "stale" not in (run / "config.yaml").read_text()


def test_eval_every_and_best_checkpoint(tmp_path):
    summary = train(fast_config(tmp_path, *TINY, "optim.epochs=3", "engine.eval_every=2", "name=ev"))
    lines = read_metrics(summary["run_dir"])
    assert ["test/top1" in line for line in lines] == [False, True, True]  # epoch 2 and the last
    best = load_checkpoint(Path(summary["run_dir"]) / "best.pt")
    assert best["metrics"]["test/top1"] == max(line["test/top1"] for line in lines if "test/top1" in line)
