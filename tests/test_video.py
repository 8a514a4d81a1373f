"""videoapp.data.video: probing, frame-accurate decoding, backend fallback, bad input."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil

import numpy as np
import pytest

import videoapp.data.video as video_mod
from videoapp.data.video import VideoError, VideoInfo, VideoReader, probe
from videos import (decode_index, decode_indices, no_hang, truncate_copy, write_empty_video, write_test_audio,
                    write_test_video)

decord = pytest.importorskip("decord")

FORMATS = [  # (ext, codec): the containers/codecs people actually drop on us
    ("mp4", "h264"),
    ("mkv", "h264"),
    ("avi", "mpeg4"),
]


def _assert_rgb_strips(frame: np.ndarray) -> None:
    # Bottom third: red | green | blue strips. Decoders that return BGR fail here.
    h, w = frame.shape[:2]
    y = h - h // 6
    for k, x in enumerate((w // 6, w // 2, w - w // 6)):
        px = frame[y, x].astype(int)
        assert px[k] > 200 and px[[i for i in range(3) if i != k]].max() < 60, (k, px)


# ----------------------------------------------------------------------------------
# Frame-index correctness
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("ext,codec", FORMATS)
def test_get_frames_returns_the_frames_asked_for(make_video, backend, ext, codec):
    path = make_video(ext=ext, codec=codec, num_frames=90, fps=30, gop=15)
    with VideoReader(path, backend=backend) as r:
        assert r.backend == ("decord" if backend == "auto" else "pyav")
        # Unsorted, repeated, across several GOPs, first and last frame.
        idx = [89, 3, 3, 0, 47, 46, 15, 16, 88, 47]
        frames = r.get_frames(idx)
        assert frames.dtype == np.uint8 and frames.shape == (len(idx), 120, 160, 3)
        assert frames.flags.c_contiguous
        assert decode_indices(frames) == idx
        _assert_rgb_strips(frames[0])
        # A second call goes backwards: must seek, not continue.
        assert decode_indices(r.get_frames(np.array([5, 1]))) == [5, 1]


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_every_frame_in_order(make_video, backend):
    path = make_video(num_frames=75, fps=25, gop=10)
    with VideoReader(path, backend=backend) as r:
        assert decode_indices(r.get_frames(range(75))) == list(range(75))
        got = [(i, decode_index(f)) for i, f in r.iter_frames()]
        assert got == [(i, i) for i in range(75)]


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_iter_frames_range_and_subset(make_video, backend):
    path = make_video(num_frames=90, fps=30, gop=15)
    with VideoReader(path, backend=backend) as r:
        part = list(r.iter_frames(31, 47))
        assert [i for i, _ in part] == list(range(31, 47))
        assert [decode_index(f) for _, f in part] == list(range(31, 47))
        ref = r.get_frames(range(31, 47))
        assert np.array_equal(np.stack([f for _, f in part]), ref)
        only = [60, 2, 33, 34, 89, 2]
        sub = list(r.iter_frames(only=only))
        assert [i for i, _ in sub] == [2, 33, 34, 60, 89]
        assert [decode_index(f) for _, f in sub] == [2, 33, 34, 60, 89]
        assert list(r.iter_frames(10, 10)) == []
        assert [i for i, _ in r.iter_frames(85, 1000)] == [85, 86, 87, 88, 89]


def test_pyav_iter_frames_independent_of_get_frames(make_video):
    path = make_video(num_frames=90, fps=30, gop=15)
    with VideoReader(path, backend="pyav") as r:
        it = r.iter_frames(0, 90)
        seen = []
        for i, f in it:
            seen.append(decode_index(f))
            if i == 20:
                # Random access in the middle of a sequential pass.
                assert decode_indices(r.get_frames([80, 5])) == [80, 5]
        assert seen == list(range(90))


def test_pyav_seeks_instead_of_decoding_everything(make_video):
    path = make_video(num_frames=300, fps=30, gop=30)
    with VideoReader(path, backend="pyav") as r:
        assert decode_indices(r.get_frames([250])) == [250]
        # From the keyframe at 240: ~11 frames (+ a few for decoder delay), not 251.
        assert r._backend._cursor.frames_decoded <= 30


def test_decord_and_pyav_agree(make_video):
    path = make_video(num_frames=60, fps=30, gop=12, pattern="moving")
    idx = [0, 13, 59, 30]
    with VideoReader(path, backend="auto") as a, VideoReader(path, backend="pyav") as b:
        fa, fb = a.get_frames(idx), b.get_frames(idx)
    assert a.info.num_frames == b.info.num_frames == 60
    # Same bitstream, two FFmpeg builds: identical up to YUV->RGB rounding.
    assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 2


def test_probe_info(make_video):
    path = make_video(num_frames=50, fps=25, width=160, height=96)
    info = probe(path)
    assert isinstance(info, VideoInfo)
    assert info.num_frames == 50 and info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(2.0)
    assert (info.width, info.height, info.rotation) == (160, 96, 0)
    assert info.backend == "decord" and info.codec == "h264"
    assert info.path == path
    info2 = probe(path, backend="pyav")
    assert (info2.num_frames, info2.width, info2.height, info2.backend) == (50, 160, 96, "pyav")


def test_ntsc_frame_rate(make_video):
    path = make_video(num_frames=40, fps=30000 / 1001)
    for backend in ("auto", "pyav"):
        with VideoReader(path, backend=backend) as r:
            assert r.info.fps == pytest.approx(29.97, abs=1e-2)
            assert decode_indices(r.get_frames([39, 0, 20])) == [39, 0, 20]


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_rotated_video_comes_out_upright(make_video, rotation, backend):
    path = make_video(num_frames=30, fps=30, width=160, height=96, rotation=rotation)
    with VideoReader(path, backend=backend) as r:
        assert r.info.rotation == rotation
        assert (r.info.width, r.info.height) == (160, 96)
        frames = r.get_frames([7, 2])
        assert frames.shape == (2, 96, 160, 3)
        assert decode_indices(frames) == [7, 2]
        _assert_rgb_strips(frames[0])
        i, f = next(r.iter_frames(4))
        assert i == 4 and f.shape == (96, 160, 3) and decode_index(f) == 4


def test_empty_and_bad_index_requests(make_video):
    path = make_video(num_frames=30, fps=30)
    with VideoReader(path) as r:
        assert r.get_frames([]).shape == (0, 120, 160, 3)
        with pytest.raises(IndexError, match="out of range"):
            r.get_frames([0, 30])
        with pytest.raises(IndexError):
            r.get_frames([-1])
        with pytest.raises(TypeError):
            r.get_frames([0.5])
    with pytest.raises(ValueError, match="closed"):
        r.get_frames([0])


# ----------------------------------------------------------------------------------
# Backend choice and fallback
# ----------------------------------------------------------------------------------
def test_falls_back_to_pyav_when_decord_cannot_open(make_video, monkeypatch, caplog):
    path = make_video(num_frames=40, fps=20)

    def boom(*a, **k):
        raise RuntimeError("Error reading file...")

    monkeypatch.setattr(decord, "VideoReader", boom)
    with caplog.at_level(logging.INFO, logger="videoapp"):
        with VideoReader(path, verbose=True) as r:
            assert r.backend == "pyav" and r.info.backend == "pyav"
            assert decode_indices(r.get_frames([39, 1])) == [39, 1]
    text = caplog.text
    assert "decord cannot read" in text and "decoding with pyav" in text


def test_falls_back_when_decord_reports_no_frames(make_video, monkeypatch):
    path = make_video(num_frames=40, fps=20)
    monkeypatch.setattr(decord.VideoReader, "__len__", lambda self: 0)
    with VideoReader(path) as r:
        assert r.backend == "pyav"
        assert decode_indices(r.get_frames([12])) == [12]


def test_falls_back_when_decord_raises_on_read(make_video, monkeypatch):
    path = make_video(num_frames=40, fps=20)
    with VideoReader(path) as r:
        assert r.backend == "decord"

        def broken(self, indices):
            raise RuntimeError("DECORDError: av_read_frame failed\nStack trace: ...")

        monkeypatch.setattr(decord.VideoReader, "get_batch", broken)
        assert decode_indices(r.get_frames([30, 2])) == [30, 2]
        assert r.backend == "pyav"
        assert [decode_index(f) for _, f in r.iter_frames(35)] == [35, 36, 37, 38, 39]


def test_falls_back_when_decord_breaks_mid_iteration(make_video, monkeypatch):
    path = make_video(num_frames=40, fps=20)
    real = decord.VideoReader.get_batch
    calls = {"n": 0}

    def flaky(self, indices):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("decode error")
        return real(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", flaky)
    # Sequential passes decode with PyAV; keep this one on decord to break it.
    monkeypatch.setattr(VideoReader, "_sequential_backend", lambda self: None)
    with VideoReader(path) as r:
        got = [(i, decode_index(f)) for i, f in r.iter_frames()]
    assert got == [(i, i) for i in range(40)]
    assert r.backend == "pyav"


def test_without_decord_installed(make_video, monkeypatch):
    path = make_video(num_frames=20, fps=20)
    monkeypatch.setattr(video_mod, "_decord_module", lambda: None)
    with VideoReader(path) as r:
        assert r.backend == "pyav"
        assert decode_indices(r.get_frames([19, 0])) == [19, 0]
    with pytest.raises(VideoError, match="decord cannot read this file"):
        VideoReader(path, backend="decord")


def test_divx_style_avi_avoids_decord_wrong_frames(make_video, caplog):
    # MPEG-4 Part 2 with B-frames in AVI: decord cannot read its timestamps and
    # returns wrong frames after seeks (seen: [0, 30, 48] -> frames 0, 32, 32).
    path = make_video(ext="avi", codec="mpeg4", bframes=2, num_frames=50, fps=25, gop=25)
    with caplog.at_level(logging.INFO, logger="videoapp"):
        with VideoReader(path, verbose=True) as r:
            assert r.backend == "pyav"
            idx = [0, 30, 48, 20, 40, 49]
            assert decode_indices(r.get_frames(idx)) == idx
            assert [decode_index(f) for _, f in r.iter_frames(22, 28)] == list(range(22, 28))
    assert "timestamps" in caplog.text
    with pytest.raises(VideoError, match="decord cannot read this file"):
        VideoReader(path, backend="decord")


def test_decord_bridge_left_native(make_video):
    path = make_video(num_frames=20, fps=20)
    assert decord.bridge._CURRENT_BRIDGE.type == "native"
    with VideoReader(path) as r:
        r.get_frames([1, 5])
        list(r.iter_frames(0, 10))
    probe(path)
    assert decord.bridge._CURRENT_BRIDGE.type == "native"


def test_survives_a_torch_bridge_set_by_someone_else(make_video):
    # pytorchvideo's decord decoder calls decord.bridge.set_bridge("torch").
    path = make_video(num_frames=20, fps=20)
    decord.bridge.set_bridge("torch")
    try:
        with VideoReader(path) as r:
            frames = r.get_frames([3, 1])
            assert isinstance(frames, np.ndarray) and decode_indices(frames) == [3, 1]
        assert decord.bridge._CURRENT_BRIDGE.type == "torch"  # theirs, untouched
    finally:
        decord.bridge.set_bridge("native")


# ----------------------------------------------------------------------------------
# Bad input: always VideoError, one line naming the file and the problem
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good_mp4 = write_test_video(d / "good.mp4", num_frames=100, fps=25)
    good_fs = write_test_video(d / "good_fs.mp4", num_frames=100, fps=25, faststart=True)
    good_avi = write_test_video(d / "good.avi", num_frames=100, fps=25, codec="mpeg4")
    (d / "folder.mp4").mkdir()
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("these are my holiday notes, not a video\n")
    return {
        "missing": (str(d / "missing.mp4"), "no such file"),
        "directory": (str(d / "folder.mp4"), "is a directory"),
        "empty": (str(d / "empty.mp4"), r"empty file \(0 bytes\)"),
        "text": (str(d / "notes.mp4"), r"not a video file \(unrecognised"),
        "truncated_mp4": (truncate_copy(good_mp4, d / "cut.mp4", 0.3), "truncated file"),
        "truncated_faststart_mp4": (truncate_copy(good_fs, d / "cut_fs.mp4", 0.3), "truncated file"),
        "truncated_avi": (truncate_copy(good_avi, d / "cut.avi", 0.3), "truncated or incomplete file"),
        "audio_wav": (write_test_audio(d / "tone.wav"), r"no video stream; audio only"),
        "audio_m4a": (write_test_audio(d / "tone.m4a"), r"no video stream; audio only"),
        "zero_frames": (write_empty_video(d / "noframes.avi"), "video stream has no frames"),
    }


BAD_CASES = ["missing", "directory", "empty", "text", "truncated_mp4", "truncated_faststart_mp4",
             "truncated_avi", "audio_wav", "audio_m4a", "zero_frames"]


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_video_error(bad_files, case, backend):
    path, message = bad_files[case]
    with no_hang(), pytest.raises(VideoError, match=message) as exc:
        VideoReader(path, backend=backend)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(path + ": ")
    assert exc.value.path == path
    with pytest.raises(VideoError, match=message):
        probe(path)


def test_mp4_without_video_track(tmp_path):
    # The MP4 muxer drops a video track that never got a frame: an mp4 with no video.
    import av

    p = str(tmp_path / "novideo.mp4")
    c = av.open(p, "w")
    s = c.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    with pytest.raises(VideoError, match=r"not a video file \(no video stream\)"):
        probe(p)


def test_unreadable_file_permission_denied(make_video, tmp_path, monkeypatch):
    p = tmp_path / "locked.mp4"
    shutil.copy(make_video(num_frames=10, fps=10), p)
    os.chmod(p, 0)
    try:
        if os.geteuid() == 0:
            # root reads anything, so simulate the access check failing for this file.
            real_access = os.access
            monkeypatch.setattr(video_mod.os, "access",
                                lambda path, mode, *a, **k: False if os.fspath(path) == str(p)
                                else real_access(path, mode, *a, **k))
        with pytest.raises(VideoError, match="permission denied") as exc:
            VideoReader(p)
        assert str(exc.value).startswith(str(p) + ": ")
    finally:
        os.chmod(p, 0o644)


def test_truncated_matroska_gives_the_frames_that_exist(make_video, tmp_path):
    # Matroska declares no frame count, so a cut file cannot be told from a short
    # one: we decode what is there (and each frame is the right one).
    src = make_video(ext="mkv", num_frames=100, fps=25)
    cut = truncate_copy(src, tmp_path / "cut.mkv", 0.5)
    for backend in ("auto", "pyav"):
        with VideoReader(cut, backend=backend) as r:
            n = r.info.num_frames
            assert 10 < n < 100
            got = [decode_index(f) for _, f in r.iter_frames()]
            assert got == list(range(len(got))) and len(got) >= n - 2


def test_video_error_is_one_line():
    e = VideoError("clip.mp4", "not a video file\n(no video stream)")
    assert str(e) == "clip.mp4: not a video file (no video stream)"
    assert e.problem == "not a video file (no video stream)"


def test_bad_backend_name(make_video):
    with pytest.raises(ValueError, match="backend"):
        VideoReader(make_video(num_frames=10, fps=10), backend="opencv")


# ----------------------------------------------------------------------------------
# Real clips (../shared/clips)
# ----------------------------------------------------------------------------------
REAL = [
    # name, frames, fps, width, height, codec, backend chosen by "auto"
    ("arm_wrestling_340x256.mp4", 280, 28.0, 340, 256, "h264", "decord"),
    ("pool_handheld_340x256.mp4", 300, 30.0, 340, 256, "h264", "decord"),
    # DivX-style AVI: decord's timestamps are invalid there -> PyAV.
    ("pool_handheld_mpeg4_audio.avi", 164, 25.0, 320, 240, "mpeg4", "pyav"),
]


@pytest.mark.parametrize("name,frames,fps,width,height,codec,backend", REAL)
def test_real_clips(shared_clips, name, frames, fps, width, height, codec, backend):
    path = shared_clips / name
    info = probe(path)
    assert (info.num_frames, info.width, info.height, info.codec, info.backend) == (
        frames, width, height, codec, backend)
    assert info.fps == pytest.approx(fps, rel=1e-3)
    assert info.rotation == 0
    idx = [frames - 1, 0, frames // 2, 7, 7]
    with VideoReader(path) as a, VideoReader(path, backend="pyav") as b:
        fa, fb = a.get_frames(idx), b.get_frames(idx)
        assert fa.shape == (5, height, width, 3)
        assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 2
        assert np.array_equal(fa[3], fa[4])
        assert not np.array_equal(fa[0], fa[1])  # real motion between first and last frame
        # The sequential pass delivers the same pixels as random access.
        seq = {i: f for i, f in a.iter_frames(frames // 2 - 1, frames // 2 + 1)}
        assert np.array_equal(seq[frames // 2], fa[2])


# ----------------------------------------------------------------------------------
# The MP4 fast path (header read from the moov box, no PyAV open) agrees with PyAV
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(rotation=0), dict(rotation=90), dict(rotation=180),
                                dict(rotation=270), dict(faststart=True), dict(audio=True)])
def test_mp4_header_fast_path_matches_pyav(make_video, kw):
    path = make_video(num_frames=20, fps=25, width=160, height=96, **kw)
    problem, moov = video_mod._scan_isobmff(path, os.path.getsize(path))
    assert problem is None and moov is not None
    fast = video_mod._mp4_header(path, moov)
    slow = video_mod._read_header(path)
    slow.fps = None  # the fast path leaves the rate to decord
    assert fast == slow


def test_mp4_header_fast_path_on_real_clips(shared_clips):
    for name in ("arm_wrestling_340x256.mp4", "pool_handheld_340x256.mp4"):
        path = str(shared_clips / name)
        _, moov = video_mod._scan_isobmff(path, os.path.getsize(path))
        fast = video_mod._mp4_header(path, moov)
        slow = video_mod._read_header(path)
        slow.fps = None
        assert fast == slow


def test_explicit_decord_backend_is_not_swapped(make_video, monkeypatch):
    path = make_video(num_frames=20, fps=20)
    with VideoReader(path, backend="decord") as r:
        monkeypatch.setattr(decord.VideoReader, "get_batch",
                            lambda self, idx: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(VideoError, match="decoding failed"):
            r.get_frames([1])
        assert r.backend == "decord"


# ----------------------------------------------------------------------------------
# Damaged and unusual files (the end-to-end corpus is tests/test_bad_inputs.py)
# ----------------------------------------------------------------------------------
def test_decord_ffmpeg_log_is_silenced(tmp_path, capfd):
    # decord's own FFmpeg printed "Invalid NAL unit size" / "Error splitting the input into NAL units"
    # to fd 2 for damaged H.264 before our one-line message.
    from videos import damage_packets_copy

    src = write_test_video(tmp_path / "src.mp4", num_frames=60, fps=30, width=160, height=120, pattern="moving")
    bad = damage_packets_copy(src, tmp_path / "bad.mp4", list(range(31, 40)))
    with VideoReader(bad, backend="decord") as r:
        with contextlib.suppress(VideoError):
            r.get_frames(range(60))
        with contextlib.suppress(VideoError):
            list(r.iter_frames())
    assert decord.logging is not None and capfd.readouterr().err == ""


def test_edit_list_hidden_frames_are_left_out(make_video, tmp_path):
    from videos import remux_from

    cut = remux_from(make_video(num_frames=60, fps=30, gop=15), tmp_path / "cut.mp4", skip=4)
    with VideoReader(cut) as r:
        assert r.backend == "pyav" and r.info.num_frames == 56
        assert decode_indices(r.get_frames([0, 1, 55])) == [4, 5, 59]
        assert [decode_index(f) for _, f in r.iter_frames(0, 3)] == [4, 5, 6]
    with pytest.raises(VideoError, match="decord cannot read this file.*edit list"):
        VideoReader(cut, backend="decord")
