"""Building and caching the C kernels: one shared library per source, compiler and CPU, written
atomically into the cache directory and reused; a broken compiler is a reason, not an exception."""

from __future__ import annotations

import shutil

import pytest

from darkknowledge import native

needs_compiler = pytest.mark.skipif(
    native._compiler() is None or shutil.which(native._compiler() or "") is None, reason="no C compiler"
)


@needs_compiler
def test_builds_once_into_the_cache_and_reuses_it(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("DARKKNOWLEDGE_NATIVE_CACHE", str(tmp_path))
    lib = native.load("batchnorm_relu")
    assert lib is not None and hasattr(lib, "dk_bn_relu_forward_bf16")
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].startswith("batchnorm_relu-") and built[0].endswith(".so")
    monkeypatch.setattr(native, "_loaded", {})
    mtime = (tmp_path / built[0]).stat().st_mtime_ns
    assert native.load("batchnorm_relu") is not None
    assert (tmp_path / built[0]).stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_a_failing_compiler_is_a_reason(monkeypatch, tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: fatal error: simulated' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_reasons", {})
    monkeypatch.setenv("DARKKNOWLEDGE_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fake))
    assert native.load("batchnorm_relu") is None
    assert "simulated" in (native.unavailable_reason("batchnorm_relu") or "")
    assert not any(p.suffix == ".so" for p in (tmp_path / "cache").iterdir())
