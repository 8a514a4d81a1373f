"""Frame-index samplers: which frames of a video make up a clip.

All samplers are pure functions of frame counts and return ``np.int64``
arrays of frame indices in ``[0, num_video_frames)``, ready for
:meth:`videoapp.data.video.VideoReader.get_frames`.

The Kinetics samplers follow PySlowFast (``slowfast/datasets/decoder.py``:
``get_start_end_idx`` + ``temporal_sampling``) exactly, because the published
MViTv2 accuracies were measured with it:

- clip size in frames ``clip = max(1, sampling_rate * num_frames * fps / target_fps)``
  (``= sampling_rate * num_frames`` when the video runs at the target rate);
- ``delta = max(num_video_frames - clip, 0)``; the start is
  ``uniform(0, delta)`` for training and ``delta * clip_idx / num_clips`` for
  test view ``clip_idx`` (note: ``/ num_clips``, not ``/ (num_clips - 1)``, so
  the last view does not touch the end of the video);
- ``end = start + clip - 1``; indices ``torch.linspace(start, end, num_frames)``
  in float32, clamped to ``[0, num_video_frames - 1]`` and truncated with
  ``.long()``. The step is therefore ``(clip - 1) / (num_frames - 1)`` (63/15
  = 4.2 for 16x4), not exactly ``sampling_rate``, and clips longer than the
  video repeat its last frame.

The SSv2 sampler follows PySlowFast ``ssv2.py`` ``get_seq_frames``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "random_clip_indices",
    "uniform_indices",
    "multiview_indices",
    "clip_indices",
    "Window",
    "sliding_windows",
    "iter_window_clips",
    "WindowClipIterator",
]


def _check_counts(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames <= 0:
        raise ValueError(f"num_video_frames must be positive, got {num_video_frames}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")


def _clip_size(num_frames: int, sampling_rate: int, fps: Optional[float],
               target_fps: Optional[float]) -> float:
    # PySlowFast: np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)
    size = float(sampling_rate * num_frames)
    if fps is not None and target_fps is not None:
        size = size / float(target_fps) * float(fps)
    return max(1.0, size)


def clip_indices(num_video_frames: int, num_frames: int, start: float, clip_size: float) -> np.ndarray:
    """PySlowFast ``temporal_sampling``: ``num_frames`` indices from ``start`` to ``start + clip_size - 1``.

    ``torch.linspace`` in float32 (bit-identical to PySlowFast whatever the
    global default dtype), clamped to ``[0, num_video_frames - 1]``, truncated
    toward zero. Returns ``np.int64 [num_frames]``.
    """
    _check_counts(num_video_frames, num_frames)
    end = start + clip_size - 1
    idx = torch.linspace(float(start), float(end), num_frames, dtype=torch.float32)
    idx = torch.clamp(idx, 0, num_video_frames - 1).long()
    return idx.numpy().astype(np.int64)


def random_clip_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                        rng: np.random.Generator, fps: Optional[float] = None,
                        target_fps: Optional[float] = None) -> np.ndarray:
    """Training clip at a random start (PySlowFast ``clip_idx = -1``).

    ``num_frames`` frames spanning ``sampling_rate * num_frames`` video frames
    (rescaled by ``fps / target_fps`` when both are given), starting at
    ``rng.uniform(0, max(num_video_frames - clip, 0))``. A clip longer than the
    video starts at 0 and repeats the last frame. Returns ``np.int64 [num_frames]``.
    """
    _check_counts(num_video_frames, num_frames)
    clip = _clip_size(num_frames, sampling_rate, fps, target_fps)
    delta = max(num_video_frames - clip, 0.0)
    start = float(rng.uniform(0.0, delta)) if delta > 0 else 0.0
    return clip_indices(num_video_frames, num_frames, start, clip)


def multiview_indices(num_video_frames: int, num_frames: int, sampling_rate: int, num_clips: int,
                      fps: Optional[float] = None, target_fps: Optional[float] = None,
                      use_offset: bool = False) -> list[np.ndarray]:
    """Kinetics test protocol: ``num_clips`` clips spread over the video (PySlowFast).

    Clip ``i`` starts at ``delta * i / num_clips`` with
    ``delta = max(num_video_frames - clip, 0)`` and ``clip = sampling_rate *
    num_frames`` (see the module docstring for the exact index formula). With
    ``use_offset=True`` (PySlowFast ``DATA.USE_OFFSET_SAMPLING``) the start is
    ``i * floor(delta / (num_clips - 1))``, or ``floor(delta / 2)`` for one clip.
    Returns a list of ``num_clips`` arrays ``np.int64 [num_frames]``.
    """
    _check_counts(num_video_frames, num_frames)
    if num_clips <= 0:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    clip = _clip_size(num_frames, sampling_rate, fps, target_fps)
    delta = max(num_video_frames - clip, 0.0)
    views = []
    for i in range(num_clips):
        if use_offset:
            start = math.floor(delta / 2) if num_clips == 1 else i * math.floor(delta / (num_clips - 1))
        else:
            start = delta * i / num_clips
        views.append(clip_indices(num_video_frames, num_frames, start, clip))
    return views


def uniform_indices(num_video_frames: int, num_frames: int,
                    rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """SSv2-style sampling: one frame from each of ``num_frames`` equal segments.

    PySlowFast ``get_seq_frames``: ``seg = (num_video_frames - 1) / num_frames``;
    segment ``i`` runs from ``round(seg * i)`` to ``round(seg * (i + 1))``
    (``np.round``, half to even). Without ``rng`` (test) take its middle
    ``(start + end) // 2``; with ``rng`` (training) a uniform integer in
    ``[start, end]``. Returns ``np.int64 [num_frames]`` (repeats when the video
    has fewer frames than ``num_frames``).
    """
    _check_counts(num_video_frames, num_frames)
    seg = float(num_video_frames - 1) / num_frames
    i = np.arange(num_frames, dtype=np.float64)
    starts = np.round(seg * i).astype(np.int64)
    ends = np.round(seg * (i + 1)).astype(np.int64)
    if rng is None:
        return (starts + ends) // 2
    return rng.integers(starts, ends + 1).astype(np.int64)


# ----------------------------------------------------------------------------------
# Sliding windows over long videos
# ----------------------------------------------------------------------------------
@dataclass
class Window:
    """One analysis window: ``[start_s, end_s)`` in seconds and the frames sampled from it.

    ``indices``: ``np.int64 [num_frames]`` frame indices, non-decreasing.
    """

    start_s: float
    end_s: float
    indices: np.ndarray = field(repr=False)


def _window_indices(num_video_frames: int, fps: float, start_s: float, end_s: float,
                    num_frames: int) -> np.ndarray:
    # The window covers frames [start_s*fps, end_s*fps); take the centre of each
    # of num_frames equal parts (symmetric, never outside the window).
    f0, f1 = start_s * fps, end_s * fps
    pos = f0 + (np.arange(num_frames) + 0.5) * (f1 - f0) / num_frames
    return np.clip(np.floor(pos + 1e-9), 0, num_video_frames - 1).astype(np.int64)


def sliding_windows(num_video_frames: int, fps: float, window_s: float, stride_s: float,
                    num_frames: int) -> list[Window]:
    """Cover a video with windows of ``window_s`` seconds every ``stride_s`` seconds.

    Windows start at ``0, stride_s, 2*stride_s, ...`` while they fit; if the
    last one ends before the video does, one more window is aligned to the end
    so the end is always covered. A video shorter than ``window_s`` gives one
    window over the whole video. Each window samples ``num_frames`` frames
    evenly (segment centres) over its span. Returns windows in time order.
    """
    _check_counts(num_video_frames, num_frames)
    if fps <= 0 or window_s <= 0 or stride_s <= 0:
        raise ValueError("fps, window_s and stride_s must be positive")
    duration = num_video_frames / fps
    eps = 0.5 / fps  # half a frame: windows that end within it of the end cover it
    if duration <= window_s + eps:
        spans = [(0.0, duration)]
    else:
        spans = []
        k = 0
        while True:
            start = k * stride_s
            if start + window_s > duration + eps:
                break
            spans.append((start, start + window_s))
            k += 1
        if spans[-1][1] < duration - eps:
            spans.append((duration - window_s, duration))
    return [Window(s, e, _window_indices(num_video_frames, fps, s, e, num_frames)) for s, e in spans]


class WindowClipIterator:
    """Iterator of ``(window, clip)`` decoding the video once (see :func:`iter_window_clips`).

    After (or during) iteration: ``peak_buffered_frames`` is the most frames
    held at once, ``frames_decoded`` how many frames the pass delivered (each
    needed frame once).
    """

    def __init__(self, reader: Any, windows: Sequence[Window],
                 max_buffered_frames: Optional[int] = None) -> None:
        self.reader = reader
        self.windows = list(windows)
        self.max_buffered_frames = max_buffered_frames
        self.peak_buffered_frames = 0
        self.frames_decoded = 0
        self._gen = self._run()

    def __iter__(self) -> "WindowClipIterator":
        return self

    def __next__(self) -> tuple[Window, np.ndarray]:
        return next(self._gen)

    def _run(self) -> Iterator[tuple[Window, np.ndarray]]:
        wins = self.windows
        if not wins:
            return
        mins = np.array([int(w.indices.min()) for w in wins], dtype=np.int64)
        maxs = np.array([int(w.indices.max()) for w in wins], dtype=np.int64)
        # suffix_min[j]: lowest frame any window j.. still needs (eviction bound).
        suffix_min = np.minimum.accumulate(mins[::-1])[::-1]
        needed = np.unique(np.concatenate([w.indices for w in wins]))
        needed_set = set(needed.tolist())
        buffer: dict[int, np.ndarray] = {}
        j = 0  # next window to yield (windows are yielded in the order given)
        start, stop = int(needed[0]), int(needed[-1]) + 1
        for index, frame in self.reader.iter_frames(start, stop, only=needed):
            self.frames_decoded += 1
            if index in needed_set:
                # Copy: the decoder's chunk array would otherwise stay alive for one frame.
                buffer[index] = np.array(frame, copy=True)
                self.peak_buffered_frames = max(self.peak_buffered_frames, len(buffer))
                if self.max_buffered_frames is not None and len(buffer) > self.max_buffered_frames:
                    raise RuntimeError(
                        f"sliding windows need more than max_buffered_frames="
                        f"{self.max_buffered_frames} frames at once "
                        f"(windows out of order or overlapping too much)")
            while j < len(wins) and maxs[j] <= index:
                w = wins[j]
                clip = np.stack([buffer[int(i)] for i in w.indices])
                j += 1
                if j < len(wins):
                    low = int(suffix_min[j])
                    for old in [i for i in buffer if i < low]:
                        del buffer[old]
                else:
                    buffer.clear()
                yield w, clip
                # Drop our reference before the next clip is stacked, so two full-size
                # clips are never alive at once (measured: -44 MiB peak at 1080p).
                del clip
        if j < len(wins):
            raise RuntimeError(f"video ended before window {j} was complete")


def iter_window_clips(reader: Any, windows: Sequence[Window],
                      max_buffered_frames: Optional[int] = None) -> WindowClipIterator:
    """Yield ``(window, clip)`` for each window, decoding the video in ONE sequential pass.

    ``reader``: a :class:`~videoapp.data.video.VideoReader` (anything with
    ``iter_frames(start, stop, only=indices)`` yielding ascending ``(index, frame)``).
    ``clip``: uint8 ``[T, H, W, 3]``, equal to
    ``reader.get_frames(window.indices)``. Only frames some current or later
    window still needs are kept (a dict index -> frame); frames below the
    lowest index any remaining window needs are dropped as soon as a window is
    yielded, so the buffer holds at most the needed frames inside about one
    window span plus the overlap with the next window: memory does not grow
    with video length. ``max_buffered_frames`` (optional) raises
    ``RuntimeError`` if more frames would have to be held. Windows are yielded
    in the order given (time order from :func:`sliding_windows`). The returned
    iterator exposes ``peak_buffered_frames`` and ``frames_decoded``.
    """
    return WindowClipIterator(reader, windows, max_buffered_frames)
