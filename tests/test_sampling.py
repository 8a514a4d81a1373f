"""videoapp.data.sampling: exact sampler formulas, sliding windows, one-pass window decoding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videoapp.data.sampling import (Window, clip_indices, iter_window_clips, multiview_indices,
                                    random_clip_indices, sliding_windows, uniform_indices)
from videoapp.data.video import VideoReader
from videos import decode_indices


def _slowfast_reference(video_size, num_frames, sampling_rate, clip_idx, num_clips):
    """PySlowFast get_start_end_idx + temporal_sampling, written out step by step."""
    clip_size = sampling_rate * num_frames
    delta = max(video_size - clip_size, 0)
    start = delta * clip_idx / num_clips
    end = start + clip_size - 1
    frames = torch.arange(video_size)  # stand-in for the decoded frames
    index = torch.linspace(start, end, num_frames)
    index = torch.clamp(index, 0, frames.shape[0] - 1).long()
    return torch.index_select(frames, 0, index).numpy()


# ----------------------------------------------------------------------------------
# Kinetics-style samplers
# ----------------------------------------------------------------------------------
def test_clip_indices_linspace_truncation():
    # linspace(10, 17, 4) = 10, 12.33, 14.67, 17 -> truncated
    assert clip_indices(100, 4, 10.0, 8.0).tolist() == [10, 12, 14, 17]
    assert clip_indices(100, 4, 10.0, 8.0).dtype == np.int64


def test_multiview_small_case_by_hand():
    # clip = 2*4 = 8, delta = 42: starts 0 and 42*1/2 = 21 (divided by num_clips, not num_clips-1)
    views = multiview_indices(50, 4, 2, num_clips=2)
    assert [v.tolist() for v in views] == [[0, 2, 4, 7], [21, 23, 25, 28]]


def test_multiview_16x4_matches_slowfast_formula():
    views = multiview_indices(300, 16, 4, num_clips=5)
    assert len(views) == 5
    for i, v in enumerate(views):
        assert v.dtype == np.int64 and v.shape == (16,)
        assert v.tolist() == _slowfast_reference(300, 16, 4, i, 5).tolist()
    # Step is (64-1)/15 = 4.2, not 4; first view starts at 0, last at 236*4/5 = 188.8.
    assert views[0].tolist() == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]
    assert views[4][0] == 188 and views[4][-1] == 251


def test_multiview_short_video_repeats_last_frame():
    # clip 16 > 10 frames: delta 0, every view starts at 0, indices clamp at 9.
    views = multiview_indices(10, 4, 4, num_clips=3)
    for v in views:
        assert v.tolist() == [0, 5, 9, 9]


def test_multiview_use_offset():
    # delta = 100 - 8 = 92: starts i * floor(92/2) = 0, 46, 92; one clip: floor(92/2) = 46.
    starts = [v[0] for v in multiview_indices(100, 4, 2, num_clips=3, use_offset=True)]
    assert starts == [0, 46, 92]
    assert multiview_indices(100, 4, 2, num_clips=1, use_offset=True)[0][0] == 46


def test_fps_rescaling_of_clip_span():
    # 60 fps video, model trained at 30: the clip spans 2x as many frames.
    v = multiview_indices(1000, 8, 8, num_clips=1, fps=60, target_fps=30)[0]
    assert v[0] == 0 and v[-1] == 127


def test_random_clip_indices():
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(300):
        v = random_clip_indices(200, 16, 4, rng)
        assert v.dtype == np.int64 and v.shape == (16,)
        assert v[-1] - v[0] in (62, 63)  # span clip-1 = 63 before truncation
        assert 0 <= v[0] and v[-1] <= 199
        assert np.all(np.diff(v) >= 4)
        starts.append(v[0])
    assert min(starts) <= 5 and max(starts) >= 130  # the whole range [0, 136] gets used
    a = random_clip_indices(200, 16, 4, np.random.default_rng(7))
    b = random_clip_indices(200, 16, 4, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_random_clip_longer_than_video_pads_with_last_frame():
    v = random_clip_indices(20, 16, 4, np.random.default_rng(0))
    assert v[0] == 0 and v[-1] == 19
    assert (v == 19).sum() >= 10


# ----------------------------------------------------------------------------------
# SSv2 uniform sampling
# ----------------------------------------------------------------------------------
def test_uniform_indices_by_hand():
    # seg = 9/4 = 2.25; bounds round(0, 2.25, 4.5, 6.75, 9) = 0, 2, 4 (half to even), 7, 9
    assert uniform_indices(10, 4).tolist() == [1, 3, 5, 8]
    assert uniform_indices(10, 4).dtype == np.int64


def test_uniform_indices_follow_slowfast_get_seq_frames():
    for n, t in [(48, 16), (100, 8), (7, 16), (1, 4)]:
        seg = float(n - 1) / t
        expected = [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(t)]
        assert uniform_indices(n, t).tolist() == expected


def test_uniform_indices_random_offsets_stay_in_their_segment():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        v = uniform_indices(10, 4, rng)
        for k, (lo, hi) in enumerate([(0, 2), (2, 4), (4, 7), (7, 9)]):
            assert lo <= v[k] <= hi
        seen.add(v[2])
    assert seen == {4, 5, 6, 7}


def test_bad_counts():
    with pytest.raises(ValueError):
        uniform_indices(0, 4)
    with pytest.raises(ValueError):
        multiview_indices(10, 4, 2, num_clips=0)


# ----------------------------------------------------------------------------------
# Sliding windows
# ----------------------------------------------------------------------------------
def test_sliding_windows_exact_cover():
    ws = sliding_windows(300, 30.0, window_s=2.0, stride_s=1.0, num_frames=4)
    assert [(w.start_s, w.end_s) for w in ws] == [(float(k), float(k + 2)) for k in range(9)]
    # Window [0, 2 s) = frames [0, 60): centres of 4 parts: 7.5, 22.5, 37.5, 52.5
    assert ws[0].indices.tolist() == [7, 22, 37, 52]
    assert ws[-1].indices.tolist() == [247, 262, 277, 292]


def test_sliding_windows_last_window_covers_the_end():
    ws = sliding_windows(315, 30.0, window_s=2.0, stride_s=1.0, num_frames=8)
    assert len(ws) == 10
    assert (ws[-2].start_s, ws[-2].end_s) == (8.0, 10.0)
    assert ws[-1].start_s == pytest.approx(8.5) and ws[-1].end_s == pytest.approx(10.5)
    # frames [255, 315): last of 8 part centres at 255 + 7.5 * 7.5 = 311.25
    assert ws[-1].indices[0] == 258 and ws[-1].indices[-1] == 311


def test_sliding_windows_short_video_gives_one_window():
    ws = sliding_windows(30, 30.0, window_s=2.0, stride_s=1.0, num_frames=16)
    assert len(ws) == 1
    assert (ws[0].start_s, ws[0].end_s) == (0.0, 1.0)
    assert ws[0].indices.min() >= 0 and ws[0].indices.max() <= 29 and len(ws[0].indices) == 16


def test_sliding_windows_indices_are_inside_their_window():
    ws = sliding_windows(1000, 25.0, window_s=3.2, stride_s=0.7, num_frames=16)
    for w in ws:
        assert w.indices.dtype == np.int64 and len(w.indices) == 16
        assert np.all(np.diff(w.indices) >= 0)
        assert w.start_s * 25 - 1e-6 <= w.indices[0] and w.indices[-1] < w.end_s * 25
    assert ws[-1].end_s == pytest.approx(40.0)


# ----------------------------------------------------------------------------------
# One-pass window decoding
# ----------------------------------------------------------------------------------
class CountingReader:
    """Wraps a VideoReader and counts how it is used."""

    def __init__(self, reader):
        self.reader = reader
        self.iter_calls = 0
        self.get_calls = 0

    def iter_frames(self, *a, **k):
        self.iter_calls += 1
        return self.reader.iter_frames(*a, **k)

    def get_frames(self, *a, **k):
        self.get_calls += 1
        return self.reader.get_frames(*a, **k)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_iter_window_clips_equals_get_frames(make_video, backend):
    path = make_video(num_frames=600, fps=30, width=96, height=64, gop=30)
    with VideoReader(path, backend=backend) as r:
        ws = sliding_windows(r.info.num_frames, r.info.fps, window_s=2.0, stride_s=0.5, num_frames=8)
        assert len(ws) == 37
        counting = CountingReader(r)
        it = iter_window_clips(counting, ws)
        n = 0
        for w, clip in it:
            assert w is ws[n]
            assert clip.shape == (8, 64, 96, 3) and clip.dtype == np.uint8
            assert decode_indices(clip) == w.indices.tolist()
            assert np.array_equal(clip, r.get_frames(w.indices))
            n += 1
        assert n == len(ws)
        assert counting.iter_calls == 1 and counting.get_calls == 0  # one pass, no seeks per window
        assert it.peak_buffered_frames <= 2 * 8
        needed = np.unique(np.concatenate([w.indices for w in ws]))
        assert it.frames_decoded == len(needed)


class FakeReader:
    """A 'video' of any length whose frames are tiny arrays holding their index."""

    def __init__(self, num_frames):
        self.num_frames = num_frames
        self.passes = 0

    def iter_frames(self, start=0, stop=None, only=None):
        self.passes += 1
        stop = self.num_frames if stop is None else stop
        wanted = range(start, stop) if only is None else sorted(set(int(i) for i in only))
        for i in wanted:
            if start <= i < stop:
                yield i, np.full((1, 1, 3), i % 251, np.uint8)


@pytest.mark.parametrize("hours", [0.1, 1.0])
def test_window_buffer_does_not_grow_with_video_length(hours):
    fps = 30.0
    n = int(hours * 3600 * fps)
    ws = sliding_windows(n, fps, window_s=2.0, stride_s=1.0, num_frames=16)
    reader = FakeReader(n)
    it = iter_window_clips(reader, ws)
    count = 0
    for w, clip in it:
        assert clip[:, 0, 0, 0].tolist() == (w.indices % 251).tolist()
        count += 1
    assert count == len(ws) and reader.passes == 1
    assert it.peak_buffered_frames <= 2 * 16  # about two windows, whatever the length


def test_heavily_overlapping_windows_stay_bounded():
    ws = sliding_windows(30 * 600, 30.0, window_s=4.0, stride_s=0.25, num_frames=32)
    it = iter_window_clips(FakeReader(30 * 600), ws)
    for _ in it:
        pass
    # Bounded by the frames inside one window span (120 at 30 fps), not the video.
    assert it.peak_buffered_frames <= 120


def test_max_buffered_frames_guard():
    ws = sliding_windows(3000, 30.0, window_s=2.0, stride_s=1.0, num_frames=16)
    with pytest.raises(RuntimeError, match="max_buffered_frames"):
        for _ in iter_window_clips(FakeReader(3000), ws, max_buffered_frames=8):
            pass


def test_windows_given_out_of_order_still_correct():
    ws = sliding_windows(900, 30.0, window_s=2.0, stride_s=1.0, num_frames=4)
    shuffled = [ws[5], ws[0], ws[20], ws[3]]
    out = list(iter_window_clips(FakeReader(900), shuffled))
    assert [w for w, _ in out] == shuffled
    for w, clip in out:
        assert clip[:, 0, 0, 0].tolist() == (w.indices % 251).tolist()


def test_no_windows():
    assert list(iter_window_clips(FakeReader(10), [])) == []


def test_window_dataclass():
    w = Window(1.0, 3.0, np.array([30, 60]))
    assert w.start_s == 1.0 and w.end_s == 3.0 and w.indices.tolist() == [30, 60]
    assert math.isclose(w.end_s - w.start_s, 2.0)
