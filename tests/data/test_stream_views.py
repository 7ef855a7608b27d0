"""Views as augmentation parameters: RandomResizedCrop sampling, the evaluation box, replay."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from darkknowledge.data.views import (
    UNIFORMS_PER_VIEW,
    VIEW_DIM,
    apply_view,
    center_view,
    crop_views_from_uniforms,
    sample_crop_views,
    view_box,
)


def _smooth_jpeg(width: int, height: int, seed: int = 0, quality: int = 95) -> bytes:
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_sampled_views_obey_scale_ratio_and_bounds():
    sizes = torch.tensor([[500, 375], [375, 500], [640, 480], [1000, 100], [7, 5]])
    views = sample_crop_views(sizes, 200, torch.Generator().manual_seed(1))
    assert views.shape == (5, 200, VIEW_DIM) and views.dtype == torch.float32
    x0, y0, w, h, flip = views.unbind(-1)
    assert bool((x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all())
    assert set(flip.unique().tolist()) == {0.0, 1.0}
    # the ordinary images never need the fallback: area in [0.08, 1], aspect in [3/4, 4/3] up to rounding
    for i in range(3):
        wp, hp = w[i] * sizes[i, 0], h[i] * sizes[i, 1]
        area = wp * hp / (sizes[i, 0] * sizes[i, 1])
        assert bool((area > 0.079).all() and (area <= 1.0 + 1e-6).all())
        aspect = wp / hp
        assert bool((aspect > 0.74).all() and (aspect < 1.35).all())
        # boxes sit on whole pixels of the original image
        torch.testing.assert_close(x0[i] * sizes[i, 0], (x0[i] * sizes[i, 0]).round(), atol=1e-3, rtol=0)
    # 1000x100 is far outside the ratio range: often the centred fallback, full height clamped to ratio 4/3
    expected = torch.tensor([433 / 1000, 0.0, 133 / 1000, 1.0])
    assert int(torch.isclose(views[3, :, :4], expected).all(-1).sum()) > 100


def test_sampling_is_deterministic_per_generator_and_vectorised_equals_per_view():
    sizes = [(320, 240), (240, 320)]
    a = sample_crop_views(sizes, 8, torch.Generator().manual_seed(5))
    b = sample_crop_views(sizes, 8, torch.Generator().manual_seed(5))
    c = sample_crop_views(sizes, 8, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    u = np.random.default_rng(0).random((4, UNIFORMS_PER_VIEW))
    together = crop_views_from_uniforms(np.array([320, 240, 64, 999]), np.array([240, 320, 64, 10]), u)
    for i, (wd, ht) in enumerate([(320, 240), (240, 320), (64, 64), (999, 10)]):
        np.testing.assert_array_equal(together[i], crop_views_from_uniforms(wd, ht, u[i]))


def test_center_view_is_resize_then_centre_crop():
    v = center_view(500, 375)  # resized to 341x256, centre 224: left round(117/2)=58, top 16
    torch.testing.assert_close(v, torch.tensor([58 / 341, 16 / 256, 224 / 341, 224 / 256, 0.0]))
    assert torch.equal(center_view(375, 500)[[1, 0, 3, 2]], v[[0, 1, 2, 3]].new_tensor(v[[0, 1, 2, 3]].tolist()))
    small = center_view(100, 100)  # smaller than the crop after resizing: the crop is 224/256 of it
    torch.testing.assert_close(small[2:4], torch.tensor([224 / 256, 224 / 256]))


@pytest.mark.parametrize("size", [(512, 384), (333, 517)])
def test_replay_does_not_depend_on_decode_scale(size):
    data = _smooth_jpeg(*size)
    views = sample_crop_views([size], 6, torch.Generator().manual_seed(3))[0]
    views = torch.cat([views, center_view(*size)[None]])
    for view in views:
        drafted = apply_view(Image.open(io.BytesIO(data)), view, (48, 48))
        full = apply_view(Image.open(io.BytesIO(data)), view, (48, 48), draft=False)
        assert drafted.shape == (48, 48, 3) and drafted.dtype == np.uint8 and drafted.flags.c_contiguous
        assert np.abs(drafted.astype(np.int16) - full).mean() < 3.0
    # a copy of the file at half resolution replays the same crops
    half = Image.open(io.BytesIO(data)).resize((size[0] // 2, size[1] // 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    half.save(buf, "PNG")
    for view in views:
        a = apply_view(Image.open(io.BytesIO(data)), view, (32, 32), draft=False)
        b = apply_view(Image.open(io.BytesIO(buf.getvalue())), view, (32, 32))
        assert np.abs(a.astype(np.int16) - b).mean() < 4.0


def test_flip_and_box_geometry():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = 255  # left half white
    img = Image.fromarray(arr)
    left_half = [0.0, 0.0, 0.5, 1.0, 0.0]
    assert apply_view(img, left_half, (10, 10)).min() == 255
    out = apply_view(img, [0.25, 0.0, 0.5, 1.0, 1.0], (10, 20))  # centre, flipped: black on the left
    assert out[:, :8].max() == 0 and out[:, 12:].min() == 255
    assert view_box([0.25, 0.5, 0.5, 0.25, 0], 80, 40) == (20.0, 20.0, 60.0, 30.0)


def test_grayscale_and_cmyk_become_rgb():
    gray = Image.fromarray(np.full((30, 30), 77, dtype=np.uint8))
    out = apply_view(gray, [0, 0, 1, 1, 0], (8, 8))
    assert out.shape == (8, 8, 3) and int(out.min()) == int(out.max()) == 77
    cmyk = Image.new("CMYK", (30, 30), (0, 255, 255, 0))  # red
    out = apply_view(cmyk, [0, 0, 1, 1, 0], (8, 8))
    assert out.shape == (8, 8, 3) and out[..., 0].min() > 240 and out[..., 1:].max() < 15
