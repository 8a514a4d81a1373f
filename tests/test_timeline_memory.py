"""The timeline's sequential pass: frames and scores identical to random access, memory bounded.

``VideoReader.iter_frames`` (the one-pass timeline) decodes with PyAV even
where decord serves ``get_frames``: decord's threads interleaved with the
model's forward passes grew a 90 s timeline by 400-1000 MB. These tests pin
(1) that the switch changes no pixel: the frames of a sequential pass equal
``get_frames`` of the same indices on H.264, VP9, a rotated clip and the real
clips in ``../shared/clips`` (including the MPEG-4 AVI with B-frames);
(2) that transforming each window's frames while decoding (so full-size
frames are not held) gives the per-window transform and scores bit for bit,
also at 1080p; and (3) that the timeline's peak memory does not grow with the
video's length and stays under the bound, at 160x120 and at 1080p:
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
from videoapp.engine import predict
from videoapp.engine.predict import Predictor
from videoapp.models import create_model
from videoapp.weights import default_weights

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


def _tiny_model(**cfg):
    torch.manual_seed(3)
    m = create_model("mvitv2_xxs_8x64", num_classes=4).eval()
    m.pretrained_cfg = m.pretrained_cfg.replace(labels=("a", "b", "c", "d"), num_frames=8, sampling_rate=3, **cfg)
    return m


def _per_window(p: Predictor, video: str, window: float, stride: float):
    """The timeline computed the way it was before: each window's clip decoded whole, then transformed."""
    with VideoReader(video) as r:
        wins = p.windows(r.info.num_frames, r.info.fps, window, stride)
        clips = [r.get_frames(w.indices) for w in wins]
    return wins, clips


# (chunk frames, num_crops, sampling): None keeps the real thresholds (a 160x120 clip is one
# transform call); 3 splits 8 frames 3+3+2, 1 is the 1080p way (one frame a call).
@pytest.mark.parametrize("chunk,num_crops,sampling", [(None, 1, "rate"), (3, 1, "rate"), (1, 3, "rate"),
                                                      (3, 1, "uniform")])
def test_timeline_is_the_per_window_transform_bit_for_bit(chunk, num_crops, sampling, make_video, monkeypatch):
    # 4 s at 10 fps, windows of 1.2 s every 0.5 s: a window's 8x3 clip span
    # reaches into its neighbours' (some frames shared by two windows) and is
    # clamped at both ends of the video (repeated frames).
    video = make_video(num_frames=40, fps=10, gop=10)
    if chunk is not None:
        monkeypatch.setattr(predict, "_TRANSFORM_WHOLE_MAX_BYTES", 0)
        monkeypatch.setattr(predict, "_TRANSFORM_CHUNK_BYTES", chunk * 160 * 120 * 3 * 4)
        assert predict._transform_step(8, 120, 160) == chunk
    p = Predictor(_tiny_model(sampling=sampling), num_crops=num_crops, batch_size=3)
    wins, clips = _per_window(p, video, 1.2, 0.5)
    assert len(wins) == 7 and all(w.indices.max() > v.indices.min() for w, v in zip(wins, wins[1:]))
    assert any(set(w.indices) & set(v.indices) for w, v in zip(wins, wins[1:]))
    assert sampling == "uniform" or len(set(wins[0].indices)) < 8
    with VideoReader(video) as r:
        got = list(predict._iter_window_inputs(r, wins, p.transform))
    want = [predict._transform_in_chunks(p.transform, c) for c in clips]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == (num_crops, 3, 8, 64, 64) and g.equal(w)
    pred = p.predict(video, window=1.2, stride=0.5)
    np.testing.assert_array_equal(pred.window_scores, p.scores(clips))


@pytest.fixture(scope="module")
def clip_1080p(tmp_path_factory):
    return generate_cheap_video(tmp_path_factory.mktemp("hd") / "hd.mp4", 4, 30, 1920, 1080)


def test_1080p_timeline_scores_equal_per_window_predictions(clip_1080p):
    # The shipped model (8 frames, 64 px crops) at 1080p: one frame per
    # transform call, each right after it is decoded; scores as before, bit for bit.
    weights = default_weights()
    if weights is None:
        pytest.skip("no shipped default weights")
    p = Predictor(weights)
    assert predict._transform_step(p.num_frames, 1080, 1920) == 1
    wins, clips = _per_window(p, str(clip_1080p), 1.0, 1.0)
    assert len(wins) == 4
    pred = p.predict(clip_1080p, window=1.0, stride=1.0)
    np.testing.assert_array_equal(pred.window_scores, p.scores(clips))
    assert pred.scores.argmax() == p.scores(clips).mean(0).argmax()


def _peaks(video: Path, runs: int = 3) -> list[dict]:
    # Fresh processes (VmHWM over the RSS after `import torch`, shipped default
    # model, one torch thread), run at once.
    with ThreadPoolExecutor(runs) as pool:
        return list(pool.map(lambda _: measure(video, "pyav", 3.0, 3.0, timeout=300, threads=1), range(runs)))


@pytest.mark.parametrize("width,height,seconds", [(160, 120, (12, 48)), (1920, 1080, (3, 12))])
def test_timeline_peak_memory_does_not_grow_with_length(width, height, seconds, tmp_path):
    # Median of three fresh processes per length, 3 s windows as the CLI's
    # --window-s 3: 4x the length, 4x the windows, the same peak, under the bound.
    short, long = (_peaks(generate_cheap_video(tmp_path / f"{s}s.mp4", s, 30, width, height)) for s in seconds)
    assert [r["windows"] for r in short] == [seconds[0] // 3] * 3
    assert [r["windows"] for r in long] == [seconds[1] // 3] * 3
    med_short = statistics.median(r["peak_over_torch_mib"] for r in short)
    med_long = statistics.median(r["peak_over_torch_mib"] for r in long)
    assert med_long - med_short < 50, (short, long)
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
