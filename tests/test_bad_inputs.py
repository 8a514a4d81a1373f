"""Damaged and unusual video files, end to end: the CLI and the web UI's upload path.

Every case is generated here. Each ends in a result with sane values, or in
exit status 2 with one clear line naming the file: never a traceback, never a
hang (cases that could block run in a subprocess with a timeout, the others
under an alarm), never FFmpeg's own log on stderr.

Damaged files are decoded the way FFmpeg's players get through them: frames
that decode are used, an unreadable one is replaced by the last readable frame
before it, and one warning line says how many were unreadable. The expected
counts come from an independent PyAV pass over the same file.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import av
import numpy as np
import pytest
import torch

from videoapp.cli import main
from videoapp.data.video import VideoError, VideoReader
from videoapp.models import create_model
from videoapp.weights import save_weights
from videos import (damage_packets_copy, decode_indices, no_hang, overwrite_copy, packet_spans, remux_from,
                    truncate_copy, write_gif, write_image, write_test_video)

TINY = "mvitv2_xxs_8x64"
LABELS = ["pan_left", "pan_right", "zoom_in"]
VFR_MS = [0]
for _i in range(59):
    VFR_MS.append(VFR_MS[-1] + (100 if _i % 3 == 0 else 33))  # 33 ms and 100 ms frames mixed


@dataclass
class Case:
    """One corpus entry: ``refused`` is the phrase of the one error line, else a result is expected."""

    path: str
    refused: Optional[str] = None
    duration_s: Optional[float] = None  # expected whole-video duration (s)
    frames: Optional[int] = None  # frames the reader serves
    first_pattern: int = 0  # test-pattern index shown by frame 0 (an edit list hides some)
    size: Optional[tuple[int, int]] = None  # (width, height)
    argv: list[str] = field(default_factory=list)  # extra CLI options
    windows: Optional[int] = None


def readable_frames(path: str) -> list[int]:
    """Frame indices (display order) that FFmpeg decodes in one sequential pass: the independent reference."""
    with av.open(path) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.size and not p.is_discard)
    index_of = {p: i for i, p in enumerate(pts)}
    got = set()
    with av.open(path) as c:
        s = c.streams.video[0]
        for packet in c.demux(s):
            try:
                got.update(index_of[f.pts] for f in packet.decode() if f.pts in index_of)
            except av.error.FFmpegError:
                pass
    return sorted(got)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=len(LABELS))
    d = tmp_path_factory.mktemp("w")
    save_weights(d / "default.safetensors", model.state_dict(),
                 {"model": TINY, "labels": LABELS, "num_frames": 8, "sampling_rate": 2, "crop_size": 64})
    return d / "default.safetensors"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    d = tmp_path_factory.mktemp("corpus")
    # 90 frames, keyframes at 0, 30, 60; a texture so the file is big enough to damage in its middle.
    base = write_test_video(d / "base.mp4", num_frames=90, fps=30, width=320, height=240, pattern="moving")
    spans = packet_spans(base)

    def small(name: str, n: int = 30, **kw) -> str:
        return write_test_video(d / name, num_frames=n, fps=30, width=96, height=72, **kw)

    cases = {
        # Damaged data, decoded around.
        "garbage_middle": Case(overwrite_copy(base, d / "garbage.mp4", spans[45][0] + 8, 4096),
                               duration_s=3.0, frames=90, size=(320, 240), argv=["--window-s", "1"]),
        "damaged_first_keyframe": Case(damage_packets_copy(base, d / "badkey.mp4", [0]), duration_s=3.0,
                                       frames=90, size=(320, 240), argv=["--window-s", "1"]),
        "mostly_damaged": Case(damage_packets_copy(base, d / "ruined.mp4", [0, 30]),
                               refused="too damaged: only 30 of 90 frames could be decoded"),
        # Not videos at all.
        "png_renamed": Case(write_image(d / "photo.mp4", "PNG"), refused="a still image (PNG), not a video"),
        "jpeg_renamed": Case(write_image(d / "photo2.mp4", "JPEG"), refused="a still image (JPEG), not a video"),
        "zip_renamed": Case(str(d / "archive.mp4"), refused="not a video file (unrecognised or corrupt data)"),
        "symlink_loop": Case(str(d / "loop.mp4"), refused="Too many levels of symbolic links"),
        # Unusual but valid.
        "animated_gif": Case(write_gif(d / "anim.gif", num_frames=20, fps=10), duration_s=2.0, frames=20,
                             size=(96, 72)),
        "one_frame": Case(small("one.mp4", 1), duration_s=round(1 / 30, 3), frames=1, size=(96, 72)),
        "two_frames": Case(small("two.mp4", 2), duration_s=round(2 / 30, 3), frames=2, size=(96, 72)),
        "variable_frame_rate": Case(write_test_video(d / "vfr.mp4", num_frames=60, width=96, height=72, pts_ms=VFR_MS),
                                    duration_s=(VFR_MS[-1] + 33) / 1000, frames=60, size=(96, 72)),
        "10bit": Case(small("10bit.mp4", pix_fmt="yuv420p10le"), duration_s=1.0,
                      frames=30, size=(96, 72)),
        "yuv444": Case(small("444.mp4", pix_fmt="yuv444p"), duration_s=1.0,
                       frames=30, size=(96, 72)),
        "odd_size_321x239": Case(write_test_video(d / "odd.avi", num_frames=30, width=321, height=239, codec="mpeg4"), duration_s=1.0,
                                 frames=30, size=(321, 239)),
        "tiny_16x16": Case(write_test_video(d / "tiny.mp4", num_frames=30, width=16, height=16), duration_s=1.0, frames=30,
                           size=(16, 16)),
        "4k": Case(write_test_video(d / "uhd.mp4", num_frames=3, width=3840, height=2160, preset="ultrafast"),
                   duration_s=0.1, frames=3, size=(3840, 2160)),
        # An hour at 1 fps: 3600 frames of 64x64 (about 1 s to encode); 60 s windows 19 min apart (the
        # last one aligned to the end: 5).
        "hour_64x64": Case(write_test_video(d / "hour.mp4", num_frames=3600, fps=1, width=64, height=64, gop=10),
                           duration_s=3600.0, frames=3600, size=(64, 64),
                           argv=["--window-s", "60", "--stride-s", "1140"], windows=5),
        "edit_list_negative_ts": Case(remux_from(base, d / "cut.mp4", skip=5), duration_s=round(85 / 30, 3), frames=85,
                                      first_pattern=5, size=(320, 240)),
        "mov": Case(write_test_video(d / "clip.mov", num_frames=40, fps=30, width=96, height=72),
                    duration_s=round(40 / 30, 3), frames=40, size=(96, 72)),
        "name_with_spaces": Case(small("my holiday clip (2).mp4", 31), duration_s=round(31 / 30, 3), frames=31,
                                 size=(96, 72)),
        "name_non_ascii": Case(small("clipé 日本語 ✓.mp4", 32), duration_s=round(32 / 30, 3), frames=32,
                               size=(96, 72)),
        "name_non_utf8": Case(small(os.fsdecode(b"clip\xff\xfe latin-1 \xe9.mp4"), 33),
                              duration_s=round(33 / 30, 3), frames=33, size=(96, 72)),
    }
    with zipfile.ZipFile(cases["zip_renamed"].path, "w") as z:
        z.write(small("zipped.mp4"), "zipped.mp4")
    os.symlink(d / "loop2.mp4", d / "loop.mp4")
    os.symlink(d / "loop.mp4", d / "loop2.mp4")
    return cases


IN_PROCESS = ["mostly_damaged", "png_renamed", "jpeg_renamed", "zip_renamed", "symlink_loop", "animated_gif",
              "one_frame", "two_frames", "variable_frame_rate", "10bit", "yuv444", "odd_size_321x239",
              "tiny_16x16", "4k", "hour_64x64", "edit_list_negative_ts", "mov", "name_with_spaces",
              "name_non_ascii", "name_non_utf8"]


def check_result(result: dict, case: Case) -> None:
    assert result["video"] == case.path and result["model"] == TINY
    assert result["duration_s"] == pytest.approx(case.duration_s, abs=0.002)
    labels = [e["label"] for e in result["top_k"]]
    scores = [e["score"] for e in result["top_k"]]
    assert sorted(labels) == sorted(LABELS) and scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-4) and all(np.isfinite(scores))
    if case.windows is not None:
        assert len(result["windows"]) == case.windows


def check_frames(case: Case) -> None:
    """The reader serves the right frames, upright and at the right size (an independent look at the pixels)."""
    with VideoReader(case.path) as r:
        assert r.info.num_frames == case.frames and (r.info.width, r.info.height) == case.size
        last = case.frames - 1
        frames = r.get_frames([0, last // 2, last])
        assert frames.shape == (3, case.size[1], case.size[0], 3)
        if min(case.size) >= 64:  # the bit code needs a few pixels per cell
            want = [case.first_pattern + i for i in (0, last // 2, last)]
            assert decode_indices(frames) == want


@pytest.mark.parametrize("name", IN_PROCESS)
def test_cli_in_process(name, corpus, tiny_weights, capfd, caplog):
    case = corpus[name]
    with no_hang(120):
        code = main(["predict", case.path, "--weights", str(tiny_weights), "--format", "json", "--top-k", "3",
                     "--clips", "2", *case.argv])
    out, err = capfd.readouterr()  # fd level: what the C libraries print too
    assert "Traceback" not in err
    if case.refused:
        assert code == 2 and out.strip() in ("", "[]")
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("videoapp: error: ") and os.path.basename(case.path) in lines[0]
        assert case.refused in lines[0]
        return
    assert code == 0 and err == "", err
    assert not [r for r in caplog.records if r.name == "videoapp" and r.levelno >= 30]  # nothing to warn about
    check_result(json.loads(out), case)
    check_frames(case)


def run_cli(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "videoapp", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def blocking(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("blocking")
    fifo = d / "pipe.mp4"
    os.mkfifo(fifo)
    return {"fifo": str(fifo), "dev_zero": "/dev/zero"}


def test_cli_damaged_and_blocking_in_a_real_process(corpus, blocking, tiny_weights):
    """Damaged clips give a result and one warning line each (the count checked against PyAV); a FIFO and
    /dev/zero give one error line each instead of blocking; FFmpeg's own log never reaches stderr."""
    damaged = [corpus["garbage_middle"].path, corpus["damaged_first_keyframe"].path]
    proc = run_cli("predict", *damaged, blocking["fifo"], blocking["dev_zero"], "--weights", str(tiny_weights),
                   "--format", "json", "--top-k", "3", "--window-s", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4, proc.stderr  # one per clip, nothing from libav / decord
    for path in damaged:
        good = len(readable_frames(path))
        assert 0 < 90 - good < 45
        mine = [ln for ln in lines if path in ln]
        assert mine == [f"videoapp: warning: {path}: {90 - good} of 90 frames unreadable, skipped "
                        "(the last readable frame stands in for each)"], proc.stderr
    for path in blocking.values():
        mine = [ln for ln in lines if path in ln]
        assert mine == [f"videoapp: error: {path}: not a regular file"], proc.stderr
    results = json.loads(proc.stdout)
    assert [r["video"] for r in results] == damaged
    for r in results:
        check_result(r, Case(r["video"], duration_s=3.0, windows=3))


def test_cli_verbose_prints_no_ffmpeg_log(corpus, tiny_weights, capfd, caplog):
    """With -v too, stderr holds only our lines: capfd sees what the C libraries write to fd 2."""
    damaged = [corpus["garbage_middle"].path, corpus["damaged_first_keyframe"].path]
    with no_hang(120):
        code = main(["predict", *damaged, "--weights", str(tiny_weights), "--format", "json", "-v",
                     "--window-s", "1", "--clips", "1"])
    out, err = capfd.readouterr()
    assert code == 0 and err.strip(), err
    assert all(line.startswith("videoapp: ") for line in err.strip().splitlines()), err
    assert len(json.loads(out)) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "videoapp" and r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("frames unreadable, skipped" in w for w in warnings)


@pytest.mark.parametrize("name", ["garbage_middle", "damaged_first_keyframe"])
def test_damaged_frames_are_the_last_readable_ones(name, corpus, caplog):
    """Frame by frame: every served frame is what FFmpeg decodes for the last readable index at or before it
    (or the first readable one, before any), in random access and in the sequential pass, whatever backend."""
    path = corpus[name].path
    good = readable_frames(path)
    reference = {}
    with av.open(path) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.size)
    with av.open(path) as c:
        s = c.streams.video[0]
        for packet in c.demux(s):
            with contextlib.suppress(av.error.FFmpegError):
                for f in packet.decode():
                    reference[pts.index(f.pts)] = f.to_ndarray(format="rgb24")
    assert sorted(reference) == good

    def stand_in(i: int) -> int:
        before = [g for g in good if g <= i]
        return before[-1] if before else good[0]

    wanted = [89, 0, 44, 45, 46, 50, 51, 29, 30, 2]
    for backend in ("auto", "pyav"):
        with VideoReader(path, backend=backend) as r:
            got = r.get_frames(wanted)
            assert r.unreadable == 90 - len(good)
            for i, frame in zip(wanted, got):
                assert np.array_equal(frame, reference[stand_in(i)]), (backend, i)
        with VideoReader(path, backend=backend) as r:
            seq = list(r.iter_frames())
            assert [i for i, _ in seq] == list(range(90))
            for i, frame in seq:
                assert np.array_equal(frame, reference[stand_in(i)]), (backend, i)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all(f"{90 - len(good)} of 90 frames unreadable" in w for w in warnings)


