"""The augmentation-aware teacher-output cache (``engine/cache.py``)."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from darkknowledge.data import build_dataset
from darkknowledge.data.augment import identity_params
from darkknowledge.data.loader import BatchLoader
from darkknowledge.data.splits import Splits, load_splits
from darkknowledge.engine.cache import (
    CachedTeacher,
    build_cache,
    expand_topk,
    make_view_table,
)
from darkknowledge.engine.checkpoint import atomic_torch_save, load_checkpoint, load_model, state_digest
from darkknowledge.engine.factory import build_teacher_signal
from darkknowledge.engine.teacher import LiveTeacher
from darkknowledge.engine.trainer import build_trainer, train
from darkknowledge.errors import UserError
from support import FAST, fast_config, read_metrics

K = 3
PER_CLASS = 5  # 50 training images


@pytest.fixture(scope="module")
def subset():
    return build_dataset("digits", train=True, train_per_class=PER_CLASS)


@pytest.fixture(scope="module")
def teacher_model(teacher_ckpt):
    model, _ = load_model(teacher_ckpt)
    return model


def _build(model, ds, path, **kw):
    opts = dict(
        num_views=K, view_seed=0, storage="full", dtype="float32", precision="fp32", channels_last=False, batch_size=64
    )
    opts.update(kw)
    return build_cache(model, ds, path, **opts)


@pytest.fixture(scope="module")
def cache_fp32(tmp_path_factory, teacher_model, subset) -> Path:
    return _build(teacher_model, subset, tmp_path_factory.mktemp("c") / "fp32")


@pytest.fixture(scope="module")
def cache_fp16(tmp_path_factory, teacher_model, subset) -> Path:
    return _build(teacher_model, subset, tmp_path_factory.mktemp("c") / "fp16", dtype="float16")


@pytest.fixture(scope="module")
def cache_topk(tmp_path_factory, teacher_model, subset) -> Path:
    return _build(teacher_model, subset, tmp_path_factory.mktemp("c") / "topk", storage="topk", topk=3)


def _live(teacher_ckpt) -> LiveTeacher:
    model, _ = load_model(teacher_ckpt)
    return LiveTeacher(model, precision="fp32", channels_last=False)


def _all_views(ds, cache: CachedTeacher, live: LiveTeacher):
    """(cached, live) logits of every (sample, view), batches built by the loader's view replay."""
    cached, ref = [], []
    for v in range(cache.view_table.shape[1]):
        one_view = cache.view_table[:, v : v + 1]  # the loader replays exactly view v of every sample
        loader = BatchLoader(ds, 16, train=True, drop_last=False, seed=v, view_table=one_view, channels_last=False)
        seen = []
        for b in loader.epoch(0):
            assert torch.equal(b.aug_params, cache.view_table[b.indices, v])
            cached.append(cache.logits(b.indices, torch.full_like(b.indices, v)))
            ref.append(live(b))
            seen += b.indices.tolist()
        assert sorted(seen) == list(range(len(ds)))
    return torch.cat(cached), torch.cat(ref)


# ----------------------------------------------------------------------------- contents


def test_layout_and_meta(cache_fp32, subset, teacher_model):
    files = sorted(p.name for p in cache_fp32.iterdir())
    assert files == ["logits.npy", "meta.json", "views.npy"]
    assert not [p for p in cache_fp32.parent.iterdir() if p.name.startswith(".")]  # no temp dir left
    meta = json.loads((cache_fp32 / "meta.json").read_text())
    assert meta["key"]["num_samples"] == 50 and meta["key"]["num_views"] == K
    assert meta["key"]["teacher_digest"] == state_digest(teacher_model.state_dict())
    assert meta["num_classes"] == 10 and meta["storage"] == "full" and meta["dtype"] == "float32"
    logits = np.load(cache_fp32 / "logits.npy")
    assert logits.shape == (50, K, 10) and logits.dtype == np.float32
    plain = cache_fp32.parent / "plain"
    plain.mkdir()
    assert stat.S_IMODE(cache_fp32.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkdtemp's 0700
    plain.rmdir()


def test_view_table(cache_fp32, subset):
    cache = CachedTeacher(cache_fp32)
    table = cache.view_table
    assert table.shape == (50, K, 3) and table.dtype == torch.int64
    assert torch.equal(table[:, 0], identity_params(50, subset.spec.augment))  # view 0 = un-augmented
    assert table[:, :, :2].min() >= 0 and table[:, :, :2].max() <= 2 * subset.spec.augment.pad
    assert (table[:, :, 2] == 0).all()  # digits: no flips
    assert not torch.equal(table[:, 1], table[:, 2])
    assert torch.equal(table, make_view_table(subset, K, 0))
    assert not torch.equal(table, make_view_table(subset, K, 1))


def test_cached_logits_equal_live_teacher_on_every_view(cache_fp32, subset, teacher_ckpt):
    cached, live = _all_views(subset, CachedTeacher(cache_fp32), _live(teacher_ckpt))
    assert cached.shape == (50 * K, 10)
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-5)
    # the views really differ (an augmentation-unaware cache would not notice)
    c = CachedTeacher(cache_fp32)
    all_idx = torch.arange(50)
    assert not torch.allclose(c.logits(all_idx, torch.zeros_like(all_idx)), c.logits(all_idx, torch.ones_like(all_idx)))


