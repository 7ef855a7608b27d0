"""Batched augmentation and the in-memory loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darkknowledge.data import ArrayDataset, AugmentSpec, DataSpec, build_dataset
from darkknowledge.data.augment import Normalizer, apply_augment, identity_params, sample_augment_params
from darkknowledge.data.loader import BatchLoader, epoch_generator, eval_batches

MEAN, STD = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)


def synthetic(
    n: int = 50, c: int = 3, h: int = 5, w: int = 7, pad: int = 2, flip: bool = True, classes: int = 5
) -> ArrayDataset:
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    targets = torch.arange(n, dtype=torch.int64) % classes
    spec = DataSpec(
        name="synthetic",
        num_classes=classes,
        in_channels=c,
        image_size=(h, w),
        mean=MEAN[:c],
        std=STD[:c],
        augment=AugmentSpec(pad=pad, flip=flip),
    )
    return ArrayDataset(images, targets, spec)


def reference_augment(img: np.ndarray, dy: int, dx: int, flip: int, pad: int) -> np.ndarray:
    """torchvision semantics: zero-pad, crop an H x W window at (dy, dx), then mirror."""
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    crop = padded[:, dy : dy + h, dx : dx + w]
    return crop[:, :, ::-1] if flip else crop


def reference_normalize(img: np.ndarray, mean, std) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float64)[:, None, None]
    s = np.asarray(std, dtype=np.float64)[:, None, None]
    return (img.astype(np.float64) / 255.0 - m) / s


# ----------------------------------------------------------------------------- augmentation


def test_crop_flip_matches_numpy_reference_at_corners():
    ds = synthetic(pad=2)
    img = ds.images[:1]
    pad = 2
    cases = [(dy, dx, f) for dy in (0, 2, 4) for dx in (0, 1, 4) for f in (0, 1)]
    for dy, dx, f in cases:
        out = apply_augment(img, torch.tensor([[dy, dx, f]]), pad)
        ref = reference_augment(img[0].numpy(), dy, dx, f, pad)
        assert out.dtype == torch.uint8 and out.shape == img.shape
        np.testing.assert_array_equal(out[0].numpy(), ref, err_msg=str((dy, dx, f)))
    # a corner crop really is shifted: the top-left window has zero rows/columns
    top_left = apply_augment(img, torch.tensor([[0, 0, 0]]), pad)[0]
    assert (top_left[:, :2, :] == 0).all() and (top_left[:, :, :2] == 0).all()
    torch.testing.assert_close(top_left[:, 2:, 2:], img[0, :, :-2, :-2])


def test_batched_augment_matches_reference_per_sample():
    ds = synthetic(n=40, pad=3)
    params = sample_augment_params(40, ds.spec.augment, torch.Generator().manual_seed(5))
    out = apply_augment(ds.images, params, 3)
    for i in range(40):
        dy, dx, f = params[i].tolist()
        np.testing.assert_array_equal(out[i].numpy(), reference_augment(ds.images[i].numpy(), dy, dx, f, 3))


def test_flip_only_without_padding():
    ds = synthetic(n=4, pad=0)
    params = torch.tensor([[0, 0, 1], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    out = apply_augment(ds.images, params, 0)
    torch.testing.assert_close(out[0], ds.images[0].flip(-1))
    torch.testing.assert_close(out[1], ds.images[1])


def test_identity_params_reproduce_the_image():
    for pad in (0, 1, 4):
        ds = synthetic(pad=pad)
        out = apply_augment(ds.images, identity_params(len(ds), ds.spec.augment), pad)
        assert torch.equal(out, ds.images)


def test_sampled_params_cover_the_range():
    spec = AugmentSpec(pad=2, flip=True)
    p = sample_augment_params(5000, spec, torch.Generator().manual_seed(0))
    assert p.dtype == torch.int64 and p.shape == (5000, 3)
    assert set(p[:, 0].tolist()) == {0, 1, 2, 3, 4}
    assert set(p[:, 1].tolist()) == {0, 1, 2, 3, 4}
    assert set(p[:, 2].tolist()) == {0, 1}
    noflip = sample_augment_params(500, AugmentSpec(pad=1, flip=False), torch.Generator().manual_seed(0))
    assert (noflip[:, 2] == 0).all() and noflip[:, :2].max() == 2


def test_normalizer_mean_std():
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    out = Normalizer(MEAN, STD, "cpu", channels_last=False)(x)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(
        out.numpy(), np.stack([reference_normalize(i, MEAN, STD) for i in x.numpy()]), rtol=1e-5, atol=1e-5
    )
    # pixel value mean*255 maps to 0
    mid = torch.full((1, 1, 1, 1), 51, dtype=torch.uint8)  # 51/255 = 0.2
    assert Normalizer((0.2,), (0.5,), "cpu", False)(mid).abs().max() < 1e-6


def test_digits_statistics_match_spec(digits_splits):
    train, test = digits_splits
    assert (len(train), len(test)) == (1438, 359)
    x = train.images.double() / 255.0
    assert x.mean().item() == pytest.approx(train.spec.mean[0], abs=1e-3)
    assert x.std().item() == pytest.approx(train.spec.std[0], abs=1e-3)
    # normalised training pixels have mean ~0, std ~1
    b = next(iter(eval_batches(train, batch_size=len(train), channels_last=False)))
    assert b.images.mean().item() == pytest.approx(0.0, abs=2e-3)
    assert b.images.std().item() == pytest.approx(1.0, abs=2e-3)


# ----------------------------------------------------------------------------- loader


def _epoch(loader, e):
    return [
        (b.indices.clone(), b.images.clone(), None if b.aug_params is None else b.aug_params.clone())
        for b in loader.epoch(e)
    ]


def test_same_seed_and_epoch_give_identical_batches():
    ds = synthetic(n=50)
    a = BatchLoader(ds, 8, train=True, seed=3, channels_last=False)
    b = BatchLoader(ds, 8, train=True, seed=3, channels_last=False)
    ea = _epoch(a, 2)
    torch.manual_seed(999)  # the global RNG must not matter
    torch.rand(17)
    eb = _epoch(b, 2)
    assert len(ea) == len(eb) == 50 // 8
    for (ia, xa, pa), (ib, xb, pb) in zip(ea, eb):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(pa, pb)
    # another epoch: another order and other augmentations
    ec = _epoch(a, 3)
    assert not torch.equal(torch.cat([i for i, _, _ in ea]), torch.cat([i for i, _, _ in ec]))
    # another seed: another order
    ed = _epoch(BatchLoader(ds, 8, train=True, seed=4, channels_last=False), 2)
    assert not torch.equal(torch.cat([i for i, _, _ in ea]), torch.cat([i for i, _, _ in ed]))


def test_epoch_generator_is_independent_of_global_rng():
    torch.manual_seed(0)
    a = torch.randperm(100, generator=epoch_generator(1, 2))
    torch.manual_seed(1)
    b = torch.randperm(100, generator=epoch_generator(1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randperm(100, generator=epoch_generator(1, 3)))


def test_training_batches_apply_the_reported_params():
    ds = synthetic(n=30, pad=2)
    loader = BatchLoader(ds, 7, train=True, seed=1, channels_last=False)
    seen = []
    for b in loader.epoch(0):
        assert b.images.shape == (7, 3, 5, 7)
        for j, i in enumerate(b.indices.tolist()):
            dy, dx, f = b.aug_params[j].tolist()
            ref = reference_normalize(reference_augment(ds.images[i].numpy(), dy, dx, f, 2), MEAN, STD)
            np.testing.assert_allclose(b.images[j].numpy(), ref, rtol=1e-5, atol=1e-5)
            assert b.targets[j].item() == ds.targets[i].item()
        seen += b.indices.tolist()
    assert len(seen) == len(set(seen)) == (30 // 7) * 7  # drop_last for training


def test_no_augment_when_disabled():
    ds = synthetic(n=20)
    loader = BatchLoader(ds, 5, train=True, augment=False, seed=1, channels_last=False)
    for b in loader.epoch(0):
        assert b.aug_params is None
        ref = np.stack([reference_normalize(ds.images[i].numpy(), MEAN, STD) for i in b.indices.tolist()])
        np.testing.assert_allclose(b.images.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, bs", [(50, 8), (50, 50), (50, 64), (7, 1)])
def test_eval_sees_every_sample_once_in_order(n, bs):
    ds = synthetic(n=n)
    loader = BatchLoader(ds, bs, train=False, channels_last=False)
    assert not loader.drop_last and not loader.augment
    batches = list(loader.epoch(5))
    assert len(batches) == len(loader) == math.ceil(n / bs)
    idx = torch.cat([b.indices for b in batches])
    assert torch.equal(idx, torch.arange(n))
    assert all(b.aug_params is None for b in batches)
    # eval_batches: same thing
    assert torch.equal(torch.cat([b.indices for b in eval_batches(ds, bs, channels_last=False)]), torch.arange(n))


def test_train_without_drop_last_covers_everything():
    ds = synthetic(n=50)
    loader = BatchLoader(ds, 8, train=True, drop_last=False, channels_last=False)
    idx = torch.cat([b.indices for b in loader.epoch(0)])
    assert sorted(idx.tolist()) == list(range(50))
    assert len(loader) == 7


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_and_cover(train, world_size):
    ds = synthetic(n=50)
    shards = []
    for rank in range(world_size):
        loader = BatchLoader(
            ds, 4, train=train, drop_last=False, seed=7, rank=rank, world_size=world_size, channels_last=False
        )
        idx = torch.cat([b.indices for b in loader.epoch(1)]).tolist()
        # training shards are equal (every rank takes the same steps); evaluation covers everything
        assert len(idx) == len(set(idx)) == (50 // world_size if train else len(range(rank, 50, world_size)))
        assert len(loader) == math.ceil(len(idx) / 4)
        shards.append(set(idx))
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not shards[a] & shards[b]
    assert len(set().union(*shards)) == (50 - 50 % world_size if train else 50)


def test_ranks_split_the_single_process_batches():
    ds = synthetic(n=50)
    single = [b.indices for b in BatchLoader(ds, 8, train=True, seed=3, channels_last=False).epoch(2)]
    ranks = [
        [b.indices for b in BatchLoader(ds, 4, train=True, seed=3, rank=r, world_size=2, channels_last=False).epoch(2)]
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for i, whole in enumerate(single):
        assert sorted(torch.cat([ranks[0][i], ranks[1][i]]).tolist()) == sorted(whole.tolist())


def test_view_table_replay():
    ds = synthetic(n=30, pad=2)
    k = 4
    table = sample_augment_params(30 * k, ds.spec.augment, torch.Generator().manual_seed(9)).view(30, k, 3)
    loader = BatchLoader(ds, 6, train=True, seed=2, view_table=table, channels_last=False)
    views_per_epoch = []
    for e in range(2):
        views = {}
        for b in loader.epoch(e):
            assert b.views is not None and b.views.dtype == torch.int64
            assert ((b.views >= 0) & (b.views < k)).all()
            assert torch.equal(b.aug_params, table[b.indices, b.views])
            for j, i in enumerate(b.indices.tolist()):
                dy, dx, f = table[i, b.views[j]].tolist()
                ref = reference_normalize(reference_augment(ds.images[i].numpy(), dy, dx, f, 2), MEAN, STD)
                np.testing.assert_allclose(b.images[j].numpy(), ref, rtol=1e-5, atol=1e-5)
                views[i] = int(b.views[j])
        views_per_epoch.append(views)
    common = views_per_epoch[0].keys() & views_per_epoch[1].keys()
    assert any(views_per_epoch[0][i] != views_per_epoch[1][i] for i in common)  # a new draw each epoch
    # replay is deterministic
    again = [
        (b.indices, b.views)
        for b in BatchLoader(ds, 6, train=True, seed=2, view_table=table, channels_last=False).epoch(1)
    ]
    first = [(b.indices, b.views) for b in loader.epoch(1)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, first))


def test_view_table_of_wrong_size_is_refused():
    ds = synthetic(n=30)
    with pytest.raises(ValueError, match="view table"):
        BatchLoader(ds, 6, train=True, view_table=torch.zeros(29, 2, 3, dtype=torch.int64))


@pytest.mark.parametrize("train", [True, False])
def test_channels_last_output(train):
    ds = synthetic(n=16)
    cl = next(iter(BatchLoader(ds, 8, train=train, channels_last=True).epoch(0))).images
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    std = next(iter(BatchLoader(ds, 8, train=train, channels_last=False).epoch(0))).images
    assert std.is_contiguous()
    torch.testing.assert_close(cl, std)


def test_batch_size_validation():
    with pytest.raises(ValueError):
        BatchLoader(synthetic(n=4), 0, train=True)
    # a batch larger than the data: no training batch (the trainer turns this into a UserError)
    assert len(BatchLoader(synthetic(n=4), 5, train=True)) == 0
    assert len(BatchLoader(synthetic(n=4), 5, train=False)) == 1


def test_digits_subset_is_deterministic():
    a = build_dataset("digits", train=True, train_per_class=5, seed=0)
    b = build_dataset("digits", train=True, train_per_class=5, seed=0)
    c = build_dataset("digits", train=True, train_per_class=5, seed=1)
    assert len(a) == 50 and torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.targets).tolist() == [5] * 10