def test_min_readable_is_the_refusal_threshold(corpus):
    path = corpus["damaged_first_keyframe"].path  # 60 of 90 frames readable
    with VideoReader(path, min_readable=0.7) as r, pytest.raises(VideoError, match="too damaged: only 60 of 90"):
        r.get_frames([0])
    with VideoReader(path, min_readable=0.6) as r:
        assert r.get_frames([0]).shape == (1, 240, 320, 3) and r.unreadable == 30


def test_file_growing_while_read(tmp_path, tiny_weights, capfd):
    """A Matroska file still being written: the frames present at open give a result; the writer never
    makes the reader hang or fail."""
    full = write_test_video(tmp_path / "full.mkv", num_frames=150, fps=30, width=96, height=72)
    data = Path(full).read_bytes()
    half = len(data) // 2
    growing = tmp_path / "growing.mkv"
    growing.write_bytes(data[:half])
    with VideoReader(truncate_copy(full, tmp_path / "half.mkv", 0.5)) as r:
        at_least = r.info.num_frames
    assert 10 < at_least < 150

    def writer() -> None:
        with open(growing, "ab") as f:
            for k in range(half, len(data), 2048):
                f.write(data[k:k + 2048])
                f.flush()
                time.sleep(0.02)

    t = threading.Thread(target=writer)
    t.start()
    try:
        with no_hang(120):
            code = main(["predict", str(growing), "--weights", str(tiny_weights), "--format", "json",
                         "--top-k", "3", "--clips", "1"])
    finally:
        t.join()
    out, err = capfd.readouterr()  # fd level: what the C libraries print too
    assert code == 0 and err == "", err
    result = json.loads(out)
    assert at_least / 30 - 0.1 <= result["duration_s"] <= 5.0
    assert sorted(e["label"] for e in result["top_k"]) == sorted(LABELS)