def test_cache_follows_the_loaders_random_views(cache_fp32, subset, teacher_ckpt):
    cache, live = CachedTeacher(cache_fp32), _live(teacher_ckpt)
    loader = BatchLoader(subset, 16, train=True, seed=5, view_table=cache.view_table, channels_last=False)
    used = set()
    for epoch in range(3):
        for b in loader.epoch(epoch):
            torch.testing.assert_close(cache(b), live(b), rtol=1e-5, atol=1e-5)
            used |= set(b.views.tolist())
    assert used == set(range(K))


def test_fp16_storage_is_the_rounded_live_logits(cache_fp16, subset, teacher_ckpt):
    cache = CachedTeacher(cache_fp16)
    assert np.load(cache_fp16 / "logits.npy", mmap_mode="r").dtype == np.float16
    cached, live = _all_views(subset, cache, _live(teacher_ckpt))
    assert torch.equal(cached, cached.half().float())  # stored values are fp16 numbers
    # within half an fp16 ulp of the live value (plus float noise across batch compositions)
    ulp = torch.finfo(torch.float16).eps * torch.exp2(torch.floor(torch.log2(live.abs().clamp_min(2**-14))))
    assert ((cached - live).abs() <= 0.5 * ulp + 1e-5).all()
    assert (cached - live).abs().max() > 0  # really rounded


def test_topk_storage(cache_topk, subset, teacher_ckpt):
    cache = CachedTeacher(cache_topk)
    assert sorted(p.name for p in cache_topk.iterdir()) == [
        "lse.npy",
        "meta.json",
        "topk_indices.npy",
        "topk_values.npy",
        "views.npy",
    ]
    expanded, live = _all_views(subset, cache, _live(teacher_ckpt))
    p_cache, p_live = F.softmax(expanded, 1), F.softmax(live, 1)
    top_live = live.topk(3, dim=1)
    top_idx = top_live.indices
    torch.testing.assert_close(p_cache.gather(1, top_idx), p_live.gather(1, top_idx), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_cache.sum(1), torch.ones(len(live)), rtol=0, atol=1e-5)
    assert torch.equal(expanded.topk(3, dim=1).indices.sort(1).values, top_idx.sort(1).values)
    # the tail is uniform and keeps the live tail mass
    mask = torch.ones_like(p_cache, dtype=torch.bool).scatter_(1, top_idx, False)
    tail = p_cache[mask].view(len(live), 7)
    torch.testing.assert_close(tail, tail[:, :1].expand_as(tail))
    torch.testing.assert_close(tail.sum(1), p_live[mask].view(len(live), 7).sum(1), rtol=1e-4, atol=1e-6)


def test_expand_topk_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    vals, idx = logits.topk(2, dim=1)
    lse = torch.logsumexp(logits, dim=1)
    out = expand_topk(vals, idx, lse, 5)
    p, q = F.softmax(out, 1), F.softmax(logits, 1)
    torch.testing.assert_close(p.gather(1, idx), q.gather(1, idx))
    torch.testing.assert_close(p.sum(1), torch.ones(2))
    tail0 = (1 - q[0, [0, 4]].sum()) / 3
    torch.testing.assert_close(p[0, [1, 2, 3]], tail0.expand(3))
    torch.testing.assert_close(p[1], torch.full((5,), 0.2))  # uniform stays uniform


def test_build_argument_checks(tmp_path, teacher_model, subset):
    with pytest.raises(UserError, match="storage"):
        _build(teacher_model, subset, tmp_path / "a", storage="half")
    with pytest.raises(UserError, match="dtype"):
        _build(teacher_model, subset, tmp_path / "a", dtype="int8")
    with pytest.raises(UserError, match="topk"):
        _build(teacher_model, subset, tmp_path / "a", storage="topk", topk=10)
    other = build_dataset("digits", train=True, classes=[0, 1, 2], train_per_class=2)
    with pytest.raises(UserError, match="classes"):
        _build(teacher_model, other, tmp_path / "a")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- stale / damaged caches


