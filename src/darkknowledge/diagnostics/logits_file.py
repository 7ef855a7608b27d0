"""Diagnostics from a ``.npy``/``.npz`` file of logits and targets, memory-mapped
(an uncompressed ``.npz`` member is mapped in place by reading its zip header)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkknowledge.diagnostics.api import diagnose
from darkknowledge.diagnostics.result import DiagnoseOptions, DiagnosticsResult, TeacherOutputs
from darkknowledge.errors import UserError


def _npz_member_memmap(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of an ``.npz`` (None if compressed)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        data_start = info.header_offset + 30 + name_len + extra_len
        fh.seek(data_start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                arr = _npz_member_memmap(path, zf, info)
                if arr is None:  # compressed member: read it (into memory)
                    with zf.open(info) as fh:
                        arr = np.lib.format.read_array(fh, allow_pickle=False)
                out[key] = arr
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npz archive ({exc}); save it with numpy.savez") from exc
    return out


def load_logits_file(
    path: str | os.PathLike[str],
    *,
    targets: Any = None,
    names: Sequence[str] | None = None,
    num_params: Mapping[str, int] | None = None,
) -> list[TeacherOutputs]:
    """Read model outputs from ``.npy`` / ``.npz`` (memory-mapped where possible).

    * ``.npy``: one (N, C) logits array; ``targets`` (array or path to a ``.npy``) is
      required; the model is named ``names[0]`` or the file stem.
    * ``.npz``: ``targets`` (or ``labels``) (N,) plus either ``logits`` (one model, named
      after the file or ``names[0]``) or ``logits_<name>`` for several models, and
      optionally ``features_<name>`` (N, D) and ``num_params_<name>`` scalars.
      ``names`` selects and orders the models (default: archive order).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"logits file {p} does not exist")
    params = dict(num_params or {})
    if p.suffix == ".npy":
        try:
            logits = np.load(p, mmap_mode="r")
        except ValueError as exc:
            raise UserError(f"{p}: not a readable .npy file ({exc})") from exc
        if targets is None:
            raise UserError(f"{p} holds logits only; also give the targets (an array or a .npy path)")
        y = np.load(targets) if isinstance(targets, (str, os.PathLike)) else np.asarray(targets)
        name = names[0] if names else p.stem
        return [TeacherOutputs(name, params.get(name), logits, np.asarray(y).astype(np.int64))]
    if p.suffix != ".npz":
        raise UserError(f"{p}: unsupported file type {p.suffix!r}; use .npy or .npz")
    arrays = _load_npz(p)
    if targets is not None:
        y = np.load(targets) if isinstance(targets, (str, os.PathLike)) else np.asarray(targets)
    elif "targets" in arrays:
        y = arrays["targets"]
    elif "labels" in arrays:
        y = arrays["labels"]
    else:
        raise UserError(f"{p} has no 'targets' (or 'labels') array; add one or pass targets=")
    y = np.asarray(y).astype(np.int64)
    logit_keys = {k[len("logits_") :]: k for k in arrays if k.startswith("logits_")}
    if "logits" in arrays:
        logit_keys = {(names[0] if names else p.stem): "logits", **logit_keys}
    if not logit_keys:
        raise UserError(f"{p} has no 'logits' or 'logits_<name>' arrays (found {sorted(arrays)})")
    order = list(names) if names else list(logit_keys)
    unknown = [nm for nm in order if nm not in logit_keys]
    if unknown:
        raise UserError(f"{p} has no logits for {unknown}; available: {sorted(logit_keys)}")
    out = []
    for nm in order:
        np_key = f"num_params_{nm}"
        n_params = params.get(nm)
        if n_params is None and np_key in arrays:
            n_params = int(np.asarray(arrays[np_key]).reshape(-1)[0])
        out.append(TeacherOutputs(nm, n_params, arrays[logit_keys[nm]], y, arrays.get(f"features_{nm}")))
    return out


def diagnose_from_logits_file(
    path: str | os.PathLike[str],
    *,
    targets: Any = None,
    teachers: Sequence[str] | None = None,
    students: Sequence[str] = (),
    num_params: Mapping[str, int] | None = None,
    temperatures: Sequence[float] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    options: DiagnoseOptions | None = None,
    threads: int | None = None,
) -> DiagnosticsResult:
    """:func:`diagnose` on the models of a ``.npy``/``.npz`` file (see
    :func:`load_logits_file`). ``teachers``/``students`` pick models by name (default:
    every model not listed as a student is a teacher, in archive order). ``threads``: see
    :func:`~darkknowledge.diagnostics.api.diagnose_stream`."""
    students = list(students)
    names = None if teachers is None else [*teachers, *students]
    models = load_logits_file(path, targets=targets, names=names, num_params=num_params)
    by_name = {m.name: m for m in models}
    missing = [s for s in students if s not in by_name]
    if missing:
        raise UserError(f"{path} has no logits for student(s) {missing}; available: {sorted(by_name)}")
    t_models = [m for m in models if m.name not in students]
    s_models = [by_name[s] for s in students]
    return diagnose(
        t_models, s_models, temperatures, out_dir, options=options, data={"logits_file": str(path)}, threads=threads
    )
