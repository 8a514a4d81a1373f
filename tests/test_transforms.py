"""videoapp.data.transforms: shapes, resize rule, crop positions, normalisation, channel order."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videoapp.data.transforms import (ClipTransform, TrainTransform, center_crop, horizontal_flip,
                                      normalize, resize_short_side, three_crops, to_tensor,
                                      uniform_crop)


def coord_frames(t: int, h: int, w: int) -> np.ndarray:
    """uint8 frames whose R channel is the column mod 256, G the row, B the frame index."""
    f = np.zeros((t, h, w, 3), np.uint8)
    f[..., 0] = (np.arange(w) % 256)[None, None, :]
    f[..., 1] = (np.arange(h) % 256)[None, :, None]
    f[..., 2] = np.arange(t)[:, None, None]
    return f


def coord_clip(h: int, w: int) -> torch.Tensor:
    """float [1, 1, h, w] tensor with value row*1000 + col: crops reveal their offsets."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (y * 1000 + x).float()[None, None]


def test_to_tensor():
    f = coord_frames(4, 6, 8)
    x = to_tensor(f)
    assert x.shape == (3, 4, 6, 8) and x.dtype == torch.float32 and x.is_contiguous()
    assert x.min() >= 0 and x.max() <= 1
    assert x[0, 0, 0, 7].item() == pytest.approx(7 / 255)  # R = column
    assert x[1, 0, 5, 0].item() == pytest.approx(5 / 255)  # G = row
    assert x[2, 3, 0, 0].item() == pytest.approx(3 / 255)  # B = frame
    assert torch.equal(to_tensor(torch.from_numpy(f)), x)
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 6, 8), np.uint8))


@pytest.mark.parametrize("h,w,size,expected", [
    (256, 340, 224, (224, 297)),  # floor(340/256*224) = floor(297.5)
    (240, 320, 256, (256, 341)),  # floor(341.33)
    (340, 256, 224, (297, 224)),  # portrait
    (120, 120, 64, (64, 64)),
])
def test_resize_short_side_sizes(h, w, size, expected):
    out = resize_short_side(torch.rand(3, 2, h, w), size)
    assert tuple(out.shape[-2:]) == expected and out.shape[:2] == (3, 2)
    frames = np.zeros((2, h, w, 3), np.uint8)
    out_u8 = resize_short_side(frames, size)
    assert isinstance(out_u8, np.ndarray) and out_u8.dtype == np.uint8
    assert out_u8.shape == (2, *expected, 3)


def test_resize_short_side_matches_per_frame_bilinear():
    # Folding C and T into one batch must equal resizing each frame on its own.
    x = torch.rand(3, 4, 50, 70)
    out = resize_short_side(x, 32)
    ref = F.interpolate(x.permute(1, 0, 2, 3), size=(32, 44), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref.permute(1, 0, 2, 3), atol=1e-6)
    aa = resize_short_side(x, 32, antialias=True)
    ref_aa = F.interpolate(x.permute(1, 0, 2, 3), size=(32, 44), mode="bilinear", align_corners=False,
                           antialias=True)
    assert torch.allclose(aa, ref_aa.permute(1, 0, 2, 3), atol=1e-6)


def test_resize_keeps_constant_colour_and_noop_size():
    frames = np.full((2, 90, 120, 3), (10, 128, 250), np.uint8)
    out = resize_short_side(frames, 45)
    assert (out == np.array([10, 128, 250], np.uint8)).all()
    assert resize_short_side(frames, 90) is frames  # already the right size
    t = torch.from_numpy(frames)
    out_t = resize_short_side(t, 45)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.uint8 and out_t.shape == (2, 45, 60, 3)


