"""The training step's speed switches keep its arithmetic and its guarantees: fused / foreach
SGD against torch's reference SGD, the periodic non-finite check against the per-step one,
the compile switch's wiring, and CUDA-only options refused on a CPU."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.config import OptimConfig, load_config
from darkknowledge.engine import compile as compile_module
from darkknowledge.engine.optim import build_optimizer, fused_sgd_available
from darkknowledge.engine.trainer import build_trainer
from darkknowledge.errors import UserError
from support import fast_config

TINY = ["model.name=cnn_w4", "data.train_per_class=20", "data.test_per_class=10", "data.batch_size=16"]


@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_matches_reference_sgd(fused):
    optim = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(4)]
    ours = [torch.nn.Parameter(p.clone()) for p in init]
    ref = [torch.nn.Parameter(p.clone()) for p in init]
    opt = build_optimizer(ours, optim, "cpu", fused=fused)
    assert bool(opt.defaults["fused"]) == (fused and fused_sgd_available("cpu"))
    assert opt.defaults["foreach"] == (None if opt.defaults["fused"] else True)
    ref_opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=False)
    for step in grads:
        for p, q, gr in zip(ours, ref, step):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _diverging(tmp_path, name, *extra):
    cfg = fast_config(tmp_path, *TINY, "optim.epochs=2", "optim.lr=1e9", f"name={name}", *extra)
    trainer = build_trainer(cfg)
    with pytest.raises(UserError) as err:
        trainer.fit()
    assert not (tmp_path / name / "last.pt").exists() and not (tmp_path / name / "best.pt").exists()
    return str(err.value)


def test_periodic_finite_check_names_the_same_step_as_the_per_step_check(tmp_path):
    every_step = _diverging(tmp_path, "a", "engine.finite_check_every=1")
    periodic = _diverging(tmp_path, "b", "engine.finite_check_every=1000")  # only at the end of the epoch
    assert "non-finite loss at epoch 1, step" in every_step
    assert periodic == every_step


def test_compile_switch_compiles_the_training_forward_only(tmp_path, recorded_compiles):
    compiled = recorded_compiles
    trainer = build_trainer(fast_config(tmp_path, *TINY, "optim.epochs=1", "engine.compile=true"))
    trainer.train_epoch(0)
    trainer.train_epoch(1)
    assert len(compiled) == 1 and compiled[0][0] is trainer.train_model
    assert compiled[0][1] == {"backend": "inductor", "dynamic": False}
    trainer = build_trainer(fast_config(tmp_path, *TINY, "optim.epochs=1", "name=eager"))
    trainer.train_epoch(0)
    assert len(compiled) == 1


def test_compile_refuses_other_devices():
    with pytest.raises(UserError, match="engine.compile=true supports cpu and cuda"):
        compile_module.compile_module(torch.nn.Linear(2, 2), "meta")


def test_fp16_on_a_cpu_is_a_user_error(tmp_path):
    cfg = load_config(overrides=[*TINY, "engine.precision=fp16", f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="fp16.*CUDA-only"):
        build_trainer(cfg)


def test_compile_teacher_switch_compiles_a_live_teachers_forward_frozen(tmp_path, recorded_compiles):
    from darkknowledge.models import build_model

    compiled = recorded_compiles
    teacher = build_model("cnn_w4", num_classes=10, in_channels=1)
    cfg = fast_config(tmp_path, *TINY, "optim.epochs=1", "method.name=kd", "engine.compile_teacher=true")
    trainer = build_trainer(cfg, teacher=teacher)
    trainer.train_epoch(0)
    assert [m for m, _ in compiled] == [trainer.teacher.model]  # the teacher only (the student: engine.compile)
    assert compiled[0][1]["options"] == {"freezing": True}


def test_a_frozen_compiled_teacher_answers_as_the_eager_one():
    import copy

    from darkknowledge.engine.teacher import LiveTeacher
    from darkknowledge.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=3).eval()  # BatchNorm folded into the convolutions
    eager = LiveTeacher(copy.deepcopy(model), precision="fp32", channels_last=False)
    frozen = LiveTeacher(model, precision="fp32", channels_last=False, compile=True)

    class _Batch:
        inputs = torch.randn(4, 3, 16, 16)

    try:
        got = frozen(_Batch())
    except Exception as exc:  # no C++ compiler here: inductor cannot build its kernels
        pytest.skip(f"inductor cannot compile on this machine: {type(exc).__name__}")
    torch.testing.assert_close(got, eager(_Batch()), rtol=1e-4, atol=1e-4)
