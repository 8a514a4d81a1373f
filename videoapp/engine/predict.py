"""Predictor: weights + their preprocessing -> action predictions for a video file.

The weights decide how a clip is sampled and normalised (the model's
``pretrained_cfg``: ``num_frames``, ``sampling_rate``, ``crop_size``, ``mean``,
``std``, ``channel_order``, ``sampling``), so predictions with any imported checkpoint
follow the protocol it was trained with.

Whole-video prediction averages softmax scores over several views (clips
spread uniformly over the video x spatial crops, the Kinetics test protocol;
one uniform clip for SSv2-style ``sampling="uniform"`` weights). A timeline
(``window``/``stride`` in seconds) decodes the video in one sequential pass
and scores one clip per window; the whole-video result is then the mean over
windows, so no frame is decoded twice.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from videoapp.data.sampling import (
    Window,
    clip_indices,
    multiview_indices,
    sliding_windows,
    uniform_indices,
)
from videoapp.data.transforms import ClipTransform
from videoapp.data.video import VideoError, VideoReader


@dataclass
class LabelScore:
    """One class and its probability in [0, 1]."""

    label: str
    score: float


@dataclass
class WindowPrediction:
    """Top-k classes for the span ``[start_s, end_s)`` of the video, in seconds."""

    start_s: float
    end_s: float
    top_k: list[LabelScore]


@dataclass
class Prediction:
    """Result for one video: whole-video top-k plus, with windows, a timeline.

    ``scores`` is the full averaged probability vector ``[num_classes]`` (not
    serialised); ``views`` the number of clip x crop views averaged.
    """

    video: str
    model: str
    duration_s: float
    top_k: list[LabelScore]
    windows: list[WindowPrediction] = field(default_factory=list)
    views: int = 1
    scores: np.ndarray | None = field(default=None, repr=False)
    window_scores: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"video", "model", "duration_s", "views", "top_k": [...], "windows": [...]}``."""
        d = asdict(self)
        d.pop("scores")
        d.pop("window_scores")
        return d


def _top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[LabelScore]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [LabelScore(labels[i], round(float(probs[i]), 6)) for i in order]


class ViewSampler:
    """Which frames and crops make up the whole-video views, and their preprocessing.

    The one sampling/preprocessing path of ``predict`` and ``eval`` (so both give
    the same per-video scores with the same views). ``data_config`` is the
    clip protocol as a dict (``model.pretrained_cfg.data_config()``: ``num_frames``,
    ``sampling_rate``, ``crop_size``, ``mean``, ``std``, optional ``channel_order``
    and ``sampling``);
    ``sampling`` overrides the weights' (``"rate"``: ``num_clips`` clips spread
    over the video, PySlowFast's multi-view test, ``use_offset`` its
    ``USE_OFFSET_SAMPLING``; ``"uniform"``: one clip of segment centres over the
    whole video, SSv2). Holds no model, so it pickles into DataLoader workers.
    """

    def __init__(self, data_config: dict[str, Any], num_clips: int = 5, num_crops: int = 1,
                 sampling: str | None = None, use_offset: bool = False) -> None:
        self.num_frames = int(data_config["num_frames"])
        self.sampling_rate = int(data_config["sampling_rate"])
        self.sampling = sampling or data_config.get("sampling", "rate")
        if self.sampling not in ("rate", "uniform"):
            raise ValueError(f"sampling must be 'rate' or 'uniform', got {self.sampling!r}")
        self.num_clips = max(1, int(num_clips))
        self.num_crops = int(num_crops)
        self.use_offset = bool(use_offset)
        self.transform = ClipTransform(
            crop_size=int(data_config["crop_size"]),
            mean=data_config["mean"],
            std=data_config["std"],
            num_crops=self.num_crops,
            channel_order=data_config.get("channel_order", "rgb"),
        )

    def indices(self, num_video_frames: int) -> list[np.ndarray]:
        """Frame indices ``np.int64 [num_frames]`` of each view (duplicates of short videos removed)."""
        if self.sampling == "uniform":
            return [uniform_indices(num_video_frames, self.num_frames)]
        views = multiview_indices(num_video_frames, self.num_frames, self.sampling_rate, self.num_clips,
                                  use_offset=self.use_offset)
        unique: dict[bytes, np.ndarray] = {}
        for v in views:
            unique.setdefault(np.asarray(v).tobytes(), np.asarray(v))
        return list(unique.values())

    def clips(self, reader: VideoReader) -> list[np.ndarray]:
        """The uint8 clips ``[T, H, W, 3]`` of every view, each needed frame decoded once."""
        views = self.indices(reader.info.num_frames)
        frames_needed = np.unique(np.concatenate(views))
        frames = reader.get_frames(frames_needed)
        pos = {int(f): i for i, f in enumerate(frames_needed)}
        return [frames[[pos[int(i)] for i in v]] for v in views]


