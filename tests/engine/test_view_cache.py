"""The view-keyed soft-label cache on small generated images with a tiny random model:
round trip against an independent computation, int32 ids, log-sum-exp, the missing-mass
policy, replay by (index, view), captured non-target statistics, and the errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from darkknowledge.data.loader import Batch
from darkknowledge.data.views import apply_view, center_views
from darkknowledge.engine.view_cache import (
    PathSource,
    ViewCachedTeacher,
    build_view_cache,
    cache_bytes_per_image,
    nontarget_statistics,
    view_reuse,
)
from darkknowledge.errors import UserError

SIZE = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def tiny_model(num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
    with torch.no_grad():
        model[5].weight.mul_(8)  # spread the logits: peaked distributions with a real tail
        model[1].running_mean.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """12 PNG images of different sizes (lossless: the reference decode is pixel-exact)."""
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * (i + 1) % 256, yy * 7 % 256, (xx + yy) * (i + 3) % 256], -1)
        pixels = (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
        p = root / f"img_{i:02d}.png"
        Image.fromarray(pixels).save(p)
        paths.append(p)
    return paths, rng.integers(0, 10, 12)


def build(tmp_path: Path, images, model: nn.Module, **kw) -> Path:
    paths, labels = images
    options = {"num_views": 3, "topk": 4, "dtype": "float32", "precision": "fp32", "shard_size": 5}
    options.update(kw)
    out = tmp_path / "cache"
    build_view_cache(model, PathSource(paths, labels), out, mean=MEAN, std=STD, image_size=SIZE, **options)
    return out


def reference_logits(model: nn.Module, path: Path, view: torch.Tensor) -> torch.Tensor:
    """The teacher's full logits on one view, computed independently of the cache."""
    with Image.open(path) as im:
        pixels = apply_view(im, view, (SIZE, SIZE), draft=False)
    x = torch.tensor(pixels).permute(2, 0, 1).float().div(255).unsqueeze(0)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)[0]


def test_round_trip_ids_lse_and_statistics(tmp_path, images):
    paths, labels = images
    model = tiny_model(10)
    cache = ViewCachedTeacher(build(tmp_path, images, model), source=PathSource(paths, labels), teacher=model)
    table = cache.replay_views()
    assert table.shape == (12, 3, 5) and table.dtype == torch.float32
    assert len(list((tmp_path / "cache").glob("shard-*"))) == 3
    sizes = [Image.open(p).size for p in paths]
    torch.testing.assert_close(table[:, 0], center_views(sizes, round(SIZE * 256 / 224), SIZE))
    full = torch.stack([torch.stack([reference_logits(model, p, v) for v in table[i]]) for i, p in enumerate(paths)])
    rows = torch.arange(12).repeat_interleave(3)
    views = torch.arange(3).repeat(12)
    values, ids, lse = cache.topk(rows, views)
    ref_values, ref_ids = full.reshape(36, 10).topk(4, dim=1)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(full.reshape(36, 10), 1), rtol=1e-5, atol=1e-5)
    ids_file = np.load(tmp_path / "cache" / "shard-00000" / "topk_ids.npy", mmap_mode="r")
    assert ids_file.dtype == np.int32
    stats = cache.nontarget_statistics(rows, views)
    log_var, tau = nontarget_statistics(full.reshape(36, 10), torch.as_tensor(labels).repeat_interleave(3), (1.0, 4.0))
    torch.testing.assert_close(stats["nt_log_var"], log_var, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats["tau_star"], tau, rtol=1e-3, atol=1e-3, equal_nan=True)


def test_missing_mass_policy_is_a_distribution_exact_on_the_top_k(tmp_path, images):
    model = tiny_model(10)
    cache = ViewCachedTeacher(build(tmp_path, images, model))
    rows, views = torch.arange(12).repeat_interleave(3), torch.arange(3).repeat(12)
    rec = cache.logits(rows, views)
    assert rec.shape == (36, 10) and rec.dtype == torch.float32
    p = rec.softmax(1)
    torch.testing.assert_close(p.sum(1), torch.ones(36), rtol=1e-5, atol=1e-5)
    values, ids, lse = cache.topk(rows, views)
    torch.testing.assert_close(p.gather(1, ids), (values - lse[:, None]).exp(), rtol=1e-5, atol=1e-6)
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(1, ids, False)
    tail_p = p[tail].view(36, 6)
    torch.testing.assert_close(tail_p, tail_p[:, :1].expand(-1, 6))  # spread uniformly


def test_replay_answers_the_right_index_and_view(tmp_path, images):
    paths, labels = images
    model = tiny_model(10)
    cache = ViewCachedTeacher(build(tmp_path, images, model, topk=9))
    indices, views = torch.tensor([11, 0, 7, 5, 5]), torch.tensor([2, 0, 1, 1, 2])
    out = cache(Batch(images=torch.zeros(5, 3, SIZE, SIZE), targets=torch.zeros(5), indices=indices, views=views))
    table = cache.replay_views()
    for row, (i, v) in enumerate(zip(indices.tolist(), views.tolist())):
        full = reference_logits(model, paths[i], table[i, v])
        top = full.topk(9).indices
        torch.testing.assert_close(out[row, top], full[top], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="replaying"):
        cache(Batch(images=torch.zeros(1, 3, SIZE, SIZE), targets=torch.zeros(1), indices=torch.tensor([0])))


