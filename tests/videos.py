"""Synthetic test videos whose frames say which frame they are.

Import from tests as ``from videos import write_test_video, decode_index``
(``tests/conftest.py`` puts this folder on ``sys.path``).

Frame layout (``pattern="bits"``, the default), for a W x H frame:

- top 2/3: the frame index as a binary code in a grid of ``2 x ceil(nbits/2)``
  cells, each cell white (bit 1) or black (bit 0). Big flat cells survive lossy
  compression, so :func:`decode_index` reads the index back exactly.
- bottom 1/3: three constant colour strips, pure red | green | blue, left to
  right, so a test can check that a decoder returns RGB and not BGR.

``pattern="moving"`` keeps the index code but fills the bottom third with a
scrolling smooth texture, which costs a real encoder/decoder about what camera
footage does (flat frames decode unrealistically fast); use it for benchmarks.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np

#: Bits of frame index encoded in every frame (up to 4096 frames).
NUM_BITS = 12
_COLS = math.ceil(NUM_BITS / 2)


def _code_region(height: int) -> int:
    # Height of the bit grid; the colour strips take the rest.
    return (2 * height) // 3


def render_frame(index: int, width: int, height: int, pattern: str = "bits",
                 texture: Optional[np.ndarray] = None) -> np.ndarray:
    """Return frame ``index`` of the test pattern as uint8 RGB ``[H, W, 3]``."""
    if index >= 2 ** NUM_BITS:
        raise ValueError(f"test videos encode at most {2 ** NUM_BITS} frames")
    frame = np.zeros((height, width, 3), np.uint8)
    code_h = _code_region(height)
    for bit in range(NUM_BITS):
        row, col = divmod(bit, _COLS)
        y0, y1 = row * code_h // 2, (row + 1) * code_h // 2
        x0, x1 = col * width // _COLS, (col + 1) * width // _COLS
        frame[y0:y1, x0:x1] = 255 if (index >> bit) & 1 else 0
    bottom = frame[code_h:]
    if pattern == "bits":
        for k in range(3):
            bottom[:, k * width // 3:(k + 1) * width // 3, k] = 255
    elif pattern == "moving":
        assert texture is not None
        shift = (index * 7) % texture.shape[1]
        strip = np.roll(texture, -shift, axis=1)[: bottom.shape[0], :width]
        bottom[:] = strip
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return frame


def decode_index(frame: np.ndarray) -> int:
    """Read the frame index back from an (upright, RGB or BGR) decoded frame ``[H, W, 3]``."""
    height, width = frame.shape[:2]
    code_h = _code_region(height)
    grey = frame.astype(np.float32).mean(axis=2)
    index = 0
    for bit in range(NUM_BITS):
        row, col = divmod(bit, _COLS)
        y0, y1 = row * code_h // 2, (row + 1) * code_h // 2
        x0, x1 = col * width // _COLS, (col + 1) * width // _COLS
        # Sample the cell's inner half: its borders are blurred by chroma subsampling.
        cy0, cy1 = y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4
        cx0, cx1 = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
        if grey[cy0:cy1, cx0:cx1].mean() > 127:
            index |= 1 << bit
    return index


def decode_indices(frames: np.ndarray) -> list[int]:
    """:func:`decode_index` for every frame of a ``[T, H, W, 3]`` batch."""
    return [decode_index(f) for f in frames]


def _texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    # Smooth random texture (box-blurred noise), twice as wide so it can scroll.
    rng = np.random.default_rng(seed)
    noise = rng.random((height // 4 + 2, (2 * width) // 4 + 2, 3)).astype(np.float32)
    big = np.kron(noise, np.ones((4, 4, 1), np.float32))[:height, : 2 * width]
    return (big * 255).astype(np.uint8)


def write_test_video(path: str | os.PathLike, num_frames: int = 60, fps: float = 30,
                     width: int = 160, height: int = 120, codec: str = "h264",
                     audio: bool = False, pattern: str = "bits", gop: Optional[int] = None,
                     rotation: int = 0, faststart: bool = False, bframes: int = 0,
                     pix_fmt: Optional[str] = None, pts_ms: Optional[list[int]] = None,
                     preset: str = "veryfast") -> str:
    """Encode a synthetic video with PyAV and return its path.

    ``codec``: "h264" (libx264, B-frames on, as camera/web files have), "mpeg4"
    (MPEG-4 Part 2) or "mjpeg". ``gop``: keyframe interval in frames (default
    one keyframe per second, so seeking matters). ``rotation``: display
    rotation in degrees *clockwise* (90 = a phone held upright: FFmpeg's legacy
    ``rotate`` tag convention, :attr:`VideoInfo.rotation`), written as a display
    matrix; the stored frames are the pattern turned the other way, so a reader
    that honours the metadata shows it upright at ``width x height``.
    ``faststart``: put the mp4 index first (a truncated copy then still opens).
    ``bframes``: B-frames for the mpeg4/AVI encoder (h264 always has them); in
    AVI that gives the DivX-style file whose timestamps confuse decord.
    ``audio``: add a 440 Hz AAC (mp4/mkv) or PCM (avi) track as long as the video.
    ``pix_fmt``: the encoded pixel format, e.g. "yuv420p10le" (10-bit) or
    "yuv444p" (4:4:4); default yuv420p. ``pts_ms``: presentation time of each
    frame in milliseconds (variable frame rate; time base 1/1000 s).
    ``preset``: the x264 preset ("ultrafast" for big frames).
    """
    path = str(path)
    rate = Fraction(fps).limit_denominator(1001)
    ext = os.path.splitext(path)[1].lower()
    options = {"movflags": "+faststart"} if faststart and ext in (".mp4", ".m4v", ".mov") else {}
    container = av.open(path, "w", options=options)
    encoder = {"h264": "libx264", "mpeg4": "mpeg4", "mjpeg": "mjpeg"}[codec]
    stream = container.add_stream(encoder, rate=rate)
    rot = rotation % 360
    stored_w, stored_h = (height, width) if rot in (90, 270) else (width, height)
    stream.width, stream.height = stored_w, stored_h
    stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
    stream.codec_context.gop_size = gop if gop is not None else max(1, int(round(fps)))
    if codec == "h264":
        # veryfast keeps B-frames (ultrafast would not): decode order != display order.
        stream.options = {"preset": preset, "crf": "23"}
    else:
        stream.codec_context.bit_rate = 2_000_000
        if bframes:
            stream.codec_context.max_b_frames = bframes
    if rot:
        # PyAV takes the display-matrix angle counter-clockwise.
        stream.set_display_rotation((360 - rot) % 360)

    astream = None
    if audio:
        if ext == ".avi":
            astream = container.add_stream("pcm_s16le", rate=16000)
        else:
            astream = container.add_stream("aac", rate=16000)
        astream.layout = "mono"

    time_base = Fraction(1, 1000) if pts_ms is not None else 1 / rate
    if pts_ms is not None:
        stream.time_base = stream.codec_context.time_base = time_base
    texture = _texture(width, height) if pattern == "moving" else None
    for i in range(num_frames):
        img = render_frame(i, width, height, pattern, texture)
        if rot:
            # Shown turned clockwise by `rot`: store it turned counter-clockwise (np.rot90 k>0).
            img = np.ascontiguousarray(np.rot90(img, k=rot // 90))
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = pts_ms[i] if pts_ms is not None else i
        frame.time_base = time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)

    if astream is not None:
        _write_tone(container, astream, num_frames / float(rate))
    container.close()
    return path


def _write_tone(container, astream, seconds: float) -> None:
    sr = astream.rate
    frame_size = astream.codec_context.frame_size or 1024
    total = int(seconds * sr)
    t = np.arange(total) / sr
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    fmt = "s16" if astream.codec_context.name == "pcm_s16le" else "fltp"
    for start in range(0, total, frame_size):
        chunk = pcm[start:start + frame_size]
        if fmt == "fltp":
            data = (chunk.astype(np.float32) / 32767)[None, :]
        else:
            data = chunk[None, :]
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        for packet in astream.encode(frame):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


def write_test_audio(path: str | os.PathLike, seconds: float = 1.0) -> str:
    """Write an audio-only file (no video stream): WAV for ``.wav``, else AAC (``.m4a``/``.mp4``)."""
    path = str(path)
    container = av.open(path, "w")
    if path.lower().endswith(".wav"):
        astream = container.add_stream("pcm_s16le", rate=16000)
    else:
        astream = container.add_stream("aac", rate=16000)
    astream.layout = "mono"
    _write_tone(container, astream, seconds)
    container.close()
    return path


def write_empty_video(path: str | os.PathLike, width: int = 160, height: int = 120) -> str:
    """Write a container that declares a video stream but holds no frames.

    Use an ``.avi`` path: the AVI muxer keeps a stream without packets (the
    MP4 muxer drops empty tracks, and Matroska writes no usable header).
    """
    path = str(path)
    container = av.open(path, "w")
    stream = container.add_stream("mpeg4", rate=30)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    container.start_encoding()  # header only
    # Flushing an encoder that never got a frame produces no packets.
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def truncate_copy(src: str | os.PathLike, dst: str | os.PathLike, fraction: float) -> str:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a download cut short)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return str(dst)


# ----------------------------------------------------------------------------------
# Damaged and unusual files (tests/test_bad_inputs.py)
# ----------------------------------------------------------------------------------
def packet_spans(path: str | os.PathLike) -> list[tuple[int, int, bool]]:
    """``(byte offset, size, is_keyframe)`` of every video packet, in file (decode) order."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(int(p.pos), int(p.size), bool(p.is_keyframe)) for p in c.demux(s)
                if p.size and p.pos is not None and p.pos >= 0]