# A big clip goes through the transform a few frames at a time: as float32 a
# 1080p frame is 25 MB, so a 16-frame clip would need 400 MB at once (most of a
# long 1080p timeline's peak). Resize, crop and normalisation treat every frame
# on its own, but torch's bilinear kernel takes another (vectorised) path for
# another number of planes, so chunks can differ from the whole clip by one
# float32 ulp (~1e-7): clips up to _TRANSFORM_WHOLE_MAX_BYTES (360p x 16 frames,
# 720p x 8) keep the one-call transform and its exact numbers. The timeline
# makes the very same calls chunk by chunk while it decodes
# (_iter_window_inputs), so both give the same bits.
_TRANSFORM_CHUNK_BYTES = 32 * 2**20
_TRANSFORM_WHOLE_MAX_BYTES = 96 * 2**20


def _transform_step(num_frames: int, height: int, width: int) -> int:
    """Frames per transform call for a clip ``[num_frames, height, width, 3]``; ``>= num_frames``: one call."""
    frame_bytes = max(1, height * width * 3 * 4)
    if num_frames * frame_bytes <= _TRANSFORM_WHOLE_MAX_BYTES:
        return max(1, num_frames)
    return max(1, _TRANSFORM_CHUNK_BYTES // frame_bytes)


def _transform_in_chunks(transform: ClipTransform, clip: np.ndarray) -> torch.Tensor:
    """``transform(clip)`` for uint8 ``clip`` ``[T, H, W, 3]``; big clips over chunks of frames.

    Returns float32 ``[num_crops, C, T, crop, crop]``. A clip whose float copy
    would exceed 96 MB is transformed ~32 MB of frames at a time (equal to the
    one-call result within one float32 ulp).
    """
    t, h, w = clip.shape[:3]
    step = _transform_step(t, h, w)
    if step >= t:
        return transform(clip)
    return torch.cat([transform(clip[i:i + step]) for i in range(0, t, step)], dim=2)


# The timeline gives the C heap's free pages back after each transform of at
# least this many uint8 bytes (a 360p clip of 8 frames, one 1080p frame).
_TRIM_MIN_BYTES = 4 * 2**20


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl and macOS have none
    except (OSError, AttributeError, TypeError):  # TypeError: Windows cannot open "no library"
        return None


def _return_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Why: torch allocates tensors with ``posix_memalign``, and glibc cannot put
    the next block of a size into the hole a freed aligned block of that size
    leaves (the aligned request is a few bytes larger, the neighbours stay in
    use). The per-frame float copies of a 1080p timeline (25 MB each, under
    glibc's 32 MB mmap limit, so on the heap) left ~350 MB of free but resident
    heap on 30 s of 1080p. Returning it after each big transform bounds the
    pass; the price is faulting those pages in again for the next frame.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _iter_window_inputs(reader: VideoReader, windows: Sequence[Window],
                        transform: ClipTransform) -> Iterator[torch.Tensor]:
    """The model input of each window, in the order given, from ONE sequential pass over ``reader``.

    Yields float32 ``[num_crops, C, T, crop, crop]`` per window, bit for bit
    ``_transform_in_chunks(transform, reader.get_frames(w.indices))``: the same
    transform calls on the same frames (one call per chunk of
    :func:`_transform_step` clip positions), each made as soon as its chunk's
    last frame is decoded. A decoded frame is kept only until every chunk that
    samples it is transformed, so what is held is the small model-resolution
    tensors plus at most a chunk of full-size frames per window in progress
    (one frame at 1080p), whatever the video's length or the window's span.
    Raises ``RuntimeError`` if the video ends before a window is complete.
    """
    if not windows:
        return
    indices = [np.asarray(w.indices, dtype=np.int64) for w in windows]
    needed = np.unique(np.concatenate(indices))
    refs: dict[int, int] = {}  # frame -> chunks not yet transformed that sample it
    buffer: dict[int, np.ndarray] = {}
    chunks: list[tuple[int, int, int, int, int]] = []  # (last frame, window, number, start, stop)
    parts: list[list[torch.Tensor]] = []
    left: list[int] = []  # chunks still to transform, per window
    nxt = 0  # chunks (sorted by last frame) transformed so far
    done = 0  # windows yielded so far
    for index, frame in reader.iter_frames(int(needed[0]), int(needed[-1]) + 1, only=needed):
        if not chunks:  # the first frame gives the size, hence the chunks
            for j, idx in enumerate(indices):
                step = _transform_step(idx.size, frame.shape[0], frame.shape[1])
                starts = range(0, idx.size, step)
                for c, start in enumerate(starts):
                    stop = min(start + step, idx.size)
                    chunks.append((int(idx[stop - 1]), j, c, start, stop))
                    for f in np.unique(idx[start:stop]).tolist():
                        refs[f] = refs.get(f, 0) + 1
                parts.append([torch.empty(0)] * len(starts))
                left.append(len(starts))
            chunks.sort()
        if index not in refs:
            continue
        buffer[index] = frame
        while nxt < len(chunks) and chunks[nxt][0] <= index:
            _, j, c, start, stop = chunks[nxt]
            nxt += 1
            sel = indices[j][start:stop]
            # One frame: a view, not a copy (the transform makes its own contiguous copies).
            clip = buffer[int(sel[0])][None] if sel.size == 1 else np.stack([buffer[int(i)] for i in sel])
            left[j] -= 1
            for f in np.unique(sel).tolist():
                refs[f] -= 1
                if refs[f] == 0:
                    del refs[f], buffer[f]  # before the transform: its float copy is the peak
            parts[j][c] = transform(clip)
            nbytes = clip.nbytes
            del clip
            if nbytes >= _TRIM_MIN_BYTES:
                _return_free_heap()
        if index in buffer:
            # Still needed by a later chunk: keep a copy, not a view into the decoder's chunk array.
            buffer[index] = np.array(frame, copy=True)
        del frame
        while done < len(windows) and left[done] == 0:
            got, parts[done] = parts[done], []
            done += 1
            yield got[0] if len(got) == 1 else torch.cat(got, dim=2)
    if done < len(windows):
        raise RuntimeError(f"video ended before window {done} was complete")


def view_probs(model: nn.Module, x: torch.Tensor, num_crops: int, bf16: bool = False) -> torch.Tensor:
    """Softmax over classes of ``x`` ``[n * num_crops, C, T, H, W]`` (on the model's device), crops averaged.

    Returns float32 ``[n, num_classes]``: the probabilities of n views. Runs
    under bf16 autocast when ``bf16``; the softmax is always fp32.
    """
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        logits = model(x)
    return logits.float().softmax(-1).view(-1, num_crops, logits.shape[-1]).mean(1)


def resolve_weights_model(weights: str | os.PathLike, model_name: str | None = None) -> str:
    """The registry name a weights file is for: from its metadata, else ``model_name``."""
    from videoapp.weights import CheckpointError, read_metadata

    path = Path(weights)
    if path.suffix == ".safetensors" and path.is_file():
        meta_model = read_metadata(path).get("model")
        if meta_model:
            return str(meta_model)
    if model_name is None:
        raise CheckpointError(f"{path}: the checkpoint does not name its model; pass --model NAME")
    return model_name


class Predictor:
    """Runs a video model over video files.

    ``model_or_weights`` is an ``nn.Module`` built by :func:`videoapp.create_model`
    (its ``pretrained_cfg`` gives the labels and clip protocol) or a path to weights (ours, or a
    reference checkpoint together with ``model_name``). ``num_clips`` x
    ``num_crops`` views are averaged for whole-video scores (default 5 x 1,
    the MViTv2-S Kinetics protocol). ``bf16`` runs under bf16 autocast
    (about 2x faster on CPUs with AVX-512 bf16, ~1e-2 relative logit error).
    """

    def __init__(
        self,
        model_or_weights: nn.Module | str | os.PathLike,
        *,
        model_name: str | None = None,
        device: str = "cpu",
        bf16: bool = False,
        num_clips: int = 5,
        num_crops: int = 1,
        batch_size: int = 4,
    ) -> None:
        from videoapp.models import create_model, get_pretrained_cfg

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no CUDA device is available")
        if isinstance(model_or_weights, nn.Module):
            model = model_or_weights
        elif Path(model_or_weights).suffix.lower() == ".onnx":
            from videoapp.models.export import OnnxModel

            # An exported model (``videoapp export``): onnxruntime, protocol from the file's metadata.
            model = OnnxModel(model_or_weights)
        else:
            name = resolve_weights_model(model_or_weights, model_name)
            model = create_model(name, pretrained=str(model_or_weights))
        cfg = get_pretrained_cfg(model)
        if cfg.task == "detection":
            raise ValueError(f"{cfg.model_name} is an action detector (clips + person boxes): use 'videoapp detect'")
        self.model = model.eval().to(device)
        self.model_name = cfg.model_name
        self.view_sampler = ViewSampler(cfg.data_config(), num_clips=num_clips, num_crops=num_crops)
        self.num_frames = self.view_sampler.num_frames
        self.sampling_rate = self.view_sampler.sampling_rate
        self.sampling = self.view_sampler.sampling
        self.transform = self.view_sampler.transform
        num_classes = self._num_classes()
        self.labels = list(cfg.labels) if cfg.labels else [f"class_{i}" for i in range(num_classes)]
        self.device = torch.device(device)
        self.bf16 = bf16
        self.num_clips = max(1, int(num_clips))
        self.num_crops = num_crops
        self.batch_size = max(1, int(batch_size))

    def _num_classes(self) -> int:
        head = getattr(self.model, "head", None)
        fc = getattr(head, "fc", None)
        if isinstance(fc, nn.Linear):
            return fc.out_features
        if head is None and isinstance(getattr(self.model, "num_classes", None), int):
            return self.model.num_classes  # a stand-in without modules, e.g. an ONNX model
        raise ValueError(f"{self.model_name} has no classifier head")

    @property
    def clip_span(self) -> int:
        """Source frames covered by one clip (``num_frames * sampling_rate``)."""
        return self.num_frames * self.sampling_rate

    @torch.inference_mode()
    def scores(self, clips: Iterable[np.ndarray]) -> np.ndarray:
        """Softmax probabilities ``[N, num_classes]`` for N uint8 clips ``[T, H, W, 3]``, crops averaged."""
        def inputs() -> Iterator[torch.Tensor]:
            for clip in clips:
                x = _transform_in_chunks(self.transform, clip)
                del clip  # the uint8 frames are not needed once transformed
                yield x
        return self._probs(inputs())

    @torch.inference_mode()
    def _probs(self, inputs: Iterable[torch.Tensor]) -> np.ndarray:
        """Softmax probabilities ``[N, num_classes]`` for N transformed clips ``[num_crops, C, T, crop, crop]``.

        Batches of ``batch_size`` clips, so the timeline (which transforms while
        decoding) and :meth:`scores` run the model on the same batches.
        """
        out: list[np.ndarray] = []
        batch: list[torch.Tensor] = []

        def flush() -> None:
            x = torch.cat(batch).to(self.device)  # [n * crops, C, T, H, W]
            out.append(view_probs(self.model, x, self.num_crops, self.bf16).cpu().numpy())
            batch.clear()

        for x in inputs:
            batch.append(x)
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def clip_indices(self, num_video_frames: int) -> list[np.ndarray]:
        """Frame indices of the whole-video views (duplicates of short videos removed)."""
        return self.view_sampler.indices(num_video_frames)

    def windows(self, num_video_frames: int, fps: float, window_s: float, stride_s: float) -> list[Window]:
        """Timeline windows of ``window_s`` seconds every ``stride_s`` seconds.

        Spans come from :func:`~videoapp.data.sampling.sliding_windows` (the last
        window is aligned to the end). Each window is scored on one clip sampled
        the way the weights were trained: ``num_frames`` over one clip span
        (``num_frames * sampling_rate`` frames, PySlowFast's index formula)
        centred in the window and clamped to the video, or uniform over the
        window for ``sampling="uniform"`` weights.
        """
        wins = sliding_windows(num_video_frames, fps, window_s, stride_s, self.num_frames)
        if self.sampling == "uniform":
            return wins
        for w in wins:
            centre = (w.start_s + w.end_s) / 2.0 * fps
            w.indices = clip_indices(num_video_frames, self.num_frames, round(centre - self.clip_span / 2.0), self.clip_span)
        return wins

    def predict(
        self,
        path: str | os.PathLike,
        top_k: int = 5,
        window: float | None = None,
        stride: float | None = None,
        progress: bool | None = None,
    ) -> Prediction:
        """Predict actions in the video at ``path``.

        ``window``/``stride`` (seconds) add a timeline; giving only one uses the
        other's value (the default window is one clip span). ``progress`` shows a
        tqdm bar (``None``: only on a terminal). Raises
        :class:`~videoapp.data.video.VideoError` for unreadable input.
        """
        from tqdm import tqdm

        top_k = max(1, min(int(top_k), len(self.labels)))
        with VideoReader(path) as reader:
            info = reader.info
            n = info.num_frames
            if window is None and stride is None:
                clips = self.view_sampler.clips(reader)
                probs = self.scores(clips)
                mean = probs.mean(0)
                return Prediction(
                    video=str(path), model=self.model_name, duration_s=round(info.duration_s, 3),
                    top_k=_top_k(mean, self.labels, top_k), views=len(clips) * self.num_crops, scores=mean,
                )
            if window is None:
                window = max(stride, self.clip_span / info.fps)  # type: ignore[arg-type]
            if stride is None:
                stride = window
            wins = self.windows(n, info.fps, float(window), float(stride))
            bar = tqdm(total=len(wins), desc=Path(path).name, unit="win", disable=None if progress is None else not progress, leave=False)

            def inputs() -> Iterator[torch.Tensor]:
                for x in _iter_window_inputs(reader, wins, self.transform):
                    yield x
                    bar.update(1)

            try:
                probs = self._probs(inputs())
            finally:
                bar.close()
        mean = probs.mean(0)
        return Prediction(
            video=str(path), model=self.model_name, duration_s=round(info.duration_s, 3),
            top_k=_top_k(mean, self.labels, top_k),
            windows=[WindowPrediction(w.start_s, w.end_s, _top_k(p, self.labels, top_k)) for w, p in zip(wins, probs)],
            views=len(wins) * self.num_crops, scores=mean, window_scores=probs,
        )


__all__ = ["Predictor", "Prediction", "LabelScore", "WindowPrediction", "VideoError", "resolve_weights_model",
           "ViewSampler", "view_probs"]
