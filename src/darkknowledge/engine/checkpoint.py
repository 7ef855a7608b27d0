"""Checkpoints and run files, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives::

    {"format": "darkknowledge-checkpoint", "version": 1,
     "model_name", "num_classes", "in_channels", "data": {spec fields},
     "model": state_dict, "optimizer": ..., "method": state_dict,
     "epoch": completed epochs, "metrics": {...}, "best_top1": float,
     "config": resolved YAML text, "rng": {...}}

Every write goes to a temporary file in the target directory and is renamed into
place, so a killed process never leaves a half-written ``last.pt``.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkknowledge.data.base import AugmentSpec, DataSpec
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write

FORMAT = "darkknowledge-checkpoint"
VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def spec_to_dict(spec: DataSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["image_size"] = list(spec.image_size)
    d["mean"], d["std"] = list(spec.mean), list(spec.std)
    d["class_names"] = list(spec.class_names)
    return d


def spec_from_dict(d: dict[str, Any]) -> DataSpec:
    d = dict(d)
    d["augment"] = AugmentSpec(**d.get("augment", {}))
    d["image_size"] = tuple(d["image_size"])
    d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
    d["class_names"] = tuple(d.get("class_names", ()))
    return DataSpec(**d)


def _check_zip_crc(path: Path) -> None:
    """torch.load does not verify the CRC-32 of a zip checkpoint's members, so a flipped
    byte in a tensor would load silently; check them first (legacy non-zip files pass)."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"CRC check failed for {bad}")


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an error message, whole words, at most ``limit`` characters."""
    line = text.splitlines()[0]
    sentence = line.split(". ")[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a darkknowledge checkpoint safely; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist (expected a best.pt/last.pt written by `darkknowledge train`)"
        )
    try:
        _check_zip_crc(path)
        with warnings.catch_warnings():  # the reason goes into our one-line error, not torch's warnings
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # torch names the refused global: anything else is damage
            raise UserError(
                f"checkpoint {path} is corrupted or not a torch checkpoint ({_first_sentence(str(exc))}); "
                "re-create it or point to another file"
            ) from None
        raise UserError(
            f"checkpoint {path} holds Python objects other than tensors and plain data; it was refused "
            "(loading them could run code): point to a checkpoint written by darkknowledge"
        ) from None
    except Exception as exc:
        reason = _first_sentence(str(exc)) if str(exc) else type(exc).__name__
        raise UserError(
            f"checkpoint {path} is corrupted or not a torch checkpoint ({reason}); re-create it or point to another file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {path} is not a darkknowledge checkpoint (no 'format' tag); train it with `darkknowledge train`"
        )
    if ckpt.get("version", 0) > VERSION:
        raise UserError(
            f"checkpoint {path} has format version {ckpt['version']}, newer than this darkknowledge ({VERSION}); upgrade"
        )
    _check_fields(ckpt, path)
    return ckpt


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """The fields every reader relies on, with their types (a hand-edited or foreign file fails here, in one line)."""
    if not isinstance(ckpt.get("model_name"), str):
        raise UserError(f"checkpoint {path} has no model_name; it is damaged or was not written by darkknowledge")
    for key in ("num_classes", "in_channels"):
        value = ckpt.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"checkpoint {path}: {key} must be a positive integer, got {value!r}; the file is damaged")
    if not isinstance(ckpt.get("model"), dict):
        raise UserError(f"checkpoint {path} holds no model weights; it is damaged or was not written by darkknowledge")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model, load its weights, put it in eval mode."""
    from darkknowledge.models import build_model

    ckpt = load_checkpoint(path)
    model = build_model(ckpt["model_name"], num_classes=int(ckpt["num_classes"]), in_channels=int(ckpt["in_channels"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {path}: weights do not fit model {ckpt['model_name']!r} ({str(exc).splitlines()[0][:120]})"
        ) from None
    return model.to(device).eval(), ckpt


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a model's weights (independent of file layout)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