@pytest.fixture
def teacher_b(tmp_path, teacher_ckpt) -> Path:
    """Teacher A's checkpoint with one weight changed slightly."""
    ckpt = load_checkpoint(teacher_ckpt)
    ckpt["model"]["classifier.bias"] = ckpt["model"]["classifier.bias"] + 1e-3
    path = tmp_path / "teacher_b.pt"
    atomic_torch_save(ckpt, path)
    return path


def test_cache_of_another_teacher_is_refused(tmp_path, cache_fp32, subset, teacher_b, teacher_ckpt):
    model_b, _ = load_model(teacher_b)
    with pytest.raises(UserError, match="other teacher"):
        CachedTeacher(cache_fp32).check_matches(subset, state_digest(model_b.state_dict()))
    cfg = fast_config(
        tmp_path, "data.train_per_class=5", f"teacher.checkpoint={teacher_b}", f"teacher.cache={cache_fp32}"
    )
    with pytest.raises(UserError, match="other teacher"):
        build_teacher_signal(cfg, Splits(subset, None, subset), torch.device("cpu"))
    # teacher A is fine
    cfg = fast_config(
        tmp_path, "data.train_per_class=5", f"teacher.checkpoint={teacher_ckpt}", f"teacher.cache={cache_fp32}"
    )
    assert build_teacher_signal(cfg, Splits(subset, None, subset), torch.device("cpu")).num_classes == 10


@pytest.mark.parametrize(
    "change", [dict(train_per_class=6), dict(train_per_class=5, seed=1), dict(train_per_class=5, image_size=10)]
)
def test_cache_of_other_data_is_refused(cache_fp32, change):
    other = build_dataset("digits", train=True, **change)
    with pytest.raises(UserError, match="other data"):
        CachedTeacher(cache_fp32).check_matches(other)


def test_cache_with_other_augmentation_is_refused(cache_fp32, subset):
    other = subset.with_spec(augment=type(subset.spec.augment)(pad=2, flip=False))
    with pytest.raises(UserError, match="augmentation"):
        CachedTeacher(cache_fp32).check_matches(other)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_array_is_refused(tmp_path, cache_fp32):
    c = _copy(cache_fp32, tmp_path / "c")
    data = (c / "logits.npy").read_bytes()
    (c / "logits.npy").write_bytes(data[:-40])
    with pytest.raises(UserError, match="truncated"):
        CachedTeacher(c)


