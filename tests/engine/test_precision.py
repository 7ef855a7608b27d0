"""engine.precision: ``auto`` picks bf16 only where bf16 is native (CUDA, CPUs with
AVX512_BF16 or AMX-BF16), an explicit choice is kept. CPU capabilities are mocked."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.engine import precision
from darkknowledge.engine.precision import autocast, bf16_is_fast, resolve_precision
from darkknowledge.errors import UserError

# /proc/cpuinfo-style flag sets of three CPU generations
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"}
COOPER_LAKE = {"avx2", "avx512f", "avx512bw", "avx512_bf16"}
SKYLAKE_X = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # AVX-512, bf16 only emulated
HASWELL = {"avx", "avx2", "fma"}


@pytest.fixture
def cpu_with(monkeypatch):
    """Make the process see a CPU with the given flags."""

    def use(flags: set[str]) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))

    return use


@pytest.mark.parametrize(
    "flags, expected",
    [(SAPPHIRE_RAPIDS, "bf16"), (COOPER_LAKE, "bf16"), (SKYLAKE_X, "fp32"), (HASWELL, "fp32"), (set(), "fp32")],
)
def test_auto_on_cpu_is_bf16_only_with_native_bf16(cpu_with, flags, expected):
    cpu_with(flags)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert bf16_is_fast("cpu") == (expected == "bf16")


def test_auto_ignores_onednn_bf16_check_that_accepts_any_avx512(cpu_with, monkeypatch):
    """oneDNN says yes on every AVX-512 CPU; without AVX512_BF16 bf16 is emulated and slow."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    cpu_with(SKYLAKE_X)
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, HASWELL])
@pytest.mark.parametrize("choice", ["bf16", "fp32"])
def test_explicit_choice_is_kept_on_any_cpu(cpu_with, flags, choice):
    cpu_with(flags)
    assert resolve_precision(choice, "cpu") == choice


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_auto_is_bf16_whatever_the_cpu(cpu_with, device):
    cpu_with(HASWELL)  # the host CPU does not matter for a CUDA device
    assert resolve_precision("auto", device) == "bf16"
    assert resolve_precision("fp32", device) == "fp32"
    assert resolve_precision("bf16", device) == "bf16"


def test_other_devices_stay_fp32_on_auto(cpu_with):
    cpu_with(SAPPHIRE_RAPIDS)
    assert resolve_precision("auto", "meta") == "fp32"


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="'fp8'.*auto, bf16, fp16 \\(CUDA\\) or fp32"):
        resolve_precision("fp8", "cpu")


def test_fp16_is_cuda_only():
    with pytest.raises(UserError, match="fp16.*CUDA-only.*bf16 or fp32"):
        resolve_precision("fp16", "cpu")


def test_autocast_enabled_follows_resolution(cpu_with):
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    cpu_with(HASWELL)
    with autocast("cpu", "auto"):
        assert (x @ w).dtype == torch.float32
    cpu_with(COOPER_LAKE)
    with autocast("cpu", "auto"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (x @ w).dtype == torch.float32


def test_cpu_flags_join_kernel_list_and_torch_probes(monkeypatch):
    """Linux: /proc/cpuinfo; elsewhere (None) torch's own probes still count."""
    precision.cpu_flags.cache_clear()
    try:
        monkeypatch.setattr(precision, "_proc_cpuinfo_flags", lambda: None)
        monkeypatch.setattr(precision, "_torch_cpu_flags", lambda: {"amx_bf16"})
        assert precision.cpu_has_native_bf16()
        precision.cpu_flags.cache_clear()
        monkeypatch.setattr(precision, "_proc_cpuinfo_flags", lambda: set(SKYLAKE_X))
        monkeypatch.setattr(precision, "_torch_cpu_flags", lambda: set())
        assert precision.cpu_flags() == frozenset(SKYLAKE_X) and not precision.cpu_has_native_bf16()
    finally:
        precision.cpu_flags.cache_clear()  # the next caller reads the real CPU again


def test_proc_cpuinfo_flags_are_read_on_linux():
    flags = precision._proc_cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    assert flags and all(" " not in f for f in flags)
