"""Checkpoints: atomic writes, safe (weights_only) loading, one-line errors."""

from __future__ import annotations

import pathlib
import pickle
import random
import stat

import pytest
import torch

from darkknowledge.data import build_dataset
from darkknowledge.engine.checkpoint import (
    FORMAT,
    VERSION,
    atomic_torch_save,
    load_checkpoint,
    load_model,
    spec_from_dict,
    spec_to_dict,
    state_digest,
)
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write_json, atomic_write_text
from darkknowledge.models import build_model


def _ckpt(model=None, **extra) -> dict:
    model = model or build_model("cnn_w4", num_classes=10, in_channels=1)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_name": "cnn_w4",
        "num_classes": 10,
        "in_channels": 1,
        "model": model.state_dict(),
        "config": "",
        **extra,
    }


class Payload:
    """Unpickling this would create ``path`` (it must never happen)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _assert_one_line_mentioning(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_torch_save(_ckpt(), tmp_path / "a.pt")
    atomic_write_text(tmp_path / "b.txt", "hello\n")
    atomic_write_json(tmp_path / "sub" / "c.json", {"x": 1})
    atomic_write_text(tmp_path / "b.txt", "again\n")  # replace
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.pt", "b.txt", "c.json", "sub"]
    assert (tmp_path / "b.txt").read_text() == "again\n"
    assert load_checkpoint(tmp_path / "a.pt")["format"] == FORMAT


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.pt"
    atomic_torch_save(_ckpt(), target)
    before = target.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the Python version
        atomic_torch_save({"bad": lambda: 0}, target)  # lambdas cannot be pickled
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    atomic_write_text(tmp_path / "x.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


# ----------------------------------------------------------------------------- loading


def test_round_trip_and_load_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn_w4", num_classes=10, in_channels=1)
    atomic_torch_save(_ckpt(model), tmp_path / "m.pt")
    loaded, ckpt = load_model(tmp_path / "m.pt")
    assert not loaded.training
    assert state_digest(loaded.state_dict()) == state_digest(model.state_dict())
    assert ckpt["model_name"] == "cnn_w4"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError) as exc:
        load_checkpoint(tmp_path / "nope.pt")
    assert "does not exist" in _assert_one_line_mentioning(exc, tmp_path / "nope.pt")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.6, 0.95])
def test_truncated_checkpoint(tmp_path, keep):
    path = tmp_path / "last.pt"
    atomic_torch_save(_ckpt(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    _assert_one_line_mentioning(exc, path)


def test_flipped_byte_in_weights_is_detected(tmp_path):
    # torch.load does not check CRCs: a flipped byte inside a tensor loads silently unless checked
    path = tmp_path / "last.pt"
    model = build_model("cnn_w4", num_classes=10, in_channels=1)
    atomic_torch_save(_ckpt(model), path)
    data = bytearray(path.read_bytes())
    needle = model.state_dict()["classifier.weight"].numpy().tobytes()[:16]
    pos = bytes(data).find(needle)
    assert pos > 0
    data[pos + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    assert "corrupted" in _assert_one_line_mentioning(exc, path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_garbage_files(tmp_path):
    path = tmp_path / "best.pt"
    path.write_text("name: not a checkpoint\n")
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    _assert_one_line_mentioning(exc, path)
    # random bytes make the unpickler raise all sorts of errors (IndexError, KeyError, struct.error, ...):
    # every one must become a UserError
    for seed in range(400):
        r = random.Random(seed)
        path.write_bytes(bytes(r.getrandbits(8) for _ in range(r.choice([1, 2, 8, 64, 4096]))))
        with pytest.raises(UserError):
            load_checkpoint(path)


@pytest.mark.parametrize("obj", [{"model": {"w": torch.zeros(2)}}, torch.zeros(3), [1, 2], {"format": "other"}])
def test_non_darkknowledge_torch_file(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    assert "not a darkknowledge checkpoint" in _assert_one_line_mentioning(exc, path)


def test_newer_format_version(tmp_path):
    path = tmp_path / "future.pt"
    torch.save(_ckpt(version=VERSION + 1), path)
    with pytest.raises(UserError, match="newer"):
        load_checkpoint(path)


def test_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save(_ckpt(extra=Payload(marker)), path)
    # sanity: an unsafe load really would run it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    _assert_one_line_mentioning(exc, path)
    assert not marker.exists()
    with pytest.raises(UserError):
        load_model(path)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_model(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_ckpt(model=build_model("cnn_w8", num_classes=10, in_channels=1)), path)  # says cnn_w4
    with pytest.raises(UserError) as exc:
        load_model(path)
    assert "cnn_w4" in _assert_one_line_mentioning(exc, path)


def test_unknown_model_name_in_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_ckpt(model_name="no_such_net"), path)
    with pytest.raises(UserError, match="no_such_net"):
        load_model(path)


# ----------------------------------------------------------------------------- helpers


def test_state_digest():
    torch.manual_seed(0)
    m = build_model("cnn_w4", num_classes=10, in_channels=1)
    d = state_digest(m.state_dict())
    assert d == state_digest({k: v.clone() for k, v in m.state_dict().items()})
    m.to(memory_format=torch.channels_last)
    assert state_digest(m.state_dict()) == d  # layout does not matter
    with torch.no_grad():
        m.classifier.bias[0] += 1e-6
    assert state_digest(m.state_dict()) != d
    m2 = build_model("cnn_w4", num_classes=10, in_channels=1)
    m2.load_state_dict(m.state_dict())
    m2.features[1].running_mean[0] += 1  # BN statistics count
    assert state_digest(m2.state_dict()) != state_digest(m.state_dict())


def test_spec_round_trip():
    spec = build_dataset("digits", train=True, classes=[3, 5], train_per_class=2).spec
    assert spec_from_dict(spec_to_dict(spec)) == spec
