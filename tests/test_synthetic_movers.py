"""Large articulated movers in the camera-motion clips: labels follow the camera, figures are large and move their limbs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from videoapp.data import synthetic as S
from videoapp.data.synthetic_figures import ACTIONS, draw_figure, figure_parts, random_figure

REFERENCE = Path(__file__).parent / "data" / "synthetic_v4_reference.npz"


def test_option_zero_gives_the_clips_of_before_the_option():
    # Rendered by the generator as committed before large movers existed (GENERATOR_VERSION 4).
    ref = np.load(REFERENCE)
    pool = S.generate_pool(4, seed=3, num_frames=4, sampling_rate=4, crop_size=32,
                           classes=("pan_left", "zoom_in", "static", "shake"), large_movers=0.0)
    video = S.camera_motion_clip("rotate_cw", np.arange(4), 48, 64, np.random.default_rng(11), split="test",
                                 large_movers=0.0)
    for new, old in ((pool.clips, ref["pool"]), (video, ref["video"])):
        diff = np.abs(new.astype(np.int16) - old.astype(np.int16))
        assert diff.max() <= 1 and diff.mean() < 0.01  # rounding differences between CPUs at most
    key = dict(split="train", seed=0, num_frames=8, sampling_rate=4, crop_size=64)
    assert S.pool_key(100, **key) == S.pool_key(100, large_movers=0.0, **key)  # cached pools stay valid
    assert S.pool_key(100, large_movers=0.5, **key) != S.pool_key(100, **key)


def test_still_camera_with_movers_stays_static_outside_the_figures():
    got: list = []
    frames = S.camera_motion_clip("static", np.arange(24), 120, 160, np.random.default_rng(4),
                                  image=S.load_photo("gravel.png"), objects=False, large_movers=1.0, movers_out=got)
    assert 1 <= len(got) <= 2
    covered = torch.stack([a for _, a in got]).amax(0).amax(0).numpy() > 0.01  # ever covered by a figure
    g = frames.astype(np.float64).mean(-1)
    # First vs last third, averaged over frames against sensor noise; flicker is one offset per frame.
    d = g[-8:].mean(0) - g[:8].mean(0)
    change = np.abs(d - np.median(d))
    # The background does not move (residual noise only); the figures do.
    assert change[~covered].mean() < 3 and change[covered].mean() > 3 * change[~covered].mean()


@pytest.mark.parametrize("label", ["static", "pan_left", "zoom_in"])
def test_movers_change_only_their_own_pixels(label):
    # Figures are drawn in screen space over the camera's frames: everything else is the camera's.
    rng = np.random.default_rng(7)
    picture = S._picture("test", 0)
    path = S.motion_segment(label, np.arange(10.0), 96, rng)
    frames = S._sample(picture, path, 96, 128, S._placement(picture, path, 96, 128, rng))
    before = frames.clone()
    drawn = S._draw_large_movers(frames, np.arange(10.0), 30.0, "test", rng)
    alpha = torch.stack([a for _, a in drawn]).amax(0)
    assert torch.equal(frames.permute(1, 0, 2, 3)[:, alpha == 0], before.permute(1, 0, 2, 3)[:, alpha == 0])
    assert (frames - before).abs().amax(1)[alpha > 0.99].mean() > 1


def test_pools_and_videos_keep_the_camera_label(tmp_path):
    pool = S.generate_pool(10, seed=2, crop_size=32, large_movers=1.0)
    assert pool.labels.tolist() == list(range(10)) and pool.meta["large_movers"] == 1.0
    assert S.main([str(tmp_path), "--large-movers-videos", "2", "--seed", "5"]) == 0
    from videoapp.data.datasets import read_folder

    ann = read_folder(tmp_path)
    assert ann.classes == ["static"] and len(ann) == 2
    with pytest.raises(SystemExit):
        S.main([str(tmp_path), "--large-movers-videos", "0"])


def _blank(fig_seed: int, action: str, n: int = 16, h: int = 120, w: int = 160):
    t = np.arange(n) / 30.0 * 2  # 16 frames over ~1 s
    fig = random_figure(h, w, t, np.random.default_rng(fig_seed), action=action)
    fig.x_mid, fig.vx = w / 2, 0.0  # in view the whole time
    frames = torch.zeros(n, 3, h, w)
    alpha = draw_figure(frames, fig, t, torch.full((1, 3, 32, 32), 128.0))
    return fig, t, alpha.numpy()


@pytest.mark.parametrize("action", ACTIONS)
def test_movers_are_large(action):
    h = 120
    for seed in range(6):
        fig, _, alpha = _blank(seed, action)
        assert 0.3 * h <= fig.height <= 0.7 * h
        rows = (alpha > 0.5).any(2)
        heights = np.array([np.flatnonzero(r)[-1] - np.flatnonzero(r)[0] + 1 for r in rows])
        # Standing extent, less when bending, more with raised arms (clipped by the frame's top).
        assert heights.max() >= 0.9 * fig.height and heights.max() <= min(1.25 * fig.height, h)
        assert heights.min() >= 0.5 * fig.height
        area = (alpha > 0.5).sum((1, 2))
        assert area.min() >= 0.05 * fig.height ** 2  # a body, not a stick figure


@pytest.mark.parametrize("action,part", [("walk", "shin_b"), ("walk", "forearm_a"), ("wave", "forearm_b"),
                                         ("bend", "head"), ("jacks", "forearm_b"), ("jacks", "shin_a")])
def test_limbs_move_relative_to_the_body(action, part):
    fig, t, alpha = _blank(1, action)
    parts = figure_parts(fig, t)
    pelvis = parts["torso"][0]
    end = parts[part][1] - pelvis
    assert np.ptp(end, 0).max() >= 0.1 * fig.height  # the limb end travels around the pelvis
    # In pixels: the silhouette changes shape (the figure stays in place here).
    masks = alpha > 0.5
    ious = [(m & masks[0]).sum() / (m | masks[0]).sum() for m in masks[1:]]
    assert min(ious) < 0.9  # a rigid figure in place would keep IoU 1 (waving moves one forearm only)


def test_movers_are_deterministic_by_seed():
    def clip(seed: int) -> np.ndarray:
        return S.camera_motion_clip("pan_right", np.arange(0, 32, 4), 96, 128, np.random.default_rng(seed),
                                    split="test", large_movers=1.0)

    assert np.array_equal(clip(3), clip(3)) and not np.array_equal(clip(3), clip(4))
    a = S.generate_pool(6, seed=1, crop_size=32, large_movers=0.5)
    b = S.generate_pool(6, seed=1, crop_size=32, large_movers=0.5)
    plain = S.generate_pool(6, seed=1, crop_size=32)
    assert np.array_equal(a.clips, b.clips) and not np.array_equal(a.clips, plain.clips)