def overwrite_copy(src: str | os.PathLike, dst: str | os.PathLike, offset: int, nbytes: int,
                   seed: int = 0) -> str:
    """Copy ``src`` to ``dst`` with ``nbytes`` random bytes written over it from ``offset`` on."""
    data = bytearray(open(src, "rb").read())
    junk = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    data[offset:offset + nbytes] = junk[: max(0, len(data) - offset)]
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return str(dst)


def damage_packets_copy(src: str | os.PathLike, dst: str | os.PathLike, packets: list[int],
                        seed: int = 0) -> str:
    """Copy ``src`` with the payload of the given video packets (decode order) replaced by random bytes.

    The first 4 bytes of each packet (an H.264 NAL length in MP4) are kept, so
    the demuxer still walks the file and only the decoder sees the damage.
    """
    spans = packet_spans(src)
    shutil.copy(src, dst)
    rng = np.random.default_rng(seed)
    with open(dst, "r+b") as f:
        for k in packets:
            pos, size, _ = spans[k]
            f.seek(pos + 4)
            f.write(rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes())
    return str(dst)


def write_image(path: str | os.PathLike, fmt: str, width: int = 160, height: int = 120) -> str:
    """One test-pattern frame saved as a still image (``fmt``: "PNG", "JPEG"), whatever ``path``'s extension."""
    from PIL import Image

    Image.fromarray(render_frame(5, width, height)).save(str(path), format=fmt)
    return str(path)