def test_center_crop_offsets():
    x = coord_clip(10, 17)
    c = center_crop(x, 6)
    # offsets ceil((10-6)/2) = 2, ceil((17-6)/2) = ceil(5.5) = 6
    assert c.shape[-2:] == (6, 6) and c[0, 0, 0, 0].item() == 2 * 1000 + 6
    c2 = center_crop(x, (4, 8))
    assert c2.shape[-2:] == (4, 8) and c2[0, 0, 0, 0].item() == 3 * 1000 + 5  # ceil(4.5)=5
    f = coord_frames(2, 10, 17)
    cf = center_crop(f, 6)
    assert cf.shape == (2, 6, 6, 3) and cf[0, 0, 0, 0] == 6 and cf[0, 0, 0, 1] == 2
    with pytest.raises(ValueError):
        center_crop(x, 11)


def test_three_crops_landscape_left_centre_right():
    x = coord_clip(224, 300)
    crops = three_crops(x, 224)
    assert [tuple(c.shape[-2:]) for c in crops] == [(224, 224)] * 3
    # x offsets 0, ceil(76/2) = 38, 76; the short side is taken whole.
    assert [c[0, 0, 0, 0].item() for c in crops] == [0, 38, 76]


def test_three_crops_portrait_top_centre_bottom():
    x = coord_clip(301, 224)
    crops = three_crops(x, 224)
    assert [c[0, 0, 0, 0].item() for c in crops] == [0, 39 * 1000, 77 * 1000]  # ceil(77/2) = 39


def test_uniform_crop_short_side_larger_than_crop():
    x = coord_clip(230, 300)
    c = uniform_crop(x, 224, 2)
    assert c[0, 0, 0, 0].item() == 3 * 1000 + 76  # centred vertically (ceil(6/2)), right edge
    with pytest.raises(ValueError):
        uniform_crop(x, 224, 3)


def test_horizontal_flip_both_layouts():
    f = coord_frames(2, 4, 5)
    ff = horizontal_flip(f)
    assert ff[0, 0, 0, 0] == 4 and ff[0, 0, 4, 0] == 0
    assert np.array_equal(horizontal_flip(torch.from_numpy(f)).numpy(), ff)
    x = to_tensor(f)
    assert torch.equal(horizontal_flip(x), to_tensor(np.ascontiguousarray(ff)))


