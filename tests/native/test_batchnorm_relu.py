"""The fused BatchNorm + residual + ReLU kernel against torch's operators: values, gradients and
running statistics in float32 (tight) and bfloat16 (against a float64 reference, bf16 tolerance);
tails of rows that do not fill a group; where it must step aside; and the models that use it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darkknowledge import native
from darkknowledge.models import build_model
from darkknowledge.native import batchnorm_relu as kernel
from darkknowledge.native.batchnorm_relu import batchnorm_relu, use_kernel

needs_kernel = pytest.mark.skipif(
    native.load(kernel.KERNEL) is None, reason=f"C kernel unavailable: {native.unavailable_reason(kernel.KERNEL)}"
)


def _bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _inputs(shape, dtype, residual: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    r = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last) if residual else None
    grad = torch.randn(shape, generator=g)
    return x, r, grad


def _run(bn, x, r, grad):
    """Output, gradients (x, weight, bias[, residual]) of relu(bn(x) [+ r]) with fresh leaves."""
    x = x.detach().clone().requires_grad_()
    r = None if r is None else r.detach().clone().requires_grad_()
    y = batchnorm_relu(bn, x, r)
    leaves = [x, bn.weight, bn.bias] + ([r] if r is not None else [])
    return y, torch.autograd.grad(y, leaves, grad.to(y.dtype))


# shapes: rows (N*H*W) not a multiple of the kernel's row group, 1..3 threads' ranges, odd channels
SHAPES = [(8, 16, 12, 12), (3, 5, 7, 9), (2, 64, 5, 3), (4, 130, 3, 3), (1, 3, 1, 2)]


@needs_kernel
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_torch(shape, residual):
    reference, fused = _bn(shape[1]), _bn(shape[1])
    use_kernel(fused, True)
    x, r, grad = _inputs(shape, torch.float32, residual)
    y0, g0 = _run(reference, x, r, grad)
    y1, g1 = _run(fused, x, r, grad)
    assert not y1.requires_grad or y1.grad_fn.name().endswith("_BatchNormReLUBackward")
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.running_mean, reference.running_mean)
    torch.testing.assert_close(fused.running_var, reference.running_var)
    assert int(fused.num_batches_tracked) == int(reference.num_batches_tracked) == 1


@needs_kernel
@pytest.mark.parametrize("residual", [False, True])
def test_bfloat16_within_its_precision_of_float64(residual):
    shape = (8, 16, 12, 12)
    reference, fused = _bn(16).double(), _bn(16)
    use_kernel(fused, True)
    x, r, grad = _inputs(shape, torch.bfloat16, residual)
    y0, g0 = _run(reference, x.double(), None if r is None else r.double(), grad.double())
    y1, g1 = _run(fused, x, r, grad)
    assert y1.dtype == torch.bfloat16 and y1.is_contiguous(memory_format=torch.channels_last)
    assert (y1.double() - y0).abs().max() <= 2**-7 * y0.abs().max()
    for a, b in zip(g1, g0):
        assert a.shape == b.shape
        assert (a.double() - b).abs().max() <= 2e-2 * b.abs().max()


@needs_kernel
def test_steps_aside_where_it_does_not_apply():
    bn = _bn(8)
    use_kernel(bn, True)
    x, r, grad = _inputs((2, 8, 4, 4), torch.float32, True)

    def fn(y):
        return None if y.grad_fn is None else y.grad_fn.name()

    assert fn(batchnorm_relu(bn, x.requires_grad_(), r)).endswith("_BatchNormReLUBackward")
    assert "BatchNormReLU" not in fn(batchnorm_relu(bn, x.contiguous(), r.contiguous()))  # NCHW
    assert "BatchNormReLU" not in fn(batchnorm_relu(bn, x, r.half()))  # residual of another dtype
    bn.eval()
    assert "BatchNormReLU" not in fn(batchnorm_relu(bn, x, r))
    torch.testing.assert_close(batchnorm_relu(bn, x, r), F.relu(bn(x) + r))
    bn.train()
    use_kernel(bn, False)
    assert "BatchNormReLU" not in fn(batchnorm_relu(bn, x, r))


@needs_kernel
def test_non_finite_input_gives_non_finite_output():
    bn = _bn(4)
    use_kernel(bn, True)
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    x[0, 1, 0, 0] = float("nan")
    y = batchnorm_relu(bn, x)
    assert torch.isnan(y[:, 1]).all() and torch.isfinite(y[:, [0, 2, 3]]).all()


@needs_kernel
@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "cnn_w4"])
def test_a_model_trains_the_same_with_and_without_the_kernel(name):
    torch.manual_seed(0)
    plain = build_model(name, 10, 3).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    assert use_kernel(fused, True)
    x = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    targets = torch.arange(6) % 10
    losses = []
    for model in (plain, fused):
        model.train()
        loss = F.cross_entropy(model(x), targets)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (n, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=n)
    assert plain.state_dict().keys() == fused.state_dict().keys()
    for (n, a), b in zip(plain.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)


def test_use_kernel_warns_and_stays_off_where_it_cannot_be_built(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_reasons", {})
    monkeypatch.setenv("DARKKNOWLEDGE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    model = build_model("resnet8", 10, 3)
    with pytest.warns(UserWarning, match="engine.fused_bn_relu: the C kernel is unavailable"):
        assert use_kernel(model, True) is False
    assert not any(getattr(m, kernel._SWITCH, False) for m in model.modules())
    assert list(tmp_path.iterdir()) == []


@needs_kernel
def test_run_sequential_fuses_only_batchnorm_followed_by_relu():
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # fused
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.MaxPool2d(2),  # BN not followed by ReLU: torch's
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8),  # last BN, fused when final_relu
    )  # fmt: skip
    fused = copy.deepcopy(layers)
    use_kernel(fused, True)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    for final_relu in (False, True):
        expected = layers(x)
        expected = F.relu(expected) if final_relu else expected
        got = kernel.run_sequential(fused, x, final_relu=final_relu)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert (got.grad_fn.name().endswith("_BatchNormReLUBackward")) == final_relu
