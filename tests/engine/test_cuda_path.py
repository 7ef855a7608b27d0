"""The CUDA path (run by benchmarks/gpu_check.sh on a GPU machine; skipped without CUDA):
bf16 and fp16 + GradScaler training, channels_last, cuDNN benchmark mode, torch.compile, a
teacher cache answering on the device, and the bench on CUDA. Synthetic data only (the GPU
machine has no scikit-learn for the digits set)."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.bench.run import run_bench, synthetic_dataset
from darkknowledge.config import load_config
from darkknowledge.data.splits import Splits
from darkknowledge.engine.trainer import build_trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _trainer(tmp_path, *overrides: str):
    ds = synthetic_dataset(256, 10, 32)
    cfg = load_config(
        overrides=[
            "engine.device=cuda",
            "model.name=resnet8",
            "data.batch_size=64",
            "optim.epochs=2",
            "engine.progress=false",
            f"output_dir={tmp_path}",
            *overrides,
        ]
    )
    return build_trainer(cfg, splits=Splits(ds, None, ds))


@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_training_on_cuda(tmp_path, precision):
    trainer = _trainer(tmp_path, f"engine.precision={precision}", f"name={precision}")
    assert trainer.precision == ("bf16" if precision == "auto" else precision)
    summary = trainer.fit()
    assert 0 <= summary["final"]["test/top1"] <= 100
    assert all(p.is_cuda and torch.isfinite(p).all() for p in trainer.model.parameters())
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark
    scaler = trainer._step_parts()[1]
    assert (scaler is not None) == (precision == "fp16")


def test_compiled_training_on_cuda(tmp_path):
    pytest.importorskip("triton")
    trainer = _trainer(tmp_path, "engine.compile=true", "optim.epochs=1", "name=compiled")
    record = trainer.train_epoch(0)
    assert record["loss/ce"] == record["loss/ce"]  # finite, not nan


@pytest.mark.parametrize("kind", ["checkpoint", "cache"])
def test_teacher_answers_on_the_device(tmp_path, kind):
    teacher = _trainer(tmp_path, "optim.epochs=1", "name=teacher").fit()
    ckpt = f"{teacher['run_dir']}/last.pt"
    source = [f"teacher.checkpoint={ckpt}"]
    if kind == "cache":
        source = ["teacher.kind=cache", f"teacher.cache={tmp_path}/cache", "teacher.build=true", *source]
    student = _trainer(tmp_path, "optim.epochs=1", f"name=student-{kind}", "method.name=kd", *source)
    batch = next(iter(student.loader.epoch(0)))
    assert batch.images.is_cuda and batch.targets.is_cuda and batch.indices.is_cuda  # no host copy per step
    assert batch.aug_params is None or batch.aug_params.is_cuda
    assert student.teacher is not None and student.teacher(batch).is_cuda
    if kind == "cache":  # a small cache is held in GPU memory and gathered there
        assert student.teacher.describe()["resident"]
    assert 0 <= student.fit()["final"]["test/top1"] <= 100


def test_bench_on_cuda():
    result = run_bench(
        teacher="resnet14",
        student="resnet8",
        batch_size=64,
        num_classes=10,
        steps=3,
        repeats=1,
        loss_student="resnet8",
        loss_batch_size=64,
        loss_steps=2,
        methods=["kd"],
        workers=0,
        device="cuda",
        peak_seconds=0.2,
        log=lambda _: None,
    )
    assert result["setup"]["precision"] == "bf16" and result["peak_gflops"]["bf16"] > 1000
    assert set(result["gpu_peak_mib"]) == {"reference", "live", "cached", "student_only"}
    assert result["machine"]["capability"]["device"] == "cuda"