def write_gif(path: str | os.PathLike, num_frames: int = 20, fps: float = 10, width: int = 96,
              height: int = 72) -> str:
    """An animated GIF of the test pattern (frame ``i`` shows ``i``)."""
    from PIL import Image

    frames = [Image.fromarray(render_frame(i, width, height)) for i in range(num_frames)]
    frames[0].save(str(path), format="GIF", save_all=True, append_images=frames[1:],
                   duration=int(round(1000 / fps)), loop=0)
    return str(path)


def remux_from(src: str | os.PathLike, dst: str | os.PathLike, skip: int) -> str:
    """Remux ``src`` starting ``skip`` frames before time 0 (an edit list with negative timestamps).

    Every packet is kept and its timestamps shifted back by ``skip`` frame
    durations, so the first frames sit at negative times: the MP4 muxer writes
    an edit list that starts playback at 0, as cutting with ``ffmpeg -ss ...
    -c copy`` does. Players (and we) show the frames from time 0 on.
    """
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"use_editlist": "1"}) as out:
        istream = inp.streams.video[0]
        ostream = out.add_stream_from_template(istream)
        step = int(round(1 / (float(istream.average_rate) * float(istream.time_base))))
        for packet in inp.demux(istream):
            if packet.dts is None:
                continue
            packet.pts -= skip * step
            packet.dts -= skip * step
            packet.stream = ostream
            out.mux(packet)
    return str(dst)


@contextlib.contextmanager
def no_hang(seconds: int = 20) -> Iterator[None]:
    """Turn a hang into a test failure (SIGALRM; main thread, Unix)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
