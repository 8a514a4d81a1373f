"""Open, inspect and decode videos: decord first, PyAV as the fallback.

Everything here speaks *frame indices*: frame ``i`` is the ``i``-th frame in
display order, the same numbering decord uses. Frames come back as uint8 RGB
arrays ``[H, W, 3]`` (batches ``[T, H, W, 3]``), upright: a clip recorded by a
phone held sideways (display-matrix / ``rotate`` metadata) is turned the way a
player would show it.

Backends
--------
``decord`` (fast random access, C++ index of every packet) is tried first. We
fall back to ``PyAV`` when decord is not installed, cannot open the file,
reports no frames, raises while reading, or reports invalid frame timestamps:
decord seeks by timestamp, and for files whose timestamps it cannot read
(MPEG-4 Part 2 with B-frames in AVI, the "DivX" layout) it silently returns the
wrong frames after a seek (``get_batch([0, 30, 48])`` gave frames 0, 32, 32).

decord's global "bridge" is never touched: we call ``.asnumpy()`` on its native
NDArray, and still cope if someone else (pytorchvideo's decord decoder does)
switched it to torch. decord applies the display rotation itself (its FFmpeg
reads the display matrix); for PyAV we turn frames with ``np.rot90``.

Opening costs: for MP4/MOV the decord path reads codec, size, frame count and
rotation straight from the ``moov`` box (a few small reads) instead of opening
the file a second time with PyAV (~10 ms, as much as decoding a few frames).
Other containers, and the PyAV backend, read the header through PyAV and
decode the first frame (that is where PyAV exposes the rotation). The PyAV
backend demuxes the file once at open (no decoding) to index every frame's
timestamp and the keyframes, as decord does; random access then seeks to the
keyframe before each needed run and decodes forward.

Truncated files: an MP4 whose ``mdat``/``moov`` box runs past the end of the
file, or a container that declares more frames than it holds (AVI), raises
:class:`VideoError`. Matroska/WebM declare no frame count, so a cut one looks
like a shorter video and its remaining frames are served.

Damaged files are decoded as far as they go, the way FFmpeg's players get
through them: when frames asked for do not come out of PyAV's decoder (decord
trouble first falls back to PyAV), the reader makes one sequential pass over
the whole file to learn which frames decode, logs ONE warning on the
"videoapp" logger ("<path>: 12 of 90 frames unreadable, skipped ..."), and from
then on serves every request from a sequential pass from the start (slower,
never wrong: a decoder restarted at a damaged keyframe can lose frames a
sequential pass still gets). An unreadable frame is replaced by the last
readable frame before it (what a player shows: it holds the last good
picture); frames before the first readable one get that first one. Frames a
damaged reference smears are served as decoded (players show them too). When
fewer than ``min_readable`` (default half) of the frames decode, the file is
refused: "too damaged: only 20 of 90 frames could be decoded".

Sequential passes (:meth:`VideoReader.iter_frames`, the timeline) decode with
PyAV even where decord does the random access: decord's FFmpeg threads,
interleaved with a model's forward passes, left a 90 s timeline 400-1000 MB
larger (fragmented malloc arenas) and took twice as long; PyAV's pass stays
within tens of MB. Both convert to RGB the same way, so the frames are
identical; PyAV is only used when it counts the same frames as decord.

Unusual files: a still image renamed .mp4 (FFmpeg's image demuxers) is
refused as "a still image (PNG), not a video"; an animated GIF is a video. An
MP4 whose edit list hides lead-in frames (negative timestamps, as ``ffmpeg -ss
-c copy`` writes) is served without them, as players show it, by PyAV (decord
would count and return them wrongly). decord's own FFmpeg log (it links its
own libavutil, separate from PyAV's) is silenced; PyAV's is off by default.

Bad input never escapes as a traceback: every problem with the *file* raises
:class:`VideoError`, whose ``str()`` is one line ``"<path>: <problem>"``.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

logger = logging.getLogger("videoapp")

__all__ = ["VIDEO_EXTENSIONS", "VideoError", "VideoInfo", "VideoReader", "probe"]

# File extensions taken for videos (lower-case): folder datasets list these, the store keeps them.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")

# Frames of at most this many bytes are fetched per decord call when iterating,
# so a sequential pass never holds more than a few dozen MB of decoded frames.
_ITER_CHUNK_BYTES = 4 * 1024 * 1024
_ITER_CHUNK_MAX = 4
# Give up looking for a first decodable frame after this many packets.
_MAX_PACKETS_BEFORE_FIRST_FRAME = 300
# A damaged file is still served when at least this fraction of its frames decodes.
MIN_READABLE_FRACTION = 0.5


class VideoError(Exception):
    """A video file cannot be opened or decoded.

    ``str(err)`` is a single line ``"<path>: <problem>"`` that the CLI prints
    as-is; ``err.path`` and ``err.problem`` hold the two parts.
    """

    def __init__(self, path: Any, problem: str) -> None:
        self.path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
        # One line, whatever the underlying library put in its message.
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


class _Undecodable(VideoError):
    """Frames asked for did not come out of the decoder (damaged data): the reader turns tolerant."""


@dataclass
class VideoInfo:
    """What :func:`probe` learns about a video.

    ``num_frames``: frames the decoder will deliver (indices ``0..num_frames-1``).
    ``fps``: average frame rate (frames per second). ``duration_s``:
    ``num_frames / fps`` in seconds (the span the frames cover; container
    durations can include audio). ``width``/``height``: pixels of the frames
    as returned, i.e. upright, after rotation. ``rotation``: clockwise degrees
    (0/90/180/270) the stored frames are turned to display them, the
    convention of FFmpeg's legacy ``rotate`` tag (an iPhone portrait clip reads
    90). ``backend``: "decord" or "pyav". ``codec``: FFmpeg decoder name
    ("h264", "mpeg4", ...).
    """

    path: str
    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    rotation: int
    backend: str
    codec: str


# ----------------------------------------------------------------------------------
# File checks (before any decoder sees the file: clearer messages, no C++ log noise)
# ----------------------------------------------------------------------------------
def _check_path(path: str) -> int:
    """Return the file size or raise VideoError for a path that cannot be a video."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "no such file") from None
    except PermissionError:
        raise VideoError(path, "permission denied") from None
    except OSError as e:
        raise VideoError(path, f"cannot access file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block the demuxer forever.
        raise VideoError(path, "not a regular file")
    # Explicit check: decoders report a missing read permission as "invalid data".
    if not os.access(path, os.R_OK):
        raise VideoError(path, "permission denied (file is not readable)")
    if st.st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    return st.st_size


@dataclass
class _Header:
    """What PyAV reads from the container header (plus the first frame's rotation)."""

    codec: str
    header_frames: int  # frame count the container declares (0: unknown)
    fps: Optional[float]
    stored_width: int
    stored_height: int
    rotation: int  # clockwise degrees


def _scan_isobmff(path: str, size: int) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """Walk the top-level boxes of an MP4/MOV file.

    Returns ``(problem, moov)``: a description of a truncation (or None), and
    the ``(offset, size)`` of the ``moov`` box (None if absent or not ISO-BMFF).
    A download cut short leaves an ``mdat`` (or ``moov``) box that claims more
    bytes than the file has; a recording never finalised has no ``moov``.
    FFmpeg reports both as "invalid data", and with the index up front it even
    opens the file and fails later, so we look ourselves (a few small reads).
    """
    moov = None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return None, None  # not ISO-BMFF: let the demuxers judge
            pos, seen = 0, set()
            for _ in range(100_000):  # fragmented files have many boxes; stay bounded
                if pos >= size:
                    break
                f.seek(pos)
                hdr = f.read(16)
                if len(hdr) < 8:
                    break  # a few trailing bytes: harmless
                box = int.from_bytes(hdr[:4], "big")
                kind = hdr[4:8].decode("latin-1")
                if box == 1:
                    if len(hdr) < 16:
                        return f"truncated file (the MP4 '{kind}' box header is cut off)", None
                    box = int.from_bytes(hdr[8:16], "big")
                elif box == 0:
                    box = size - pos  # "extends to the end of the file"
                if box < 8:
                    return None, None  # malformed in a way we do not diagnose
                seen.add(kind)
                if pos + box > size:
                    return (f"truncated file: the MP4 '{kind}' box needs {pos + box} bytes "
                            f"but the file has {size} (download or copy cut short?)"), None
                if kind == "moov" and moov is None:
                    moov = (pos, box)
                pos += box
            else:
                return None, moov
    except OSError:
        return None, None
    if "moov" not in seen:
        return "incomplete MP4: no 'moov' index box (recording not finalised, or file truncated)", None
    return None, moov


# Sample-entry fourccs whose FFmpeg decoder name is unambiguous.
_MP4_CODECS = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "av01": "av1",
               "vp09": "vp9", "vp08": "vp8", "mjpa": "mjpeg", "mjpb": "mjpeg", "jpeg": "mjpeg"}
