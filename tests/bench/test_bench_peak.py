"""The bench's yardsticks: FLOP counts of known layers, the matmul peak, capability flags, and
the achieved-GFLOP/s fractions in the bench's result and report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from darkknowledge.bench.peak import (
    REPORTED_CPU_FLAGS,
    capability,
    forward_flops,
    matmul_peak,
    train_step_flops,
)
from darkknowledge.bench.run import achieved_gflops, format_report, run_bench
from darkknowledge.engine.precision import cpu_has_native_bf16
from darkknowledge.models import build_model


def test_linear_flops_forward_and_training_step():
    b, fin, fout = 8, 10, 5
    layer = nn.Linear(fin, fout)
    x = torch.randn(b, fin)
    assert forward_flops(layer, x) == 2 * b * fin * fout
    # the input needs no gradient: backward is the weight gradient only, one more product of that size
    assert train_step_flops(layer, x) == 2 * (2 * b * fin * fout)
    assert layer.weight.grad is None  # gradients of the count are dropped


def test_conv_flops_forward():
    b, cin, cout, k, h = 2, 3, 4, 3, 8
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)
    assert forward_flops(conv, torch.randn(b, cin, h, h)) == 2 * b * h * h * cout * cin * k * k


def test_resnet20_training_step_is_about_244_mflop_per_image():
    """The figure the speed goals were set from (issue 21): 244 MFLOP per 32x32 image."""
    flops = train_step_flops(build_model("resnet20", 100, 3), torch.randn(4, 3, 32, 32)) / 4
    assert 240e6 < flops < 248e6, flops


def test_matmul_peak_is_positive_and_best_of_blocks():
    peak = matmul_peak("fp32", "cpu", size=64, seconds=0.05)
    assert peak["size"] == 64 and peak["blocks"] >= 1
    assert peak["gflops"] >= peak["median_gflops"] > 0
    with pytest.raises(ValueError):
        matmul_peak("int8", "cpu", size=8)


def test_capability_reports_the_cpu_flags():
    cap = capability("cpu")
    assert cap["device"] == "cpu" and cap["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(cap["flags"]) <= set(REPORTED_CPU_FLAGS)
    assert cap["native_bf16"] == cpu_has_native_bf16()
    assert cap["native_bf16"] == bool({"avx512_bf16", "amx_bf16"} & set(cap["flags"]))


def test_achieved_fractions_use_the_loops_precision():
    ips = {"reference": 100.0, "live": 200.0, "cached": 400.0, "student_only": 500.0}
    flops = {"student_train_step": 2e8, "teacher_forward": 1e8}
    out = achieved_gflops(ips, flops, {"fp32": 100.0, "bf16": 400.0}, "bf16")
    assert out["reference"] == {"gflops": 30.0, "precision": "fp32", "fraction_of_peak": 0.3}
    assert out["live"]["gflops"] == pytest.approx(60.0) and out["live"]["fraction_of_peak"] == pytest.approx(0.15)
    assert out["student_only"]["gflops"] == pytest.approx(100.0)
    assert out["student_only"]["fraction_of_peak"] == pytest.approx(0.25)


def test_bench_reports_peak_flops_and_fractions(digits_splits):
    train, _ = digits_splits
    result = run_bench(
        teacher="cnn_w8",
        student="cnn_w4",
        batch_size=32,
        steps=2,
        repeats=1,
        loss_student="cnn_w4",
        loss_batch_size=32,
        loss_steps=2,
        methods=["kd"],
        dataset=train,
        workers=0,
        precision="fp32",
        channels_last=False,
        peak_seconds=0.05,
        log=lambda _: None,
    )
    assert set(result["peak_gflops"]) == {"fp32"} and result["peak_gflops"]["fp32"] > 0
    # cnn_w8 forward vs cnn_w4 forward + backward (about 3 forwards): both counted, neither zero
    assert result["flops_per_image"]["teacher_forward"] > 0 and result["flops_per_image"]["student_train_step"] > 0
    assert set(result["achieved"]) == {"reference", "live", "cached", "student_only"}
    for loop, a in result["achieved"].items():
        expected = result["images_per_s"][loop] * (
            result["flops_per_image"]["student_train_step"]
            + (result["flops_per_image"]["teacher_forward"] if loop in ("reference", "live") else 0)
        )
        assert a["gflops"] == pytest.approx(expected / 1e9)
        assert a["fraction_of_peak"] == pytest.approx(a["gflops"] / result["peak_gflops"]["fp32"])
    assert result["machine"]["capability"]["device"] == "cpu"
    report = format_report(result)
    assert "fraction of its matmul peak" in report and "matmul peak: fp32" in report