def test_normalize_values():
    x = torch.stack([torch.full((2, 3, 3), v) for v in (0.45, 0.9, 0.0)])  # [C, T, H, W]
    y = normalize(x, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    assert torch.allclose(y[0], torch.zeros(1)) and torch.allclose(y[1], torch.full((1,), 2.0))
    assert torch.allclose(y[2], torch.full((1,), -2.0))
    y5 = normalize(x[None], mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    assert torch.equal(y5[0], y)
    imnet = normalize(torch.ones(3, 1, 1, 1), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(imnet.flatten(), expected)


def test_clip_transform_one_crop():
    t = ClipTransform(224, mean=(0.45,) * 3, std=(0.225,) * 3)
    assert t.short_side == 256
    frames = np.zeros((16, 256, 340, 3), np.uint8)
    frames[..., 0] = 255  # pure red
    out = t(frames)
    assert out.shape == (1, 3, 16, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out[0, 0], torch.tensor((1 - 0.45) / 0.225), atol=1e-5)
    assert torch.allclose(out[0, 1], torch.tensor(-0.45 / 0.225), atol=1e-5)


def test_clip_transform_one_crop_is_resize_then_centre_crop():
    frames = coord_frames(4, 120, 200)
    t = ClipTransform(96, mean=(0.0,) * 3, std=(1.0,) * 3, short_side=110)
    ref = center_crop(resize_short_side(to_tensor(frames), 110), 96)
    assert torch.allclose(t(frames)[0], ref, atol=1e-6)


def test_clip_transform_three_crops_positions():
    frames = coord_frames(2, 120, 200)
    t = ClipTransform(100, mean=(0.0,) * 3, std=(1.0,) * 3, num_crops=3)
    assert t.short_side == 100
    out = t(frames)
    assert out.shape == (3, 3, 2, 100, 100)
    resized = resize_short_side(to_tensor(frames), 100)  # [3, 2, 100, 166]
    for k, crop in enumerate(three_crops(resized, 100)):
        assert torch.allclose(out[k], crop, atol=1e-6)
    # Red = column: left crop starts at column 0, right crop ends at the right edge.
    assert out[0, 0, 0, 50, 0] < out[1, 0, 0, 50, 0] < out[2, 0, 0, 50, 0]


def test_clip_transform_bgr_order():
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[..., 0] = 255  # red
    rgb = ClipTransform(32, mean=(0.0,) * 3, std=(1.0,) * 3, short_side=32)(frames)
    bgr = ClipTransform(32, mean=(0.0,) * 3, std=(1.0,) * 3, short_side=32, channel_order="bgr")(frames)
    assert rgb[0, 0].mean() == pytest.approx(1.0) and rgb[0, 2].mean() == pytest.approx(0.0)
    assert bgr[0, 2].mean() == pytest.approx(1.0) and bgr[0, 0].mean() == pytest.approx(0.0)
    assert torch.equal(bgr, rgb.flip(1))
    # mean/std are in the model's channel order: mean[0] applies to B under "bgr".
    b = ClipTransform(32, mean=(0.5, 0.0, 0.0), std=(1.0,) * 3, short_side=32, channel_order="bgr")(frames)
    assert b[0, 0].mean() == pytest.approx(-0.5) and b[0, 2].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ClipTransform(32, (0.0,) * 3, (1.0,) * 3, channel_order="hsv")


def test_clip_transform_validation():
    with pytest.raises(ValueError):
        ClipTransform(224, (0.45,) * 3, (0.225,) * 3, num_crops=2)
    with pytest.raises(ValueError):
        ClipTransform(224, (0.45,) * 3, (0.225,) * 3, short_side=200)
    assert ClipTransform(312, (0.45,) * 3, (0.225,) * 3).short_side == round(312 * 256 / 224)


def test_train_transform():
    frames = coord_frames(8, 120, 160)
    t = TrainTransform(64, mean=(0.45,) * 3, std=(0.225,) * 3, min_scale=64, max_scale=80,
                       rng=np.random.default_rng(0))
    out = t(frames)
    assert out.shape == (3, 8, 64, 64) and out.dtype == torch.float32
    a = TrainTransform(64, (0.45,) * 3, (0.225,) * 3, 64, 80, rng=np.random.default_rng(3))(frames)
    b = TrainTransform(64, (0.45,) * 3, (0.225,) * 3, 64, 80, rng=np.random.default_rng(3))(frames)
    assert torch.equal(a, b)


def test_train_transform_flip_flag():
    frames = coord_frames(2, 64, 64)  # red grows left to right
    no_flip = TrainTransform(64, (0.0,) * 3, (1.0,) * 3, 64, 64, flip=False, rng=np.random.default_rng(0))
    flips = TrainTransform(64, (0.0,) * 3, (1.0,) * 3, 64, 64, flip=True, rng=np.random.default_rng(0))
    directions = set()
    for _ in range(20):
        x = no_flip(frames)
        assert x[0, 0, 0, 0] < x[0, 0, 0, -1]  # never mirrored (SSv2: left/right matters)
        y = flips(frames)
        directions.add(bool(y[0, 0, 0, 0] < y[0, 0, 0, -1]))
    assert directions == {True, False}


def test_train_transform_scale_sampling():
    t = TrainTransform(64, (0.0,) * 3, (1.0,) * 3, 256, 320, rng=np.random.default_rng(0))
    s = [t.sample_scale() for _ in range(2000)]
    assert 256 <= min(s) and max(s) <= 320
    inv = TrainTransform(64, (0.0,) * 3, (1.0,) * 3, 256, 320, inverse_uniform=True,
                         rng=np.random.default_rng(0))
    si = [inv.sample_scale() for _ in range(2000)]
    assert 256 <= min(si) and max(si) <= 320
    # 1/U(1/320, 1/256) leans towards small sizes: its median is the harmonic midpoint (~284).
    assert np.median(si) < np.median(s)
    assert np.median(si) == pytest.approx(2 / (1 / 256 + 1 / 320), abs=3)
    assert math.isclose(np.median(s), 288, abs_tol=4)