_MP4_CONTAINERS = {"trak", "mdia", "minf", "stbl"}


def _mp4_header(path: str, moov: tuple[int, int]) -> Optional[_Header]:
    """Read codec, size, frame count and rotation straight from the ``moov`` box.

    The decord path then needs no PyAV open (which probes the streams and
    decodes a frame: ~10 ms, 10% of decoding a 16-frame clip). Returns None
    (use PyAV) for anything unusual: several video tracks, unknown codecs.
    """
    try:
        with open(path, "rb") as f:
            def children(start: int, end: int) -> Iterator[tuple[str, int, int]]:
                pos = start
                while pos + 8 <= end:
                    f.seek(pos)
                    hdr = f.read(16)
                    n = int.from_bytes(hdr[:4], "big")
                    kind = hdr[4:8].decode("latin-1")
                    head = 8
                    if n == 1:
                        n, head = int.from_bytes(hdr[8:16], "big"), 16
                    elif n == 0:
                        n = end - pos
                    if n < head or pos + n > end:
                        return
                    yield kind, pos + head, pos + n
                    pos += n

            tracks = []
            for kind, b0, b1 in children(moov[0] + 8, moov[0] + moov[1]):
                if kind != "trak":
                    continue
                t: dict[str, Any] = {}
                stack = [(b0, b1)]
                while stack:
                    s0, s1 = stack.pop()
                    for k, c0, c1 in children(s0, s1):
                        if k in _MP4_CONTAINERS:
                            stack.append((c0, c1))
                        elif k in ("tkhd", "hdlr", "stsd", "stsz"):
                            f.seek(c0)
                            t[k] = f.read(min(c1 - c0, 128))
                tracks.append(t)
    except OSError:
        return None
    video = [t for t in tracks if len(t.get("hdlr", b"")) >= 12 and t["hdlr"][8:12] == b"vide"]
    if len(video) != 1:
        return None
    t = video[0]
    try:
        tkhd, stsd, stsz = t["tkhd"], t["stsd"], t["stsz"]
        matrix_at = 40 if tkhd[0] == 0 else 52  # version 0 / 1 field layout
        a = int.from_bytes(tkhd[matrix_at:matrix_at + 4], "big", signed=True)
        b = int.from_bytes(tkhd[matrix_at + 4:matrix_at + 8], "big", signed=True)
        entry = stsd[8:]  # after version/flags and entry_count
        codec = _MP4_CODECS.get(entry[4:8].decode("latin-1"))
        width = int.from_bytes(entry[32:34], "big")
        height = int.from_bytes(entry[34:36], "big")
        count = int.from_bytes(stsz[8:12], "big")
    except (KeyError, IndexError, UnicodeDecodeError):
        return None
    if codec is None or width <= 0 or height <= 0 or count <= 0:
        return None
    # Matrix [a b; c d]: the picture turns clockwise by atan2(b, a) for display
    # (FFmpeg's av_display_rotation_get returns the same angle negated).
    cw = (int(round(math.degrees(math.atan2(b, a)) / 90.0)) * 90) % 360
    return _Header(codec=codec, header_frames=count, fps=None, stored_width=width,
                   stored_height=height, rotation=cw)