def test_flipped_byte_is_refused(tmp_path, cache_fp32):
    c = _copy(cache_fp32, tmp_path / "c")
    data = bytearray((c / "logits.npy").read_bytes())
    data[len(data) // 2] ^= 0x01
    (c / "logits.npy").write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        CachedTeacher(c)
    CachedTeacher(c, verify=False)  # sizes still match: only the checksum catches it


def test_missing_or_broken_meta(tmp_path, cache_fp32):
    with pytest.raises(UserError, match="not found"):
        CachedTeacher(tmp_path / "nothing")
    c = _copy(cache_fp32, tmp_path / "c")
    (c / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted"):
        CachedTeacher(c)
    (c / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="not a darkknowledge"):
        CachedTeacher(c)
    c2 = _copy(cache_fp32, tmp_path / "c2")
    (c2 / "views.npy").unlink()
    with pytest.raises(UserError, match="missing"):
        CachedTeacher(c2)


def test_existing_path_without_overwrite(tmp_path, teacher_model, subset, cache_fp32):
    c = _copy(cache_fp32, tmp_path / "c")
    before = {f.name: f.read_bytes() for f in c.iterdir()}
    with pytest.raises(UserError, match="already exists"):
        _build(teacher_model, subset, c, num_views=2)
    assert {f.name: f.read_bytes() for f in c.iterdir()} == before
    # with overwrite: replaced, no temporary directory left behind
    _build(teacher_model, subset, c, num_views=2, overwrite=True)
    assert CachedTeacher(c).key["num_views"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_cache_missing_for_run_without_checkpoint(tmp_path, subset):
    cfg = fast_config(tmp_path, "data.train_per_class=5", f"teacher.cache={tmp_path / 'none'}")
    with pytest.raises(UserError, match="does not exist"):
        build_teacher_signal(cfg, Splits(subset, None, subset), torch.device("cpu"))


# ----------------------------------------------------------------------------- distillation from a cache


DISTILL = [
    "model.name=cnn_w4",
    "data.train_per_class=10",
    "data.test_per_class=5",
    "data.batch_size=16",
    "optim.epochs=1",
    "method.name=kd",
]


def test_distill_from_cache_built_on_the_fly_and_reused(tmp_path, teacher_ckpt):
    cache_dir = tmp_path / "cache"
    extra = [
        f"teacher.checkpoint={teacher_ckpt}",
        f"teacher.cache={cache_dir}",
        "teacher.build=true",
        "teacher.views=2",
    ]
    s1 = train(fast_config(tmp_path, *DISTILL, *extra, "name=a"))
    assert (cache_dir / "meta.json").is_file()
    assert s1["teacher"]["kind"] == "cache"
    line = read_metrics(s1["run_dir"])[0]
    assert math.isfinite(line["loss/kd"]) and line["loss/kd"] > 0 and "loss/ce" in line
    meta = json.loads((cache_dir / "meta.json").read_text())
    assert meta["key"]["num_views"] == 2 and meta["key"]["num_samples"] == 100
    stamps = {f.name: f.stat().st_mtime_ns for f in cache_dir.iterdir()}

    s2 = train(fast_config(tmp_path, *DISTILL, *extra, "name=b"))
    assert {f.name: f.stat().st_mtime_ns for f in cache_dir.iterdir()} == stamps  # reused, not rebuilt
    assert read_metrics(s2["run_dir"])[0]["loss/kd"] == line["loss/kd"]  # same seed, same cached signal
    # a run on other data with the same cache path: an error, not a silent reuse
    with pytest.raises(UserError, match="other data"):
        train(fast_config(tmp_path, *DISTILL, *extra, "data.train_per_class=11", "name=c"))


def test_cached_and_live_distillation_see_the_same_teacher(tmp_path, teacher_ckpt):
    """The kd loss on every batch of a cached run equals the live teacher's on the same images."""
    cfg = fast_config(
        tmp_path,
        *DISTILL,
        f"teacher.checkpoint={teacher_ckpt}",
        f"teacher.cache={tmp_path / 'c'}",
        "teacher.build=true",
        "name=x",
    )
    trainer = build_trainer(cfg)
    live = _live(teacher_ckpt)
    for b in trainer.loader.epoch(0):
        torch.testing.assert_close(trainer.teacher(b), live(b), rtol=2**-10, atol=1e-3)  # fp16 storage


def test_cache_with_augmentation_off_replays_the_plain_view(tmp_path, teacher_ckpt):
    cfg = fast_config(
        tmp_path,
        *DISTILL,
        "data.augment=false",
        f"teacher.checkpoint={teacher_ckpt}",
        f"teacher.cache={tmp_path / 'c'}",
        "teacher.build=true",
        "name=noaug",
    )
    trainer = build_trainer(cfg)
    n = 0
    for b in trainer.loader.epoch(0):
        assert torch.equal(b.aug_params, identity_params(len(b), trainer.spec.augment)), "student saw augmented images"
        n += len(b)
    assert n > 0
    train(cfg)


def test_method_with_setup_pass_works_from_a_cache(tmp_path, teacher_ckpt):
    # fgcr runs the teacher over the un-augmented training set in setup()
    cfg = fast_config(
        tmp_path,
        *[o for o in DISTILL if not o.startswith("method.")],
        "method.name=fgcr",
        f"teacher.checkpoint={teacher_ckpt}",
        f"teacher.cache={tmp_path / 'c'}",
        "teacher.build=true",
        "name=fgcr",
    )
    summary = train(cfg)
    assert summary["teacher"]["kind"] == "cache"


# ----------------------------------------------------------------------------- CLI


def test_cache_cli(tmp_path, capsys, teacher_ckpt):
    from darkknowledge.cli.main import main

    path = tmp_path / "cli-cache"
    args = ["cache", "build", str(path), f"teacher.checkpoint={teacher_ckpt}", "data.train_per_class=3", *FAST]
    assert main(args + ["--views", "2", "--dtype", "float32"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["key"]["num_views"] == 2 and meta["key"]["num_samples"] == 30 and meta["dtype"] == "float32"
    assert main(["cache", "info", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == meta
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and len(err.strip().splitlines()) == 1
    assert main(args + ["--overwrite", "--storage", "topk", "--topk", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"] == "topk"
    assert main(["cache", "build", str(tmp_path / "x"), "data.train_per_class=3"]) == 2
    assert "teacher.checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the signal's interface


def test_views_to_replay_are_part_of_the_signal(cache_fp32, teacher_ckpt):
    cache = CachedTeacher(cache_fp32)
    assert torch.equal(cache.replay_views(), cache.view_table) and cache.replay_views().shape[1] == K
    assert _live(teacher_ckpt).replay_views() is None  # a live teacher answers for any view


def _cache_for_run(cfg, teacher_model, path, with_eval: bool):
    splits = load_splits(cfg.data)
    train_set, test_set = splits.train, splits.test
    return _build(
        teacher_model,
        train_set,
        path,
        num_views=2,
        view_seed=0,
        eval_dataset=test_set if with_eval else None,
    )


def test_cached_run_logs_teacher_agreement_and_rank_fidelity(tmp_path, teacher_ckpt, teacher_model):
    """A cache built with the test split gives the trainer the teacher's test logits, so a
    cached run logs agreement and rank fidelity like a live run (same logits: fp32)."""
    live_cfg = fast_config(tmp_path, *DISTILL, f"teacher.checkpoint={teacher_ckpt}", "name=live")
    cache_dir = _cache_for_run(live_cfg, teacher_model, tmp_path / "c", with_eval=True)
    assert "eval_logits.npy" in {p.name for p in cache_dir.iterdir()}
    cached = build_trainer(fast_config(tmp_path, *DISTILL, f"teacher.cache={cache_dir}", "name=cached"))
    live = build_trainer(live_cfg)
    torch.testing.assert_close(
        cached.evaluator.teacher_logits("test"), live.evaluator.teacher_logits("test"), rtol=1e-5, atol=1e-5
    )
    metrics = cached.evaluate()
    assert 0 <= metrics["test/teacher_agreement"] <= 100 and -1 <= metrics["test/rank_fidelity"] <= 1
    summary = cached.fit()
    assert summary["teacher"]["eval_logits"] is True
    assert "test/teacher_agreement" in read_metrics(summary["run_dir"])[-1]


def test_cache_without_or_with_other_eval_split_gives_no_test_logits(tmp_path, teacher_ckpt, teacher_model):
    cfg = fast_config(tmp_path, *DISTILL, "name=x")
    plain = CachedTeacher(_cache_for_run(cfg, teacher_model, tmp_path / "plain", with_eval=False))
    with_eval = CachedTeacher(_cache_for_run(cfg, teacher_model, tmp_path / "eval", with_eval=True))
    other_test = build_dataset("digits", train=False, train_per_class=4)
    assert plain.eval_logits(other_test) is None and with_eval.eval_logits(other_test) is None
    metrics = build_trainer(fast_config(tmp_path, *DISTILL, f"teacher.cache={tmp_path / 'plain'}", "name=p")).evaluate()
    assert "test/teacher_agreement" not in metrics  # said in docs/teachers.md: build the cache with the test split


def test_cache_built_on_the_fly_and_by_the_cli_keeps_test_logits(tmp_path, teacher_ckpt):
    from darkknowledge.cli.main import main

    summary = train(
        fast_config(
            tmp_path,
            *DISTILL,
            f"teacher.checkpoint={teacher_ckpt}",
            f"teacher.cache={tmp_path / 'fly'}",
            "teacher.build=true",
            "teacher.cache_views=1",
            "name=fly",
        )
    )
    assert summary["teacher"]["eval_logits"] is True and "test/teacher_agreement" in summary["final"]
    assert (
        main(["cache", "build", str(tmp_path / "cli"), f"teacher.checkpoint={teacher_ckpt}", "--views", "1", *DISTILL])
        == 0
    )
    assert (tmp_path / "cli" / "eval_logits.npy").is_file()


@pytest.mark.parametrize("fixture", ["cache_fp32", "cache_fp16", "cache_topk"])
def test_resident_cache_replays_the_same_logits(request, fixture, subset):
    """Held in the device's memory (the CUDA default when it fits; forced here on the CPU), a
    cache gathers the same logits as from its memory-mapped files."""
    path = request.getfixturevalue(fixture)
    mapped, resident = CachedTeacher(path, resident=False), CachedTeacher(path, resident=True)
    assert not mapped.resident and resident.resident and resident.describe()["resident"]
    assert not CachedTeacher(path).resident  # on a CPU the memory map already is the device's memory
    loader = BatchLoader(subset, 16, train=True, seed=3, view_table=mapped.view_table, channels_last=False)
    for b in loader.epoch(0):
        assert torch.equal(resident(b), mapped(b))
