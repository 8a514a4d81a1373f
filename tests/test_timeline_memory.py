"""The timeline's sequential pass: PyAV frames identical to random access, and memory bounded by length.

``VideoReader.iter_frames`` (the one-pass timeline) decodes with PyAV even
where decord serves ``get_frames``: decord's threads interleaved with the
model's forward passes grew a 90 s timeline by 400-1000 MB. These tests pin
(1) that the switch changes no pixel: the frames of a sequential pass equal
``get_frames`` of the same indices on H.264, VP9, a rotated clip and the real
clips in ``../shared/clips`` (including the MPEG-4 AVI with B-frames); and
(2) that the timeline's peak memory does not grow with the video's length:
``benchmarks/bench_timeline_memory.py`` measures ``Predictor.predict`` with
windows in fresh processes (VmHWM over the RSS after ``import torch``).
"""
from __future__ import annotations

import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from videos import _texture, decode_indices, render_frame
from videoapp.data.sampling import iter_window_clips, sliding_windows
from videoapp.data.video import VideoReader

decord = pytest.importorskip("decord")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_timeline_memory import BOUND_MIB, generate_cheap_video, measure  # noqa: E402


def _write_vp9(path: Path, num_frames: int = 45, fps: int = 15, width: int = 160, height: int = 120,
               gop: int = 10) -> str:
    container = av.open(str(path), "w")
    stream = container.add_stream("libvpx-vp9", rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.gop_size = gop
    stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}
    texture = _texture(width, height)
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(render_frame(i, width, height, "moving", texture), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return str(path)


def _assert_sequential_equals_random_access(path: str, expect_pyav_pass: bool) -> None:
    with VideoReader(path) as r:
        n = r.info.num_frames
        head = min(n, 80)  # every frame of the first 80; the windows below reach the end
        seq = dict(r.iter_frames(0, head))
        # The pass went through PyAV where decord does the random access.
        assert (r._seq is not None) == expect_pyav_pass, r.backend
        assert sorted(seq) == list(range(head))
        everything = r.get_frames(np.arange(head))
        for i in range(head):
            np.testing.assert_array_equal(seq[i], everything[i], err_msg=f"{path}: frame {i}")
        # Sparse: the timeline's way (GOPs skipped between windows), compared with one seek per window.
        wins = sliding_windows(n, r.info.fps, 1.0, 1.5, 4)
        for w, clip in iter_window_clips(r, wins):
            np.testing.assert_array_equal(clip, r.get_frames(w.indices))
        assert r.unreadable is None


@pytest.mark.parametrize("kind", ["h264", "h264_rotated", "vp9"])
def test_sequential_pass_is_pyav_and_pixel_identical(kind, make_video, tmp_path):
    if kind == "vp9":
        path = _write_vp9(tmp_path / "vp9.webm")
    else:
        path = make_video(num_frames=75, fps=25, gop=10, pattern="moving",
                          rotation=90 if kind == "h264_rotated" else 0)
    with VideoReader(path) as r:
        assert r.backend == "decord"
    _assert_sequential_equals_random_access(path, expect_pyav_pass=True)
    with VideoReader(path) as r:
        assert decode_indices(np.stack([f for _, f in r.iter_frames(0, 12)])) == list(range(12))


def test_real_clips_pixel_identical(shared_clips):
    clips = sorted(p for p in shared_clips.iterdir() if p.suffix in (".mp4", ".avi"))
    assert any(p.suffix == ".avi" for p in clips)
    for clip in clips:
        with VideoReader(clip) as r:
            on_decord = r.backend == "decord"
        # The DivX-style AVI (MPEG-4 with B-frames) is read by PyAV throughout.
        assert on_decord == (clip.suffix == ".mp4"), clip
        _assert_sequential_equals_random_access(str(clip), expect_pyav_pass=on_decord)


def test_explicit_decord_keeps_its_sequential_pass(make_video):
    path = make_video(num_frames=30, fps=30, gop=10)
    with VideoReader(path, backend="decord") as r:
        assert [i for i, _ in r.iter_frames()] == list(range(30))
        assert r._seq is None and r.backend == "decord"


def test_sequential_stays_on_decord_when_pyav_counts_differently(make_video, monkeypatch, caplog):
    from videoapp.data import video as video_mod

    path = make_video(num_frames=30, fps=30, gop=10)
    real_init = video_mod._PyAVBackend.__init__

    def short_count(self, p):
        real_init(self, p)
        self.num_frames -= 1
    monkeypatch.setattr(video_mod._PyAVBackend, "__init__", short_count)
    with caplog.at_level("DEBUG", logger="videoapp"), VideoReader(path) as r:
        got = decode_indices(np.stack([f for _, f in r.iter_frames()]))
        assert r._seq is None and r.backend == "decord"
    assert got == list(range(30))
    assert "PyAV counts 29 frames, decord 30" in caplog.text


def test_damage_met_by_the_pyav_pass_turns_tolerant(make_video, monkeypatch, caplog):
    # PyAV losing frames mid-pass: the reader goes over to PyAV with the tolerant
    # pass (the documented damaged-file behaviour), one warning, frames still served.
    from videoapp.data import video as video_mod

    path = make_video(num_frames=40, fps=20, gop=10)
    real_iter = video_mod._PyAVBackend.iter_frames

    def lossy(self, wanted, frame_bytes=0):
        for index, frame in real_iter(self, wanted, frame_bytes):
            if index == 25:
                raise video_mod._Undecodable(self.path, "damaged data after frame 24")
            yield index, frame
    monkeypatch.setattr(video_mod._PyAVBackend, "iter_frames", lossy)
    with VideoReader(path) as r:
        got = decode_indices(np.stack([f for _, f in r.iter_frames()]))
        assert r.backend == "pyav" and r.unreadable == 0
    assert got == list(range(40))


@pytest.fixture(scope="module")
def two_lengths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timeline_memory")
    return [generate_cheap_video(folder / f"{s}s.mp4", s, 30, 160, 120) for s in (12, 48)]


def test_timeline_peak_memory_does_not_grow_with_length(two_lengths):
    # Median of three fresh processes per length (VmHWM over the RSS after
    # `import torch`, shipped default model, 4 s windows, one torch thread);
    # the three run at once. 4x the length, 4x the windows, same peak.
    def peaks(video: Path) -> list[dict]:
        with ThreadPoolExecutor(3) as pool:
            return list(pool.map(lambda _: measure(video, "pyav", 4.0, 4.0, timeout=300, threads=1), range(3)))

    short, long = (peaks(v) for v in two_lengths)
    assert [r["windows"] for r in short] == [3] * 3 and [r["windows"] for r in long] == [12] * 3
    med_short = statistics.median(r["peak_over_torch_mib"] for r in short)
    med_long = statistics.median(r["peak_over_torch_mib"] for r in long)
    assert med_long - med_short < 100, (short, long)
    assert max(r["peak_over_torch_mib"] for r in short + long) < BOUND_MIB, (short, long)


@pytest.mark.parametrize("num_crops", [1, 3])
def test_chunked_transform_matches_the_whole_clip_transform(num_crops, monkeypatch):
    # The timeline transforms big (e.g. 1080p) clips a few frames at a time, for
    # bounded float memory; resize, crop and normalisation are per frame, so the
    # result is the one-call transform up to torch's kernel choice (one ulp).
    from videoapp.data.transforms import ClipTransform
    from videoapp.engine import predict

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(7, 90, 120, 3), dtype=np.uint8)
    transform = ClipTransform(crop_size=32, mean=[0.45, 0.4, 0.35], std=[0.225, 0.2, 0.25], num_crops=num_crops)
    whole = transform(clip)
    assert predict._transform_in_chunks(transform, clip).equal(whole)  # small clip: the one call, exact
    monkeypatch.setattr(predict, "_TRANSFORM_WHOLE_MAX_BYTES", 0)
    # 90x120 float frames are 130 KB: chunks of 2 frames (the last one alone), then of 1.
    for chunk_bytes in (2 * 90 * 120 * 3 * 4, 1):
        monkeypatch.setattr(predict, "_TRANSFORM_CHUNK_BYTES", chunk_bytes)
        out = predict._transform_in_chunks(transform, clip)
        assert out.shape == whole.shape == (num_crops, 3, 7, 32, 32)
        torch.testing.assert_close(out, whole, rtol=0, atol=2e-6)
        if chunk_bytes == 1:  # exactly each frame's own transform, in time order
            for i in range(7):
                assert out[:, :, i:i + 1].equal(transform(clip[i:i + 1]))