def _pyav_open_error(path: str, err: BaseException) -> VideoError:
    import av

    if isinstance(err, (PermissionError, av.error.PermissionError)):
        return VideoError(path, "permission denied")
    if isinstance(err, (IsADirectoryError, av.error.IsADirectoryError)):
        return VideoError(path, "is a directory, not a video file")
    if isinstance(err, (FileNotFoundError, av.error.FileNotFoundError)):
        return VideoError(path, "no such file")
    if isinstance(err, av.error.InvalidDataError):
        return VideoError(path, "not a video file (unrecognised or corrupt data)")
    if isinstance(err, (EOFError, av.error.EOFError)):
        return VideoError(path, "not a video file or truncated (unexpected end of file)")
    msg = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return VideoError(path, f"cannot open video ({msg})")


def _open_container(path: str):
    import av

    try:
        return av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise _pyav_open_error(path, e) from None


def _pick_video_stream(path: str, container):
    import av

    # FFmpeg reads a still image with its image2 demuxer or one of the "<codec>_pipe"
    # ones (every *_pipe demuxer is an image format): a photo renamed .mp4 is no video.
    demuxer = getattr(container.format, "name", "") or ""
    if demuxer == "image2" or demuxer.endswith("_pipe"):
        kind = demuxer[:-5].upper() if demuxer.endswith("_pipe") else "image"
        raise VideoError(path, f"a still image ({kind}), not a video")
    attached = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    for s in container.streams.video:
        # Cover art in music files shows up as a one-frame "video" stream.
        if attached is not None and s.disposition & attached:
            continue
        return s
    if container.streams.audio:
        raise VideoError(path, "not a video file (no video stream; audio only)")
    raise VideoError(path, "not a video file (no video stream)")


def _stream_fps(stream) -> Optional[float]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return None


def _read_header(path: str) -> _Header:
    """Open with PyAV, pick the video stream and decode its first frame.

    Decoding one frame costs a few ms and tells us the display rotation (PyAV
    exposes the display matrix only on frames) and that the stream really
    holds a decodable picture.
    """
    import av

    container = _open_container(path)
    try:
        stream = _pick_video_stream(path, container)
        codec = stream.codec_context.name
        header = _Header(codec=codec, header_frames=int(stream.frames or 0), fps=_stream_fps(stream),
                         stored_width=int(stream.codec_context.width or 0),
                         stored_height=int(stream.codec_context.height or 0), rotation=0)
        first = None
        packets = 0
        try:
            for packet in container.demux(stream):
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    frames = []  # a damaged packet: the next keyframe may still decode
                if frames:
                    first = frames[0]
                    break
                if packets > _MAX_PACKETS_BEFORE_FIRST_FRAME:
                    break
        except av.error.FFmpegError as e:
            raise VideoError(path, f"cannot read video data ({e.strerror or e})") from None
        if first is None:
            if packets <= 1:
                raise VideoError(path, "video stream has no frames")
            raise VideoError(path, f"no decodable frame in the first {packets} packets "
                                   f"({codec} data corrupt or unsupported)")
        header.stored_width, header.stored_height = first.width, first.height
        ccw = int(round(float(getattr(first, "rotation", 0) or 0)))
        if ccw == 0:
            # Files from old muxers may carry only the legacy tag (clockwise degrees).
            try:
                cw = int(float(stream.metadata.get("rotate", 0)))
            except (TypeError, ValueError):
                cw = 0
        else:
            cw = -ccw  # display matrix angles are counter-clockwise
        header.rotation = (int(round(cw / 90.0)) * 90) % 360
        return header
    finally:
        container.close()


def _decord_module():
    global _decord_quiet
    try:
        import decord
    except ImportError:  # e.g. platforms without decord wheels
        return None
    if not _decord_quiet:
        # decord links its own FFmpeg (libavutil 56, not PyAV's), whose log goes
        # straight to stderr: at decord's default level (ERROR) a damaged clip
        # prints "Invalid NAL unit size" lines before our one-line message.
        # Every problem reaches us as an exception anyway. (PyAV keeps FFmpeg's
        # log off unless someone calls av.logging.set_level.)
        decord.logging.set_level(decord.logging.QUIET)
        _decord_quiet = True
    return decord


_decord_quiet = False


def _decord_to_numpy(arr) -> np.ndarray:
    # Native bridge: decord NDArray. If another library switched decord's global
    # bridge to torch, get_batch returns a tensor: accept it, never switch back.
    if hasattr(arr, "asnumpy"):
        return arr.asnumpy()
    if hasattr(arr, "numpy"):
        return arr.numpy()
    return np.asarray(arr)