def test_class_ids_are_int32_beyond_float16_range(tmp_path, images):
    """40,000 classes: ids above 2,048 (float16's exact integers) and 32,767 (int16) survive."""
    paths, labels = images
    model = tiny_model(40_000, seed=1)
    source = PathSource(paths[:2], labels[:2])
    out = tmp_path / "wide"
    build_view_cache(model, source, out, mean=MEAN, std=STD, image_size=SIZE, num_views=1, topk=50, precision="fp32")
    cache = ViewCachedTeacher(out)
    _, ids, _ = cache.topk(torch.tensor([0, 1]), torch.tensor([0, 0]))
    ref = torch.stack([reference_logits(model, p, cache.replay_views()[i, 0]) for i, p in enumerate(paths[:2])])
    assert torch.equal(ids, ref.topk(50).indices)
    assert int(ids.max()) > 32_767


def test_other_files_or_teacher_are_errors(tmp_path, images):
    paths, labels = images
    model = tiny_model(10)
    out = build(tmp_path, images, model)
    with pytest.raises(UserError, match="other teacher weights"):
        ViewCachedTeacher(out, teacher=tiny_model(10, seed=5))
    with pytest.raises(UserError, match="built for 12 images"):
        ViewCachedTeacher(out, source=PathSource(paths[:11], labels[:11]))
    changed = tmp_path / "changed.png"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(changed)
    swapped = [*paths[:4], changed, *paths[5:]]
    with pytest.raises(UserError, match=r"other files: image 4 is .*changed\.png"):
        ViewCachedTeacher(out, source=PathSource(swapped, labels))
    with pytest.raises(UserError, match="already exists"):
        build(tmp_path, images, model)
    shard = out / "shard-00001" / "lse.npy"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(UserError, match="truncated"):
        ViewCachedTeacher(out)


def test_bad_image_names_the_file_and_writes_nothing(tmp_path, images):
    paths, labels = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    source = PathSource([*paths[:3], broken], labels[:4])
    with pytest.raises(UserError, match="broken.jpg"):
        build_view_cache(tiny_model(10), source, tmp_path / "c", mean=MEAN, std=STD, image_size=SIZE, num_views=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg"]
    with pytest.raises(UserError, match="topk must be"):
        build_view_cache(
            tiny_model(10),
            PathSource(paths[:2], labels[:2]),
            tmp_path / "c",
            mean=MEAN,
            std=STD,
            image_size=SIZE,
            topk=10,
        )
    with pytest.raises(UserError, match="labels"):
        PathSource(paths[:2], labels[:3])


def test_warns_when_views_are_few_for_the_schedule(tmp_path, images):
    out = build(tmp_path, images, tiny_model(10))
    with pytest.warns(UserWarning, match=r"K=3 views .* 10 epochs x 2 crops"):
        ViewCachedTeacher(out, epochs=10, crops_per_epoch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ViewCachedTeacher(out, epochs=3)
    assert view_reuse(8, 100, 2) == 25.0


def test_size_per_image_matches_the_files(tmp_path, images):
    out = build(tmp_path, images, tiny_model(10), dtype="float16")
    shard_bytes = sum(f.stat().st_size for f in out.glob("shard-*/*.npy"))
    header_bytes = 128 * 6 * 3  # one .npy header per array per shard
    assert shard_bytes - header_bytes + 12 * 16 == 12 * cache_bytes_per_image(3, 4, "float16")


def test_training_views_and_plain_batches(tmp_path, images):
    paths, labels = images
    cache = ViewCachedTeacher(build(tmp_path, images, tiny_model(10)))
    table = cache.replay_views()
    assert torch.equal(cache.training_views(None, augment=True), table)
    assert torch.equal(cache.training_views(None, augment=False), table[:, :1])
    batch = Batch(
        images=torch.zeros(2, 3, SIZE, SIZE),
        targets=torch.zeros(2),
        indices=torch.tensor([3, 4]),
        views=torch.tensor([2, 1]),
    )
    (plain,) = list(cache.plain_batches([batch], None))
    assert torch.equal(plain.views, torch.zeros(2, dtype=torch.long))
    other = build(tmp_path / "b", images, tiny_model(10), center_first=False)
    with pytest.raises(UserError, match="center_first=False"):
        ViewCachedTeacher(other).training_views(None, augment=False)


def test_streaming_loader_replay_matches_the_cache(tmp_path, images):
    """End to end: the streaming loader replays the cache's view table; the teacher run on the
    student's decoded batch gives the logits the cache answers for (batch.indices, batch.views)."""
    streaming = pytest.importorskip("darkknowledge.data.streaming")
    sources = pytest.importorskip("darkknowledge.data.sources")
    paths, labels = images
    model = tiny_model(10)
    cache = ViewCachedTeacher(build(tmp_path, images, model, topk=6))
    source = sources.FileSource(
        targets=np.asarray(labels, dtype=np.int64),
        class_names=tuple(str(c) for c in range(10)),
        root=paths[0].parent,
        paths=np.array([p.name.encode() for p in paths]),
    )
    dataset = streaming.StreamingDataset(source, "generated", crop_size=SIZE, resize_size=18, mean=MEAN, std=STD)
    loader = streaming.StreamingLoader(
        dataset, 5, train=True, view_table=cache.replay_views(), workers=0, channels_last=False
    )
    seen = 0
    for batch in loader.epoch(1):
        torch.testing.assert_close(batch.aug_params, cache.replay_views()[batch.indices, batch.views])
        with torch.no_grad():
            live = model(batch.images)
        values, ids, _ = cache.topk(batch.indices, batch.views)
        assert torch.equal(live.topk(6).indices, ids)
        torch.testing.assert_close(cache(batch).gather(1, ids), live.gather(1, ids), rtol=1e-5, atol=1e-5)
        seen += len(batch)
    assert seen == 10  # drop_last for training: two batches of 5
