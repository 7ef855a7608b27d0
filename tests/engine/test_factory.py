"""The factory gives the trainer its parts: teacher kinds (no silent cache build, module teachers),
splits given as a unit (validation rows never leak into training), the teacher's input geometry."""

from __future__ import annotations

import textwrap

import pytest
import torch

from darkknowledge.config import CacheTeacher, CheckpointTeacher, ModuleTeacher, NoTeacher, load_config
from darkknowledge.data.splits import Splits, load_splits
from darkknowledge.engine.factory import build_parts
from darkknowledge.errors import UserError
from support import fast_config

STUDENT = ["model.name=cnn_w4", "data.train_per_class=10", "data.test_per_class=4", "optim.epochs=1"]


@pytest.mark.parametrize(
    "overrides, kind",
    [
        ([], NoTeacher),
        (["teacher.checkpoint=t.pt"], CheckpointTeacher),
        (["teacher.cache=c", "teacher.checkpoint=t.pt"], CacheTeacher),
        (["teacher.module=pkg.mod:make"], ModuleTeacher),
        (["teacher.kind=cache", "teacher.cache=c"], CacheTeacher),
    ],
)
def test_teacher_kind_is_named_or_told_by_its_one_source(overrides, kind):
    assert type(load_config(overrides=overrides).teacher) is kind


def test_a_key_of_another_teacher_kind_is_an_error_naming_it():
    with pytest.raises(UserError, match=r"teacher\.views: unknown key"):
        load_config(overrides=["teacher.checkpoint=t.pt", "teacher.views=4"])
    with pytest.raises(UserError, match=r"teacher\.cache: unknown key"):
        load_config(overrides=["teacher.kind=checkpoint", "teacher.checkpoint=t.pt", "teacher.cache=c"])


def test_a_missing_cache_is_an_error_not_a_silent_build(tmp_path, teacher_ckpt):
    cache = tmp_path / "cache"
    cfg = fast_config(
        tmp_path, *STUDENT, "method.name=kd", f"teacher.checkpoint={teacher_ckpt}", f"teacher.cache={cache}"
    )
    with pytest.raises(UserError, match="teacher.build=true"):
        build_parts(cfg)
    assert not cache.exists()
    built = build_parts(cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"build": True})}))
    assert (cache / "meta.json").is_file() and built.teacher is not None and built.teacher.describe()["kind"] == "cache"


def test_module_teacher_from_the_config(tmp_path, monkeypatch):
    (tmp_path / "dk_test_teacher.py").write_text(
        textwrap.dedent(
            """
            import torch

            def make():
                torch.manual_seed(0)
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = fast_config(tmp_path, *STUDENT, "method.name=kd", "teacher.module=dk_test_teacher:make")
    parts = build_parts(cfg)
    assert parts.teacher is not None and parts.teacher.describe()["name"] == "dk_test_teacher:make"
    batch = next(iter(parts.loader.epoch(0)))
    assert parts.teacher(batch).shape == (len(batch), 10)
    with pytest.raises(UserError, match="no callable 'nothing'"):
        build_parts(fast_config(tmp_path, *STUDENT, "method.name=kd", "teacher.module=dk_test_teacher:nothing"))


def test_given_splits_are_used_as_they_are_and_need_their_validation_rows(tmp_path):
    cfg = fast_config(tmp_path, *STUDENT, "data.val_per_class=2")
    splits = load_splits(cfg.data)
    parts = build_parts(cfg, splits=splits)
    assert parts.splits is splits and parts.loader.dataset is splits.train
    train_rows = {tuple(x.flatten().tolist()) for x in splits.train.images}
    assert not any(tuple(x.flatten().tolist()) in train_rows for x in splits.val.images)
    with pytest.raises(UserError, match="no validation split"):
        build_parts(cfg, splits=Splits(splits.train, None, splits.test))


def test_a_teacher_trained_at_another_image_size_is_refused(tmp_path, teacher_ckpt):
    cfg = fast_config(tmp_path, *STUDENT, "method.name=kd", f"teacher.checkpoint={teacher_ckpt}", "data.image_size=16")
    with pytest.raises(UserError, match=r"trained on 8x8 images but the data gives 16x16; set data.image_size=8"):
        build_parts(cfg)


@pytest.mark.parametrize("epochs", ["[0]", "[-1]", "[99]"])
def test_kept_epochs_must_be_epochs_of_the_run(epochs):
    with pytest.raises(UserError, match=r"engine.keep_epochs: epoch -?\d+ is not an epoch of this run \(1..5"):
        load_config(overrides=["optim.epochs=5", f"engine.keep_epochs={epochs}"])


def test_the_method_is_built_from_the_validated_params_object(tmp_path):
    cfg = fast_config(tmp_path, *STUDENT, "method.name=kd", "method.temperature=3", "teacher.checkpoint=unused.pt")
    params = cfg.method.params
    from darkknowledge.methods import build_method

    method = build_method(cfg.method.name, params, num_classes=10)
    assert method.params is params and method.params.temperature == 3


def test_threads_are_applied_once_per_process(tmp_path, monkeypatch):
    from darkknowledge.engine import runtime

    calls = []
    monkeypatch.setattr(runtime, "_applied", {})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    for _ in range(3):
        runtime.apply_runtime(1)
    runtime.apply_runtime(None)
    assert calls == [1]
