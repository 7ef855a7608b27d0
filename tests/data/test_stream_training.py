"""The streaming path end to end: a streamed class-folder dataset trains a teacher and distils a
student through the same factory, trainer and evaluation as the in-memory datasets."""

from __future__ import annotations

import pytest

from darkknowledge.config import load_config
from darkknowledge.data.splits import load_splits
from darkknowledge.data.streaming import StreamingDataset, StreamingLoader
from darkknowledge.engine.factory import build_parts
from darkknowledge.errors import UserError
from darkknowledge.runs import train
from support import FAST

STREAM = ["data.stream=true", "data.name=imagefolder", "data.crop_size=24", "data.resize_size=28", "data.workers=0"]
SMALL = ["data.batch_size=6", "data.eval_batch_size=8", "optim.epochs=2", "optim.schedule=constant", "optim.lr=0.05"]


def _config(tmp_path, root, *extra):
    return load_config(
        overrides=[f"output_dir={tmp_path / 'runs'}", *FAST, *STREAM, f"data.root={root}", *SMALL, *extra]
    )


def test_a_streamed_dataset_trains_and_distils_through_the_factory(tmp_path, stream_folders):
    cfg = _config(tmp_path, stream_folders, "model.name=cnn_w8", "data.val_per_class=2", "name=teacher")
    parts = build_parts(cfg)
    assert isinstance(parts.loader, StreamingLoader) and isinstance(parts.splits.train, StreamingDataset)
    assert len(parts.splits.train) == 3 * 8 and len(parts.splits.val) == 3 * 2 and len(parts.splits.test) == 3 * 3
    teacher = train(cfg)
    assert teacher["selection"] == "val" and 0 <= teacher["final"]["test/top1"] <= 100
    assert "val/top1" in teacher["best"]
    student = train(
        _config(
            tmp_path,
            stream_folders,
            "model.name=cnn_w4",
            "data.val_per_class=2",
            "method.name=kd",
            f"teacher.checkpoint={teacher['run_dir']}/last.pt",
            "name=student",
        )
    )
    assert student["teacher"]["kind"] == "live" and "test/teacher_agreement" in student["final"]


def test_streamed_and_in_memory_splits_hold_out_the_same_rule(tmp_path, stream_folders):
    splits = load_splits(_config(tmp_path, stream_folders, "data.val_per_class=3").data)
    held = set(splits.val.describe(i) for i in range(len(splits.val)))
    assert len(held) == 9 and not held & {splits.train.describe(i) for i in range(len(splits.train))}


def test_a_streamed_teacher_at_another_crop_size_is_refused(tmp_path, stream_folders):
    teacher = train(_config(tmp_path, stream_folders, "model.name=cnn_w4", "optim.epochs=1", "name=t24"))

    cfg = _config(
        tmp_path,
        stream_folders,
        "data.crop_size=16",
        "method.name=kd",
        f"teacher.checkpoint={teacher['run_dir']}/last.pt",
        "name=s16",
    )
    with pytest.raises(UserError, match="trained on 24x24 images but the data gives 16x16"):
        build_parts(cfg)


def test_a_streamed_student_distils_from_a_view_cache_built_on_the_fly(tmp_path, stream_folders):
    teacher = train(_config(tmp_path, stream_folders, "model.name=cnn_w8", "optim.epochs=1", "name=vt"))
    cache = tmp_path / "view-cache"
    common = ["model.name=cnn_w4", "method.name=kd", f"teacher.checkpoint={teacher['run_dir']}/last.pt"]
    with pytest.raises(UserError, match="does not exist"):
        build_parts(_config(tmp_path, stream_folders, *common, f"teacher.cache={cache}", "name=s0"))
    cfg = _config(
        tmp_path, stream_folders, *common, f"teacher.cache={cache}", "teacher.build=true", "teacher.views=2",
        "teacher.topk=2", "name=s1",
    )  # fmt: skip
    parts = build_parts(cfg)
    assert parts.teacher.describe()["kind"] == "view_cache" and (cache / "meta.json").is_file()
    assert parts.loader.view_table is not None and parts.loader.view_table.shape[1] == 2
    student = train(cfg)
    assert student["teacher"]["kind"] == "view_cache" and 0 <= student["final"]["test/top1"] <= 100


def test_a_module_teacher_builds_the_view_cache_of_a_streamed_dataset(tmp_path, stream_folders):
    """runs.train(cfg, teacher=module) with teacher.cache + teacher.build over streamed images: the
    view cache is built from the module, keyed by the digest of its weights, and replayed."""
    import torch

    from darkknowledge.engine.checkpoint import state_digest
    from darkknowledge.engine.teacher import teacher_from_module
    from darkknowledge.engine.view_cache import read_view_cache_meta
    from darkknowledge.models import build_model

    torch.manual_seed(0)
    module = build_model("cnn_w8", num_classes=3, in_channels=3)
    cache = tmp_path / "module-view-cache"
    common = ["model.name=cnn_w4", "method.name=kd", f"teacher.cache={cache}", "teacher.views=2", "teacher.topk=2"]
    built = _config(tmp_path, stream_folders, *common, "teacher.build=true", "name=m1")
    student = train(built, teacher=module)
    assert student["teacher"]["kind"] == "view_cache" and 0 <= student["final"]["test/top1"] <= 100
    assert read_view_cache_meta(cache)["key"]["teacher_digest"] == state_digest(module.state_dict())
    # the cache is opened again for the same module, refused for other weights
    reuse = _config(tmp_path, stream_folders, *common, "name=m2")
    assert build_parts(reuse, teacher=module).teacher.describe()["kind"] == "view_cache"
    torch.manual_seed(1)
    with pytest.raises(UserError, match="built from other teacher weights"):
        build_parts(reuse, teacher=build_model("cnn_w8", num_classes=3, in_channels=3))
    # a live signal would leave the cache unused: refused, not silently run live
    with pytest.raises(UserError, match="live teacher signal was given"):
        build_parts(reuse, teacher=teacher_from_module(module, num_classes=3))
    with pytest.raises(UserError, match="needs teacher.checkpoint=PATH or a teacher module"):
        build_parts(_config(tmp_path, stream_folders, *common, "teacher.build=true", "name=m3"))
