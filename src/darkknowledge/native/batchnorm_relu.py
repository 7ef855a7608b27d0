"""``relu(batch_norm(x) [+ residual])`` in training mode as one C kernel (``batchnorm_relu.c``).

Eager torch runs BatchNorm (two passes over the activation), the residual addition and ReLU as
separate memory-bound passes, forward and backward: about a third of a resnet20 training step in
bf16 on a CPU (docs/performance.md). The kernel reads and writes each activation fewer times,
over channels_last tensors in float32 or bfloat16. :func:`batchnorm_relu` takes it where it
applies (switched on per model by :func:`use_kernel`, which the engine calls for
``engine.fused_bn_relu``; a CPU tensor in channels_last, a BatchNorm in
training mode with affine weights and a momentum) and otherwise computes the same thing with
torch's operators, which is also what ``torch.compile`` traces.
"""

from __future__ import annotations

import ctypes
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from darkknowledge import native

KERNEL = "batchnorm_relu"
_SWITCH = "fused_relu_kernel"  # a plain attribute of each BatchNorm2d, set by use_kernel

_P, _I64, _INT, _DBL = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_FORWARD_ARGS = [_P, _P, _P, _I64, _I64, _P, _P, _DBL, _P, _P, _P, _P, _P, _DBL, _INT]
_BACKWARD_ARGS = [_P, _P, _P, _P, _P, _I64, _I64, _P, _P, _P, _P, _P, _P, _INT]
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


_typed: list[ctypes.CDLL] = []  # the library once its functions have their argument types


def _library() -> ctypes.CDLL | None:
    lib = native.load(KERNEL)
    if lib is not None and lib not in _typed:
        for suffix in _SUFFIX.values():
            getattr(lib, f"dk_bn_relu_forward_{suffix}").argtypes = _FORWARD_ARGS
            getattr(lib, f"dk_bn_relu_backward_{suffix}").argtypes = _BACKWARD_ARGS
        _typed.append(lib)
    return lib


def use_kernel(model: nn.Module, flag: bool) -> bool:
    """Let ``model``'s BatchNorm2d layers take the kernel in :func:`batchnorm_relu` (``flag``) or not;
    True if they do. Where the kernel cannot be built a warning says why and torch's operators stay."""
    on = flag and _library() is not None
    if flag and not on:
        warnings.warn(
            f"engine.fused_bn_relu: the C kernel is unavailable ({native.unavailable_reason(KERNEL)}); "
            "using torch's BatchNorm and ReLU",
            stacklevel=2,
        )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            setattr(module, _SWITCH, on)
    return on


def _rows(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _image(rows: Tensor, shape: torch.Size) -> Tensor:
    n, c, h, w = shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        residual: Tensor | None,
        weight: Tensor,
        bias: Tensor,
        eps: float,
        running: tuple[Tensor, Tensor, float] | None,
    ) -> Tensor:
        lib = _library()
        assert lib is not None
        xr = _rows(x)
        rr = None if residual is None else _rows(residual.contiguous(memory_format=torch.channels_last))
        rows, channels = xr.shape
        weight32, bias32 = weight.detach().float().contiguous(), bias.detach().float().contiguous()
        stats = torch.empty(3, channels)
        mean, var, invstd = stats.unbind(0)
        running_mean, running_var, momentum = running if running is not None else (None, None, 0.0)
        y = torch.empty_like(xr)
        status = getattr(lib, f"dk_bn_relu_forward_{_SUFFIX[x.dtype]}")(
            xr.data_ptr(), _pointer(rr), y.data_ptr(), rows, channels, weight32.data_ptr(), bias32.data_ptr(),
            eps, mean.data_ptr(), var.data_ptr(), invstd.data_ptr(), _pointer(running_mean),
            _pointer(running_var), momentum, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("batchnorm_relu: the kernel could not allocate its work buffers")
        # with a residual the ReLU mask is read from y; without, the kernel recomputes it from x
        ctx.save_for_backward(xr, y if residual is not None else None, weight32, bias32, mean, invstd)
        ctx.shape, ctx.dtypes = x.shape, (weight.dtype, bias.dtype)
        return _image(y, x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):
        lib = _library()
        assert lib is not None
        xr, y, weight32, bias32, mean, invstd = ctx.saved_tensors
        dy = _rows(grad.contiguous(memory_format=torch.channels_last)).to(xr.dtype)
        rows, channels = xr.shape
        g = torch.empty_like(xr) if y is not None else None
        dx = torch.empty_like(xr)
        dweight, dbias = torch.empty(channels), torch.empty(channels)
        status = getattr(lib, f"dk_bn_relu_backward_{_SUFFIX[xr.dtype]}")(
            dy.data_ptr(), xr.data_ptr(), _pointer(y), _pointer(g), dx.data_ptr(), rows, channels,
            weight32.data_ptr(), bias32.data_ptr(), mean.data_ptr(), invstd.data_ptr(), dweight.data_ptr(),
            dbias.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("batchnorm_relu: the kernel could not allocate its work buffers")
        grad_residual = None if g is None else _image(g, ctx.shape)
        return _image(dx, ctx.shape), grad_residual, dweight.to(ctx.dtypes[0]), dbias.to(ctx.dtypes[1]), None, None


def _fusable(bn: nn.BatchNorm2d, x: Tensor, residual: Tensor | None) -> bool:
    return (
        getattr(bn, _SWITCH, False)
        and bn.training
        and bn.affine
        and bn.momentum is not None
        and x.device.type == "cpu"
        and x.dtype in _SUFFIX
        and x.dim() == 4
        and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype))
        and all(
            b is None or (b.dtype == torch.float32 and b.is_contiguous()) for b in (bn.running_mean, bn.running_var)
        )
        and not torch.compiler.is_compiling()
    )


def batchnorm_relu(bn: nn.BatchNorm2d, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """``relu(bn(x) + residual)`` (``relu(bn(x))`` without a residual), updating ``bn``'s running
    statistics in training mode exactly as ``bn(x)`` does."""
    if not _fusable(bn, x, residual):
        out = bn(x)
        return F.relu(out if residual is None else out + residual)
    assert bn.weight is not None and bn.bias is not None and bn.momentum is not None
    running = None
    if bn.track_running_stats:
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        running = (bn.running_mean, bn.running_var, float(bn.momentum))
        bn.num_batches_tracked.add_(1)
    return _BatchNormReLU.apply(x, residual, bn.weight, bn.bias, bn.eps, running)


def run_sequential(layers: nn.Sequential, x: Tensor, *, final_relu: bool = False) -> Tensor:
    """``layers(x)`` (then ReLU when ``final_relu``), with every BatchNorm2d that a ReLU follows — the
    next layer, or ``final_relu`` after the last — computed by :func:`batchnorm_relu`."""
    modules = list(layers)
    i = 0
    while i < len(modules):
        module = modules[i]
        last = i == len(modules) - 1
        if isinstance(module, nn.BatchNorm2d) and (
            (last and final_relu) or (not last and isinstance(modules[i + 1], nn.ReLU))
        ):
            x = batchnorm_relu(module, x)
            i += 1 if last else 2
            final_relu = final_relu and not last
            continue
        x = module(x)
        i += 1
    return F.relu(x) if final_relu else x
