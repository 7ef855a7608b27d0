"""The validation split: held out of training, deterministic, disjoint, the same for every run."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.config import DataConfig
from darkknowledge.data.splits import load_split, load_splits
from darkknowledge.errors import UserError


def _rows(ds) -> set[bytes]:
    return {img.numpy().tobytes() for img in ds.images}


def test_val_is_held_out_of_train_per_class_and_deterministic():
    data = DataConfig(name="digits", val_per_class=10)
    full = load_split(DataConfig(name="digits"), "train")
    train, val, test = load_splits(data)
    assert len(val) == 10 * 10 and len(train) + len(val) == len(full)
    assert torch.bincount(val.targets, minlength=10).tolist() == [10] * 10
    assert not _rows(train) & _rows(val)
    again = load_split(data, "val")
    assert torch.equal(again.images, val.images) and torch.equal(load_split(data, "train").images, train.images)
    assert torch.equal(test.images, load_split(DataConfig(name="digits"), "test").images)  # the test split is untouched
    other = load_split(DataConfig(name="digits", val_per_class=10, subset_seed=1), "val")
    assert not torch.equal(other.images, val.images)


def test_val_errors():
    with pytest.raises(UserError, match="no validation split"):
        load_split(DataConfig(name="digits"), "val")
    with pytest.raises(UserError, match="leaves no training image"):
        load_split(DataConfig(name="digits", train_per_class=5, val_per_class=5), "train")
    with pytest.raises(UserError, match="unknown split"):
        load_split(DataConfig(name="digits"), "dev")


def test_training_selects_on_validation_and_reports_test_once(tmp_path):
    from darkknowledge.engine.checkpoint import load_checkpoint
    from darkknowledge.engine.trainer import train
    from support import fast_config, read_metrics

    summary = train(fast_config(tmp_path, "model.name=mlp_h32", "optim.epochs=3", "data.val_per_class=15", "name=v"))
    records = read_metrics(tmp_path / "v")
    assert all("val/top1" in r for r in records)
    assert [("test/top1" in r) for r in records] == [False, False, True]  # test only after training
    assert summary["selection"] == "val"
    best_epoch = max(range(3), key=lambda e: (records[e]["val/top1"], -e))
    assert summary["best"]["epoch"] == best_epoch and summary["best"]["val/top1"] == records[best_epoch]["val/top1"]
    assert 0 <= summary["best"]["test/top1"] <= 100 and "test/top1" in summary["final"]
    assert load_checkpoint(tmp_path / "v" / "best.pt")["epoch"] == best_epoch + 1
    if best_epoch == 2:  # the best checkpoint is the last one: the same test accuracy
        assert summary["best"]["test/top1"] == summary["final"]["test/top1"]
