"""The streaming full-resolution data path: determinism, sharding, replay, splits, shards, the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darkknowledge.data.jpeg import decode_one, have_simplejpeg
from darkknowledge.data.streaming import StreamingLoader, build_splits, eval_batches, held_out_rows, view_uniforms
from darkknowledge.data.views import apply_view, sample_crop_views

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "imagenet_sample"


def _epoch(loader, e):
    return [(b.indices.clone(), b.images.clone(), b.targets.clone(), b.aug_params.clone()) for b in loader.epoch(e)]


def test_order_and_views_depend_only_on_seed_and_epoch(stream_folders, stream_helpers):
    train, val, test = build_splits(stream_helpers.stream_config(stream_folders))
    assert val is None and len(train) == 30 and len(test) == 9 and train.spec.num_classes == 3
    a = StreamingLoader(train, 8, train=True, seed=3, workers=0)
    b = StreamingLoader(train, 5, train=True, seed=3, workers=2)  # other batch size and worker count
    ea, eb = _epoch(a, 1), _epoch(b, 1)
    assert len(ea) == len(a) == 3 and len(eb) == len(b) == 6
    rows_a = torch.cat([x[0] for x in ea])
    rows_b = torch.cat([x[0] for x in eb])
    assert torch.equal(rows_a, rows_b[: len(rows_a)])  # the same permutation
    img_a = dict(zip(rows_a.tolist(), torch.cat([x[1] for x in ea])))
    img_b = dict(zip(rows_b.tolist(), torch.cat([x[1] for x in eb])))
    for r in rows_a.tolist():  # and every sample's view is the same, whatever the batching
        assert torch.equal(img_a[r], img_b[r])
    again = _epoch(StreamingLoader(train, 8, train=True, seed=3, workers=1), 1)
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[0], y[0]) for x, y in zip(ea, again))
    other_epoch = _epoch(a, 2)
    assert not torch.equal(torch.cat([x[0] for x in other_epoch]), rows_a)
    other_seed = _epoch(StreamingLoader(train, 8, train=True, seed=4, workers=0), 1)
    assert not torch.equal(torch.cat([x[3] for x in other_seed]), torch.cat([x[3] for x in ea]))
    # labels follow the rows; images are normalised floats, channels_last by default
    for rows, images, targets, _ in ea:
        assert torch.equal(targets, train.targets[rows])
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 24, 24)
        assert images.is_contiguous(memory_format=torch.channels_last)
    plain = next(iter(StreamingLoader(train, 8, train=True, channels_last=False, workers=0).epoch(0)))
    assert plain.images.is_contiguous()


def test_uniforms_are_counter_based():
    u = view_uniforms(7, 2, np.array([0, 5, 9]))
    assert u.shape == (3, 41) and (u >= 0).all() and (u < 1).all()
    np.testing.assert_array_equal(u[1], view_uniforms(7, 2, np.array([5]))[0])
    assert not np.array_equal(u, view_uniforms(7, 3, np.array([0, 5, 9])))
    assert not np.array_equal(u, view_uniforms(8, 2, np.array([0, 5, 9])))
    big = view_uniforms(0, 0, np.arange(2000)).ravel()
    assert abs(big.mean() - 0.5) < 0.01


def test_rank_shards_partition_the_single_process_epoch(stream_folders, stream_helpers):
    train, _, test = build_splits(stream_helpers.stream_config(stream_folders))
    single = torch.cat([b.indices for b in StreamingLoader(train, 6, train=True, seed=1, workers=0).epoch(0)])
    shards = [StreamingLoader(train, 3, train=True, seed=1, rank=r, world_size=2, workers=0) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    parts = [torch.cat([b.indices for b in s.epoch(0)]) for s in shards]
    assert torch.equal(parts[0], single[0::2]) and torch.equal(parts[1], single[1::2])
    evals = [
        torch.cat([b.indices for b in StreamingLoader(test, 4, train=False, rank=r, world_size=2, workers=0).epoch(0)])
        for r in range(2)
    ]
    assert sorted(torch.cat(evals).tolist()) == list(range(len(test)))


def test_evaluation_is_the_centre_view_in_order(stream_folders, stream_helpers):
    _, _, test = build_splits(stream_helpers.stream_config(stream_folders))
    batches = list(StreamingLoader(test, 4, train=False, workers=0).epoch(0))
    assert torch.equal(torch.cat([b.indices for b in batches]), torch.arange(len(test)))
    views = torch.cat([b.aug_params for b in batches])
    again = list(eval_batches(test, 5, workers=1))
    assert torch.equal(torch.cat([b.images for b in again]), torch.cat([b.images for b in batches]))
    assert (views[:, 4] == 0).all() and torch.allclose(views[:, 2:4].max(1).values, torch.tensor(24 / 28))


def test_view_table_replay(stream_folders, stream_helpers):
    train, _, _ = build_splits(stream_helpers.stream_config(stream_folders))
    sizes = [train.original_size(i) for i in range(len(train))]
    table = sample_crop_views(sizes, 3, torch.Generator().manual_seed(0))
    loader = StreamingLoader(train, 7, train=True, seed=2, view_table=table, workers=0)
    seen = 0
    for batch in loader.epoch(0):
        assert batch.views is not None
        expect = table[batch.indices, batch.views]
        assert torch.equal(batch.aug_params, expect)
        # the pixels are the stored view of the file, decoded afresh
        i, v = int(batch.indices[0]), int(batch.views[0])
        data = Path(train.describe(i)).read_bytes()
        stored = table[i, v].numpy()
        pixels, _ = decode_one("pil", data, lambda w, h, stored=stored: stored, (24, 24))
        ref = loader.normalize(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None])[0]
        torch.testing.assert_close(batch.images[0], ref)
        seen += len(batch)
    assert seen == 28  # 30 rows, batch 7, drop_last
    first = torch.cat([b.views for b in loader.epoch(0)])
    assert torch.equal(first, torch.cat([b.views for b in loader.epoch(0)]))
    with pytest.raises(ValueError):
        StreamingLoader(train, 7, train=True, view_table=table[:5], workers=0)


def test_validation_split_rule_and_subsets(stream_folders, stream_helpers):
    cfg = stream_helpers.stream_config(stream_folders, val_per_class=2)
    train, val, test = build_splits(cfg)
    assert len(train) == 24 and len(val) == 6
    assert torch.bincount(val.targets).tolist() == [2, 2, 2]
    train_files = {train.describe(i) for i in range(len(train))}
    val_files = {val.describe(i) for i in range(len(val))}
    assert not train_files & val_files
    full, _, _ = build_splits(stream_helpers.stream_config(stream_folders))
    held = held_out_rows(full.targets, 2, 0, 3)
    assert val_files == {full.describe(int(i)) for i in held}
    again = build_splits(cfg)[1]
    assert [again.describe(i) for i in range(len(again))] == [val.describe(i) for i in range(len(val))]
    # the in-memory path holds out the same rows
    from darkknowledge.data.base import ArrayDataset, DataSpec
    from darkknowledge.data.splits import split_validation

    spec = DataSpec("x", 3, 3, (1, 1), (0.0,) * 3, (1.0,) * 3)
    arr = ArrayDataset(torch.zeros(len(full), 3, 1, 1, dtype=torch.uint8), full.targets.clone(), spec)
    arr.images[:, 0, 0, 0] = torch.arange(len(full), dtype=torch.uint8)
    _, mem_val = split_validation(arr, 2, 0)
    assert torch.equal(mem_val.images[:, 0, 0, 0].long(), held)
    # classes and per-class caps
    sub, _, sub_test = build_splits(stream_helpers.stream_config(stream_folders, classes=[2, 0], train_per_class=4))
    assert sub.spec.num_classes == 2 and sub.spec.class_names == ("c2", "c0") and len(sub) == 8
    assert all(sub.describe(i).split("/")[-2] == ("c2" if int(sub.targets[i]) == 0 else "c0") for i in range(8))
    assert sub_test.spec.class_names == ("c2", "c0") and len(sub_test) == 6


def test_webdataset_shards(tmp_path, stream_helpers):
    h = stream_helpers
    for split, n, first in (("train", 7, 0), ("val", 3, 100)):
        for s in range(2):
            members = []
            for k in range(n):
                key = f"s{s}_{first + k:04d}"
                members += [(f"{key}.jpg", h.jpeg_bytes(60 + k, 50, k)), (f"{key}.cls", str(k % 4).encode())]
            h.write_shard(tmp_path / "shards" / split / f"{split}-{s:06d}.tar", members)
    train, _, test = build_splits(h.stream_config(tmp_path / "shards", name="webdataset"))
    assert len(train) == 14 and len(test) == 6 and train.spec.num_classes == 4
    assert train.describe(0).endswith("train-000000.tar:s0_0000")
    assert train.original_size(1) == (61, 50)  # opens the shard in this process before the workers fork
    batches = list(StreamingLoader(train, 4, train=True, seed=0, workers=2).epoch(0))
    assert sum(len(b) for b in batches) == 12
    in_process = list(StreamingLoader(train, 4, train=True, seed=0, workers=0).epoch(0))
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, in_process))
    for b in batches:
        assert torch.equal(b.targets, train.targets[b.indices])
    # the member bytes are the image
    i = 3
    data = train.source.read(i)
    assert Image.open(__import__("io").BytesIO(data)).size == (63, 50)
    ev = list(StreamingLoader(test, 4, train=False, workers=0).epoch(0))
    assert [t for b in ev for t in b.targets.tolist()] == [k % 4 for k in range(3)] * 2


def test_reference_and_ours_make_the_same_crop(stream_folders, stream_helpers):
    from darkknowledge.bench.data import ReferenceDataset, folder_source

    source = folder_source(stream_folders / "train")
    assert len(source) == 30 and source.targets.max() == 2
    sizes = [Image.open(source.describe(i)).size for i in range(len(source))]
    views = sample_crop_views(sizes, 1, torch.Generator().manual_seed(9))[:, 0].numpy()
    ref = ReferenceDataset(source, 24, views=views)
    for i in range(0, 30, 3):
        x, label = ref[i]
        assert label == int(source.targets[i])
        ours = apply_view(Image.open(source.describe(i)), views[i], (24, 24), draft=False)
        mean, std = ref.mean, ref.std
        ours_t = (torch.from_numpy(ours.copy()).permute(2, 0, 1).float() / 255 - mean) / std
        torch.testing.assert_close(x, ours_t)
        drafted = apply_view(Image.open(source.describe(i)), views[i], (24, 24))
        assert np.abs(drafted.astype(np.int16) - ours).mean() < 3


@pytest.mark.skipif(not have_simplejpeg(), reason="simplejpeg not installed")
def test_simplejpeg_matches_pillow(stream_helpers):
    data = stream_helpers.jpeg_bytes(400, 300, 1)
    views = sample_crop_views([(400, 300)], 8, torch.Generator().manual_seed(0))[0]
    for v in views:
        a, va = decode_one("simplejpeg", data, lambda w, h, v=v: v.numpy(), (32, 32))
        b, vb = decode_one("pil", data, lambda w, h, v=v: v.numpy(), (32, 32))
        assert a.shape == b.shape == (32, 32, 3) and np.array_equal(va, vb)
        assert np.abs(a.astype(np.int16) - b).mean() < 4


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="the ImageNet sample (../shared/data/imagenet_sample) is absent")
def test_real_imagenet_sample_images():
    from darkknowledge.bench.data import folder_source
    from darkknowledge.data.streaming import StreamingDataset

    source = folder_source(SAMPLE)
    assert len(source) == 1000 and int(source.targets[999]) == 999
    ds = StreamingDataset(source.subset(np.arange(0, 1000, 50)), "sample", decoder="pil")
    batch = next(iter(StreamingLoader(ds, 20, train=False, workers=0).epoch(0)))
    assert batch.images.shape == (20, 3, 224, 224)
    assert abs(float(batch.images.mean())) < 1.0 and float(batch.images.std()) > 0.5


def test_normalised_batches_never_alias_and_memory_is_reused(stream_folders, stream_helpers):
    train, _, _ = build_splits(stream_helpers.stream_config(stream_folders))
    loader = StreamingLoader(train, 4, train=True, seed=0, workers=0)
    held, copies = [], []
    for batch in loader.epoch(0):  # the caller keeps every batch: each must keep its own pixels
        held.append(batch)
        copies.append(batch.images.clone())
    assert all(torch.equal(b.images, c) for b, c in zip(held, copies))
    view = held[0].images[:, :1]  # a view alone keeps its memory from being handed out again
    del held, batch
    for _ in loader.epoch(0):
        pass
    assert torch.equal(view, copies[0][:, :1])
    pooled = list(loader._host.buffers)
    addresses = set()
    for _ in range(3):  # batches dropped after use: the pooled memory is used again, nothing new is pooled
        for b in loader.epoch(1):
            addresses.add(b.images.data_ptr())
            del b
    assert loader._host.buffers == pooled and len(pooled) <= loader._host.pool
    assert len(addresses) <= 2


def test_cpu_normalisation_equals_the_normalizer(stream_folders, stream_helpers):
    train, _, _ = build_splits(stream_helpers.stream_config(stream_folders))
    pixels = torch.randint(0, 256, (5, 24, 24, 3), dtype=torch.uint8)
    for channels_last in (True, False):
        loader = StreamingLoader(train, 5, train=True, channels_last=channels_last, workers=0)
        ours = loader._normalise(pixels)
        torch.testing.assert_close(ours, loader.normalize(pixels.permute(0, 3, 1, 2)))
        assert ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_worker_slots_survive_an_abandoned_epoch(stream_folders, stream_helpers):
    train, _, _ = build_splits(stream_helpers.stream_config(stream_folders))
    loader = StreamingLoader(train, 3, train=True, seed=5, workers=2, prefetch=2)
    assert loader._slots is not None and loader._slots.is_shared() and len(loader._slots) == 6
    reference = _epoch(StreamingLoader(train, 3, train=True, seed=5, workers=0), 1)
    it = loader.epoch(0)
    next(it), next(it)  # leave epoch 0 with tasks in flight
    del it
    got = _epoch(loader, 1)
    assert len(got) == len(reference) == 10
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[0], y[0]) for x, y in zip(got, reference))