# ----------------------------------------------------------------------------------
# Backends: both deliver sorted-unique batches [N, H, W, 3] uint8 RGB as stored
# ----------------------------------------------------------------------------------
class _DecordBackend:
    name = "decord"

    def __init__(self, path: str, num_threads: int) -> None:
        decord = _decord_module()
        if decord is None:
            raise RuntimeError("decord is not installed")
        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        self.num_frames = len(self._vr)
        if self.num_frames <= 0:
            raise RuntimeError("decord reports 0 frames")
        ts = np.asarray(self._vr.get_frame_timestamp(np.arange(self.num_frames)))
        starts = ts[:, 0]
        if not (np.isfinite(starts).all() and starts.min() > -1.0 and (np.diff(starts) >= 0).all()):
            raise RuntimeError("decord cannot read this file's frame timestamps, "
                               "so its seeks would land on wrong frames")
        if starts.min() < 0:
            # An MP4 edit list that starts playback after some frames (``ffmpeg -ss
            # -c copy`` cuts): decord counts the hidden lead-in frames and its
            # seeks to them land on the first shown one (5 hidden frames: frames
            # 0, 1 came back as 5, 6). PyAV leaves them out, as players do.
            raise RuntimeError("frames before time 0 (an edit list); decord would count hidden frames")
        self.fps = float(self._vr.get_avg_fps())

    def get_batch(self, indices: np.ndarray) -> np.ndarray:
        return _decord_to_numpy(self._vr.get_batch(indices))

    def iter_frames(self, wanted: np.ndarray, frame_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        # Ascending index batches: a get_batch continues from where the previous
        # one stopped, decoding through small gaps and seeking forward only over
        # a keyframe, so the pass never goes back. Each chunk is a fresh array,
        # so yielded frames stay valid.
        chunk = max(1, min(_ITER_CHUNK_MAX, _ITER_CHUNK_BYTES // max(1, frame_bytes)))
        for i in range(0, wanted.size, chunk):
            part = wanted[i:i + chunk]
            batch = self.get_batch(part)
            for k, index in enumerate(part.tolist()):
                yield index, batch[k]

    def close(self) -> None:
        self._vr = None


# Decoder threads of a sequential pass (timeline). Each frame thread holds
# its own decoding context and frames: on a 1080p H.264 timeline, 17 threads
# (FFmpeg's choice on 16 cores) peaked ~85 MB above 4; 4 keep most of the speed.
_SEQUENTIAL_THREADS_MAX = 4


def _sequential_threads() -> int:
    """Decoder threads for a sequential pass: FFmpeg's own choice (cores + 1), at most 4."""
    return min(_SEQUENTIAL_THREADS_MAX, (os.cpu_count() or 1) + 1)


def _set_threads(stream: Any, threads: int) -> None:
    # Frame + slice threads: a few times faster on multi-core machines; 0 lets FFmpeg choose.
    stream.thread_type = "AUTO"
    if threads:
        stream.codec_context.thread_count = threads


class _PyAVCursor:
    """A PyAV container positioned somewhere in the stream, decoding forward (``threads``: 0 = FFmpeg's choice)."""

    def __init__(self, backend: "_PyAVBackend", threads: int = 0) -> None:
        self.b = backend
        self.threads = threads
        self.container = _open_container(backend.path)
        self.stream = self.container.streams.video[backend.stream_index]
        _set_threads(self.stream, threads)
        self.gen: Optional[Iterator[tuple[int, Any]]] = None
        self.next_index: Optional[int] = None  # index the generator yields next
        self.fresh = True  # nothing demuxed yet: index 0 needs no seek
        self.frames_decoded = 0  # for tests: frames decoded (converted or not)

    def start_at_keyframe(self, k: int) -> None:
        """Position the decoder at keyframe index ``k``."""
        import av

        if not (self.fresh and k == 0):
            try:
                self.container.seek(int(self.b.pts[k]), stream=self.stream, backward=True)
            except av.error.FFmpegError:
                # Unseekable input: reopen and decode from the start.
                self.container.close()
                self.container = _open_container(self.b.path)
                self.stream = self.container.streams.video[self.b.stream_index]
                _set_threads(self.stream, self.threads)
                k = int(self.b.key_indices[0])
            self.stream.codec_context.flush_buffers()
        self.fresh = False
        self.gen = self._decode_from(k)
        self.next_index = k

    def _decode_from(self, k: int) -> Iterator[tuple[int, Any]]:
        import av

        anchor = int(self.b.pts[k])
        index: Optional[int] = None
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                # Damaged data: frames may be lost from here on, so counting them
                # in output order would hand out wrong frames (frame 47 as 46).
                # The reader switches to the tolerant pass, which places frames
                # by timestamp.
                self.gen = None
                raise _Undecodable(self.b.path, f"damaged data after frame {self.next_index}") from None
            for frame in frames:
                self.frames_decoded += 1
                if index is None:
                    pts = frame.pts
                    if pts is None:
                        index = k
                    elif pts < anchor:
                        continue  # leading frames of an open GOP, from before our keyframe
                    else:
                        index = int(np.searchsorted(self.b.pts, pts))
                else:
                    # Count in output order instead of trusting pts: some files
                    # (DivX-style AVI) carry pts that are not in display order.
                    index += 1
                self.next_index = index + 1
                yield index, frame

    def close(self) -> None:
        self.container.close()


class _PyAVBackend:
    name = "pyav"

    def __init__(self, path: str) -> None:
        import av

        self.path = path
        container = _open_container(path)
        try:
            stream = _pick_video_stream(path, container)
            self.stream_index = list(container.streams.video).index(stream)
            self.fps = _stream_fps(stream)
            time_base = stream.time_base
            # One demux pass (no decoding): exact frame count, every frame's pts
            # and the keyframes, like decord's index. Reads the file once.
            pts_list: list[int] = []
            keys: list[bool] = []
            last = -1
            self.hidden = 0  # lead-in frames an edit list hides (decoded, never shown)
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue  # the flush packet at EOF
                    if packet.is_discard:
                        self.hidden += 1
                        continue
                    ts = packet.pts if packet.pts is not None else packet.dts
                    if ts is None:
                        ts = last + 1  # no timestamps at all: keep packet order
                    last = ts
                    pts_list.append(int(ts))
                    keys.append(bool(packet.is_keyframe))
            except av.error.FFmpegError:
                pass  # damaged tail: keep what was demuxed; decoding stops there too
        finally:
            container.close()
        if not pts_list:
            raise VideoError(path, "video stream has no frames")
        pts = np.asarray(pts_list, dtype=np.int64)
        order = np.argsort(pts, kind="stable")
        self.pts = pts[order]
        key_sorted = np.asarray(keys, dtype=bool)[order]
        key_indices = np.flatnonzero(key_sorted)
        if key_indices.size == 0 or key_indices[0] != 0:
            # Streams that start without a flagged keyframe: decode from the very start.
            key_indices = np.concatenate([[0], key_indices])
        self.key_indices = key_indices
        self._key_list = key_indices.tolist()
        self.num_frames = int(self.pts.size)
        if self.fps is None:
            span = float((self.pts[-1] - self.pts[0]) * time_base) if self.num_frames > 1 else 0.0
            self.fps = (self.num_frames - 1) / span if span > 0 else 30.0
        self._cursor: Optional[_PyAVCursor] = None

    def keyframe_for(self, index: int) -> int:
        return self._key_list[bisect.bisect_right(self._key_list, index) - 1]

    def _cursor_for(self, target: int, cursor: Optional[_PyAVCursor], threads: int = 0) -> _PyAVCursor:
        """Reuse ``cursor`` if decoding on reaches ``target`` without passing a keyframe we could seek to.

        A new cursor decodes with ``threads`` threads (0: FFmpeg's choice).
        """
        k = self.keyframe_for(target)
        if cursor is None:
            cursor = _PyAVCursor(self, threads)
            cursor.start_at_keyframe(k)
        elif cursor.gen is None or cursor.next_index is None or cursor.next_index > target \
                or k > cursor.next_index:
            cursor.start_at_keyframe(k)
        return cursor

    def get_batch(self, indices: np.ndarray) -> np.ndarray:
        out: list[np.ndarray] = []
        targets = indices.tolist()
        i = 0
        while i < len(targets):
            cursor = self._cursor = self._cursor_for(targets[i], self._cursor)
            assert cursor.gen is not None
            for index, frame in cursor.gen:
                if index < targets[i]:
                    continue  # decoded only to reach the target; never converted to RGB
                if index > targets[i]:
                    # The decoder skipped the target (undecodable frames after a seek).
                    cursor.gen = None
                    raise _Undecodable(self.path, f"could not decode frame {targets[i]} of "
                                                  f"{self.num_frames} (file corrupt?)")
                out.append(frame.to_ndarray(format="rgb24"))
                i += 1
                if i == len(targets) or self.keyframe_for(targets[i]) > index + 1:
                    break  # done, or cheaper to seek to the next target's keyframe
            else:
                cursor.gen = None  # exhausted: the next request seeks
                raise _Undecodable(self.path, f"could not decode frame(s) {_fmt_list(targets[i:])} of "
                                              f"{self.num_frames} (file truncated or corrupt)")
        return np.stack(out)

    def iter_frames(self, wanted: np.ndarray, frame_bytes: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        # Its own container, so get_frames() calls in between cannot move it.
        # Decodes forward from the first wanted frame, converting only wanted
        # ones; seeks ahead (never back) over a keyframe when the next wanted
        # frame is past it, as get_batch does, so a sparse timeline skips GOPs.
        # One decoded frame at a time and at most 4 decoder threads: memory
        # depends on neither the video's length nor the machine's cores.
        targets = wanted.tolist()
        cursor = self._cursor_for(targets[0], None, _sequential_threads())
        try:
            i = 0
            while True:
                assert cursor.gen is not None
                for index, frame in cursor.gen:
                    if index < targets[i]:
                        continue
                    if index > targets[i]:
                        break
                    yield index, frame.to_ndarray(format="rgb24")
                    i += 1
                    if i == len(targets):
                        return
                    if self.keyframe_for(targets[i]) > index + 1:
                        cursor = self._cursor_for(targets[i], cursor)
                        break
                else:
                    break  # decoder exhausted
                if cursor.gen is None or cursor.next_index is None or cursor.next_index > targets[i]:
                    break  # the decoder skipped a wanted frame
            raise _Undecodable(self.path, f"could not decode frame(s) {_fmt_list(targets[i:])} of "
                                          f"{self.num_frames} (file truncated or corrupt)")
        finally:
            cursor.close()

    def tolerant_frames(self, wanted: np.ndarray, to_end: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Decode from the first packet on, skipping what cannot be decoded.

        Yields ``(index, rgb)`` for every index of ``wanted`` (sorted unique),
        in order. A frame that does not decode is stood in for by the last
        frame decoded before it, as a player holds the last good picture; the
        frames before the first decodable one get that first one. Frames are
        placed by their timestamp, so a lost packet shifts nothing. With
        ``to_end`` the pass reads the whole file and leaves which frames
        decoded in ``self.readable`` (bool ``[num_frames]``). Never seeks: a
        decoder restarted at a damaged keyframe can lose frames that a
        sequential pass still gets, so this pass and the count agree.
        """
        import av

        targets = wanted.tolist()
        index_of = {p: i for i, p in enumerate(self.pts.tolist())}
        first_pts = int(self.pts[0])
        readable = np.zeros(self.num_frames, dtype=bool)
        container = _open_container(self.path)
        stream = container.streams.video[self.stream_index]
        _set_threads(stream, _sequential_threads())
        last_idx, last, last_rgb = -1, None, None
        j = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    continue  # damaged packet: the decoder resynchronises on later ones
                for frame in frames:
                    if frame.pts is not None and frame.pts in index_of:
                        idx = index_of[frame.pts]
                    elif frame.pts is not None and frame.pts < first_pts:
                        continue  # lead-in an edit list hides
                    else:
                        idx = last_idx + 1  # no usable timestamp: count in output order
                    if idx <= last_idx or idx >= self.num_frames:
                        continue
                    readable[idx] = True
                    rgb = None
                    while j < len(targets) and targets[j] < idx:
                        if last is None:  # damaged start: the first good frame stands in
                            rgb = rgb if rgb is not None else frame.to_ndarray(format="rgb24")
                            yield targets[j], rgb
                        else:
                            last_rgb = last_rgb if last_rgb is not None else last.to_ndarray(format="rgb24")
                            yield targets[j], last_rgb
                        j += 1
                    if j < len(targets) and targets[j] == idx:
                        rgb = rgb if rgb is not None else frame.to_ndarray(format="rgb24")
                        yield idx, rgb
                        j += 1
                    last_idx, last, last_rgb = idx, frame, rgb
                    if j == len(targets) and not to_end:
                        return
        except av.error.FFmpegError:
            pass  # damaged container structure: what came before stands
        finally:
            container.close()
        if last is None:
            raise VideoError(self.path, "no frame could be decoded (file corrupt)")
        while j < len(targets):
            last_rgb = last_rgb if last_rgb is not None else last.to_ndarray(format="rgb24")
            yield targets[j], last_rgb
            j += 1
        if to_end:
            self.readable = readable

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None


def _fmt_list(xs: Sequence[int], n: int = 5) -> str:
    head = ", ".join(str(x) for x in xs[:n])
    return head + (f", ... ({len(xs)} in all)" if len(xs) > n else "")


# ----------------------------------------------------------------------------------
# Public reader
# ----------------------------------------------------------------------------------
class VideoReader:
    """Random-access and sequential frame reader for one video file.

    ``VideoReader(path, backend="auto"|"decord"|"pyav", verbose=False, num_threads=0,
    min_readable=0.5)``. Use as a context manager or call :meth:`close`.
    ``info`` is a :class:`VideoInfo`. Frames are uint8 RGB, upright (rotation
    applied). Any problem with the file raises :class:`VideoError`. Damaged
    data is decoded around (see the module notes): ``unreadable`` then holds
    the number of frames that could not be decoded (None while no damage was
    met), and fewer than ``min_readable`` (a fraction of the frames) readable
    raises :class:`VideoError`.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", verbose: bool = False,
                 num_threads: int = 0, min_readable: float = MIN_READABLE_FRACTION) -> None:
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', not {backend!r}")
        self.path = os.fspath(path)
        self._min_readable = float(min_readable)
        self._damaged = False
        self._too_damaged: Optional[VideoError] = None
        #: Frames that could not be decoded (None: no damage seen so far).
        self.unreadable: Optional[int] = None
        self._verbose = verbose
        self._num_threads = num_threads
        self._allow_fallback = backend == "auto"  # an explicit backend is never swapped
        # PyAV backend for sequential passes over a file decord reads (see iter_frames).
        self._seq: Optional[_PyAVBackend] = None
        self._seq_off = not self._allow_fallback
        self._closed = False
        size = _check_path(self.path)
        problem, moov = _scan_isobmff(self.path, size)
        if problem:
            raise VideoError(self.path, problem)
        header = None
        if moov is not None and backend != "pyav" and _decord_module() is not None:
            header = _mp4_header(self.path, moov)
        # Everything else (and the PyAV path, which opens the file anyway) asks PyAV.
        self._header = header if header is not None else _read_header(self.path)

        self._backend: Any = None
        decord_reason = None
        if backend in ("auto", "decord"):
            try:
                self._backend = _DecordBackend(self.path, num_threads)
            except VideoError:
                raise
            except Exception as e:  # decord raises RuntimeError/DECORDError/AssertionError
                decord_reason = _short_reason(e)
                if backend == "decord":
                    raise VideoError(self.path, f"decord cannot read this file ({decord_reason})") from None
        if self._backend is None:
            if decord_reason:
                self._log("decord cannot read %s (%s); using PyAV", self.path, decord_reason)
            self._backend = _PyAVBackend(self.path)
        self._check_complete()
        self.info = self._make_info()
        # decord turns frames upright itself (its FFmpeg reads the display
        # matrix); PyAV does not. Decided per backend, verified on first batch.
        self._rotate_k = 0 if self._backend.name == "decord" else self._k_for(self._header.rotation)
        self._rotation_checked = self._backend.name != "decord"
        self._log("%s: decoding with %s (%d frames, %.3f fps, %dx%d, rotation %d)", self.path,
                  self.info.backend, self.info.num_frames, self.info.fps, self.info.width,
                  self.info.height, self.info.rotation)

    # -- helpers ---------------------------------------------------------------
    def _log(self, msg: str, *args: Any) -> None:
        logger.log(logging.INFO if self._verbose else logging.DEBUG, msg, *args)

    @staticmethod
    def _k_for(rotation_cw: int) -> int:
        # np.rot90 turns counter-clockwise for positive k.
        return (-(rotation_cw // 90)) % 4

    def _check_complete(self) -> None:
        declared = self._header.header_frames
        found = self._backend.num_frames + getattr(self._backend, "hidden", 0)
        # Containers with a frame count in the header (MP4 sample tables, AVI)
        # tell us when the data stops early; small differences are normal.
        if declared > 0 and found < declared - max(2, declared // 100):
            raise VideoError(self.path, f"truncated or incomplete file: the header lists {declared} "
                                        f"frames but only {found} are present")

    def _make_info(self) -> VideoInfo:
        h = self._header
        fps = float(self._backend.fps or h.fps or 30.0)
        w, ht = h.stored_width, h.stored_height
        if h.rotation in (90, 270):
            w, ht = ht, w
        n = int(self._backend.num_frames)
        return VideoInfo(path=self.path, num_frames=n, fps=fps, duration_s=n / fps, width=int(w),
                         height=int(ht), rotation=h.rotation, backend=self._backend.name, codec=h.codec)

    def _upright(self, batch: np.ndarray) -> np.ndarray:
        if not self._rotation_checked and batch.ndim == 4 and batch.shape[0] > 0:
            self._rotation_checked = True
            if batch.shape[1:3] != (self.info.height, self.info.width) and \
                    batch.shape[1:3] == (self._header.stored_height, self._header.stored_width):
                # A decord build that ignores the display matrix: rotate ourselves.
                self._rotate_k = self._k_for(self._header.rotation)
        if self._rotate_k:
            batch = np.ascontiguousarray(np.rot90(batch, k=self._rotate_k, axes=(-3, -2)))
        return batch

    def _fallback_to_pyav(self, err: BaseException, pyav: Optional["_PyAVBackend"] = None) -> None:
        reason = _short_reason(err)
        self._log("decord failed reading %s (%s); falling back to PyAV", self.path, reason)
        try:
            self._backend.close()
        except Exception:
            pass
        self._backend = pyav if pyav is not None else _PyAVBackend(self.path)
        self._check_complete()
        self.info = self._make_info()
        self._rotate_k = self._k_for(self._header.rotation)
        self._rotation_checked = True

    def _validate(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self.path}: reader is closed")
        idx = np.asarray(indices)
        if idx.size == 0:
            return idx.astype(np.int64).reshape(0)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"frame indices must be a 1-D sequence of integers, got {idx.dtype} "
                            f"shape {idx.shape}")
        idx = idx.astype(np.int64)
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.info.num_frames:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{self.path}: frame index {bad} out of range "
                             f"(video has {self.info.num_frames} frames)")
        return idx

    def _get_batch(self, uniq: np.ndarray) -> np.ndarray:
        """Frames ``[N, H, W, 3]`` (as stored) for sorted unique ``uniq``, from whichever backend copes.

        decord trouble -> PyAV (with ``backend="auto"``); frames PyAV cannot
        decode -> the tolerant pass (:meth:`_turn_tolerant`).
        """
        while True:
            if self._too_damaged is not None:
                raise self._too_damaged
            if self._damaged:
                return np.stack([f for _, f in self._backend.tolerant_frames(uniq)])
            try:
                return self._backend.get_batch(uniq)
            except Exception as e:
                self._recover(e)

    def _sequential_backend(self) -> Optional["_PyAVBackend"]:
        """PyAV for a forward pass over a file decord reads (``backend="auto"``), or None (use the backend).

        Why: decord's frame threads, interleaved with a model's forward passes,
        grow the process by hundreds of MB (glibc arenas; +400-1000 MB over a
        90 s clip) and decode a one-pass timeline about 2x slower than PyAV,
        which stays within tens of MB. The two deliver identical frames (same
        FFmpeg conversion to RGB); PyAV is used only when it counts the same
        frames as decord, so indices mean the same frames.
        """
        if self._seq is None and not self._seq_off and self._backend.name == "decord":
            try:
                seq = _PyAVBackend(self.path)
            except Exception as e:
                self._seq_off = True
                self._log("%s: sequential pass stays on decord (PyAV: %s)", self.path, _short_reason(e))
                return None
            if seq.num_frames != self._backend.num_frames or seq.hidden:
                self._seq_off = True
                self._log("%s: sequential pass stays on decord (PyAV counts %d frames, decord %d)",
                          self.path, seq.num_frames, self._backend.num_frames)
                return None
            self._seq = seq
        return self._seq if self._backend.name == "decord" and not self._seq_off else None

    def _sequential_failed(self, err: Exception) -> None:
        """The PyAV sequential pass failed: damaged data makes PyAV the backend (tolerant); else decord goes on."""
        seq, self._seq, self._seq_off = self._seq, None, True
        if isinstance(err, _Undecodable) and seq is not None:
            # What decord would do on damaged data too (fall back, then decode around it).
            self._fallback_to_pyav(err, seq)
            self._turn_tolerant()
        else:
            self._log("%s: PyAV sequential pass failed (%s); using decord", self.path, _short_reason(err))
            if seq is not None:
                seq.close()

    def _iter_decoded(self, wanted: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, upright frame)`` for sorted unique ``wanted`` in one forward pass; falls back as
        :meth:`_get_batch` does and resumes after the frames already delivered."""
        frame_bytes = self.info.width * self.info.height * 3
        done = 0  # frames of `wanted` already yielded
        while True:
            if self._too_damaged is not None:
                raise self._too_damaged
            rest = wanted[done:]
            rest = rest[rest < self.info.num_frames]  # PyAV may count fewer frames than decord
            if rest.size == 0:
                return
            seq = None if self._damaged else self._sequential_backend()
            try:
                if self._damaged:
                    source = self._backend.tolerant_frames(rest)
                elif seq is not None:
                    source = seq.iter_frames(rest, frame_bytes)
                else:
                    source = self._backend.iter_frames(rest, frame_bytes)
                k = self._k_for(self._header.rotation) if seq is not None else None
                for index, frame in source:
                    if k is None:
                        frame = self._upright(frame[None])[0]
                    elif k:
                        frame = np.ascontiguousarray(np.rot90(frame, k=k))
                    yield index, frame
                    done += 1
                return
            except Exception as e:
                if seq is not None:
                    self._sequential_failed(e)
                else:
                    self._recover(e)

    def _recover(self, err: Exception) -> None:
        """After a failed read: turn tolerant (PyAV lost frames) or fall back to PyAV (decord trouble,
        with ``backend="auto"``); anything else is raised as a :class:`VideoError`."""
        if isinstance(err, _Undecodable):
            self._turn_tolerant()
        elif isinstance(err, VideoError):
            raise err
        elif self._backend.name != "decord" or not self._allow_fallback:
            raise VideoError(self.path, f"decoding failed ({_short_reason(err)})") from None
        else:
            self._fallback_to_pyav(err)

    def _turn_tolerant(self) -> None:
        """Damaged data: count the frames that decode (one pass), warn once, then serve stand-ins.

        From here on every request is one sequential PyAV pass from the start of
        the file (:meth:`_PyAVBackend.tolerant_frames`), the way a player gets
        through a damaged file; an unreadable frame is replaced by the last
        readable one before it. Raises :class:`VideoError` when fewer than
        ``min_readable`` of the frames decode: too little is left for a clip.
        """
        self._damaged = True
        for _ in self._backend.tolerant_frames(np.zeros(0, np.int64), to_end=True):
            pass
        n = self.info.num_frames
        good = int(self._backend.readable.sum())
        self.unreadable = n - good
        if good < self._min_readable * n:
            self._too_damaged = VideoError(self.path, f"too damaged: only {good} of {n} frames could be decoded")
            raise self._too_damaged
        if self.unreadable:
            logger.warning("warning: %s: %d of %d frames unreadable, skipped (the last readable frame "
                           "stands in for each)", self.path, self.unreadable, n)

    # -- public API ------------------------------------------------------------
    @property
    def backend(self) -> str:
        """Name of the backend in use: "decord" or "pyav"."""
        return self._backend.name

    def __len__(self) -> int:
        return self.info.num_frames

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames by index.

        ``indices``: frame indices in ``[0, num_frames)``, any order, repeats
        allowed. Returns uint8 RGB ``[T, H, W, 3]`` (``T = len(indices)``) in
        the order asked. Each distinct frame is decoded once, in ascending
        order: decord ``get_batch`` on the sorted unique indices; PyAV seeks
        to the keyframe before each needed run and decodes forward (converting
        only the frames asked for).
        """
        idx = self._validate(indices)
        if idx.size == 0:
            return np.zeros((0, self.info.height, self.info.width, 3), np.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)
        batch = self._upright(self._get_batch(uniq))
        if uniq.size == idx.size and (uniq == idx).all():
            return batch
        return batch[inverse.reshape(-1)]

    def iter_frames(self, start: int = 0, stop: Optional[int] = None,
                    only: Optional[Sequence[int] | np.ndarray] = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode frames ``start..stop-1`` in one forward pass.

        Yields ``(index, frame)`` in ascending index order, ``frame`` uint8 RGB
        ``[H, W, 3]`` (upright). ``only``: yield just these indices (within
        ``[start, stop)``); the pass still goes forward once, but frames nobody
        asked for are not converted to RGB and whole GOPs between them are
        skipped. With ``backend="auto"`` the pass decodes with PyAV even when
        decord serves :meth:`get_frames` (same frames, pixel for pixel; about
        half the time and a bounded, small memory footprint where decord's
        threads grow the process by hundreds of MB on long videos); an
        explicit ``backend`` is used as asked. Only a frame or a small chunk is
        decoded ahead, so memory does not depend on the video length. Frames
        may be views into a chunk array that is never written again (safe to
        keep).
        """
        if self._closed:
            raise ValueError(f"{self.path}: reader is closed")
        n = self.info.num_frames
        stop = n if stop is None else min(int(stop), n)
        if not 0 <= start <= n:
            raise IndexError(f"{self.path}: start {start} out of range (video has {n} frames)")
        if only is None:
            wanted = np.arange(start, stop, dtype=np.int64)
        else:
            wanted = np.unique(self._validate(only))
            wanted = wanted[(wanted >= start) & (wanted < stop)]
        if wanted.size == 0:
            return
        yield from self._iter_decoded(wanted)

    def close(self) -> None:
        """Release the decoder (idempotent)."""
        if not self._closed and self._backend is not None:
            self._backend.close()
            if self._seq is not None:
                self._seq.close()
                self._seq = None
        self._closed = True

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, backend={self.backend!r}, frames={self.info.num_frames})"


def _short_reason(e: BaseException) -> str:
    # decord errors carry multi-line C++ stack traces: keep the first meaningful line.
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("Stack trace")]
    first = lines[0] if lines else type(e).__name__
    return first[:200]


def probe(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Open ``path``, read its metadata and return a :class:`VideoInfo` (raises :class:`VideoError`)."""
    with VideoReader(path, backend=backend) as reader:
        return reader.info