# ---------------------------------------------------------------------- the web UI's upload path
UI_CASES = [n for n in IN_PROCESS + ["garbage_middle", "damaged_first_keyframe"]
            if n not in ("symlink_loop",)]  # a browser uploads bytes: links, pipes and devices never arrive


@pytest.fixture(scope="module")
def ui_app(tmp_path_factory, tiny_weights):
    from videoapp.ui.app import make_app

    d = tmp_path_factory.mktemp("ui")
    app = make_app(d / "data", weights_dir=tiny_weights.parent)
    app._upload_root = str(d / "uploads")  # what Gradio's upload folder is in the server
    yield app
    app.close()


@pytest.mark.parametrize("name", UI_CASES)
def test_ui_upload(name, corpus, ui_app):
    """Each file uploaded to the Predict page is refused with a message and leaves nothing stored, or is
    stored once and predicted."""
    case = corpus[name]
    upload_dir = Path(ui_app._upload_root) / uuid.uuid4().hex
    upload_dir.mkdir(parents=True)
    shown_name = Path(case.path).name.encode("utf-8", "replace").decode("utf-8")  # browsers send UTF-8 names
    upload = upload_dir / shown_name
    shutil.copy(case.path, upload)
    before = {c.sha256 for c in ui_app.store.clips()}
    window = {"window_s": 600, "stride_s": 600} if name == "hour_64x64" else {}
    with no_hang(120):
        results, status, json_path = ui_app.predict([str(upload)], None, "shipped:default.safetensors",
                                                    top_k=3, **window)
    assert "Traceback" not in status and not upload.exists()
    after = ui_app.store.clips()
    if case.refused:
        assert results == [] and json_path is None
        assert "Refused" in status and case.refused in status.replace("\\", "")
        assert {c.sha256 for c in after} == before
        assert list(ui_app.store.tmp_dir.iterdir()) == []
        return
    (r,) = results
    (new,) = [c for c in after if c.sha256 not in before]
    assert r.sha256 == new.sha256 and new.original_name == shown_name
    assert r.top1 in LABELS and sorted(r.top_k) == sorted(LABELS)
    assert r.payload["duration_s"] == pytest.approx(case.duration_s, abs=0.002)
    assert "Failed" not in status and "Refused" not in status
