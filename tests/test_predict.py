"""Predictor: preprocessing follows the weights, views are averaged, the timeline is one pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from videoapp.data.transforms import ClipTransform
from videoapp.data.video import VideoReader
from videoapp.engine.predict import Predictor
from videoapp.models import create_model
from videos import decode_indices, write_test_video

TINY = "mvitv2_xxs_8x64"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = create_model(TINY, num_classes=4).eval()
    m.pretrained_cfg = m.pretrained_cfg.replace(labels=("a", "b", "c", "d"), num_frames=8, sampling_rate=3)
    return m


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # 4 s at 25 fps: long enough for distinct views and several windows.
    return write_test_video(tmp_path_factory.mktemp("p") / "v.mp4", num_frames=100, fps=25, width=128, height=96)


def reference_probs(model, frames):
    dc = model.pretrained_cfg
    x = ClipTransform(dc.crop_size, dc.mean, dc.std)(frames)
    with torch.inference_mode():
        return model(x).softmax(-1).mean(0).numpy()


def test_whole_video_is_the_mean_over_views(model, video):
    pred = Predictor(model, num_clips=3).predict(video, top_k=4)
    views = Predictor(model, num_clips=3).clip_indices(100)
    assert len(views) == 3 and pred.views == 3
    with VideoReader(video) as r:
        expected = np.mean([reference_probs(model, r.get_frames(v)) for v in views], axis=0)
    np.testing.assert_allclose(pred.scores, expected, rtol=1e-5, atol=1e-6)
    assert [s.label for s in pred.top_k] == [model.pretrained_cfg.labels[i] for i in np.argsort(-expected)]


def test_views_follow_the_weights_sampling_rate(model):
    views = Predictor(model, num_clips=2).clip_indices(100)
    for v in views:
        # PySlowFast spreads num_frames over one span of num_frames * rate frames.
        assert v[-1] - v[0] == 8 * 3 - 1 and set(np.diff(v)) <= {3, 4}
    # A video shorter than one clip gives one view, not several identical ones.
    short = Predictor(model, num_clips=5).clip_indices(10)
    assert len(short) == 1


def test_timeline_windows_are_centred_clips_at_the_trained_rate(model, video):
    p = Predictor(model)
    wins = p.windows(100, 25.0, window_s=1.0, stride_s=1.0)
    assert [(w.start_s, w.end_s) for w in wins] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for w in wins[1:-1]:
        assert w.indices[-1] - w.indices[0] == 8 * 3 - 1
        centre = (w.start_s + w.end_s) / 2 * 25
        assert abs((w.indices[0] + w.indices[-1]) / 2 - centre) <= 1
    assert wins[0].indices.min() == 0 and wins[-1].indices.max() == 99


def test_timeline_scores_equal_per_window_decoding(model, video):
    pred = Predictor(model).predict(video, top_k=2, window=1.0, stride=0.5)
    p = Predictor(model)
    wins = p.windows(100, 25.0, 1.0, 0.5)
    assert len(pred.windows) == len(wins) == 7
    with VideoReader(video) as r:
        for w, got in zip(wins, pred.window_scores):
            frames = r.get_frames(w.indices)
            assert decode_indices(frames) == list(w.indices)
            np.testing.assert_allclose(got, reference_probs(model, frames), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.scores, pred.window_scores.mean(0), rtol=1e-6)
    assert pred.to_dict()["windows"][1]["start_s"] == 0.5


def test_uniform_sampling_and_bgr_from_metadata(model, video):
    m = create_model(TINY, num_classes=4).eval()
    m.pretrained_cfg = model.pretrained_cfg.replace(sampling="uniform", channel_order="bgr")
    p = Predictor(m)
    (view,) = p.clip_indices(100)
    assert len(view) == 8 and view[0] < 12 and view[-1] > 87
    assert p.transform.channel_order == "bgr"
    pred = p.predict(video)
    with VideoReader(video) as r:
        frames = r.get_frames(view)
    dc = m.pretrained_cfg
    x = ClipTransform(dc.crop_size, dc.mean, dc.std, channel_order="bgr")(frames)
    with torch.inference_mode():
        expected = m(x).softmax(-1).mean(0).numpy()
    np.testing.assert_allclose(pred.scores, expected, rtol=1e-5, atol=1e-6)


def test_three_crops_are_averaged(model, video):
    p = Predictor(model, num_clips=1, num_crops=3)
    pred = p.predict(video)
    assert pred.views == 3
    (view,) = p.clip_indices(100)
    with VideoReader(video) as r:
        frames = r.get_frames(view)
    dc = model.pretrained_cfg
    x = ClipTransform(dc.crop_size, dc.mean, dc.std, num_crops=3)(frames)
    assert x.shape[0] == 3
    with torch.inference_mode():
        expected = model(x).softmax(-1).mean(0).numpy()
    np.testing.assert_allclose(pred.scores, expected, rtol=1e-5, atol=1e-6)
