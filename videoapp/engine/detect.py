"""Action detection: person boxes on keyframes + an AVA-head detector -> per-person actions.

Where the person boxes come from:

1. a file (AVA CSV or our JSON box format, :mod:`videoapp.data.ava`): its
   keyframes and boxes are used exactly as written (boxes partly outside the
   frame are clipped to it, with a warning);
2. a person detector run on keyframes every ``1 / keyframe_fps`` seconds:
   OpenCV's built-in HOG people detector (:class:`HOGPersonDetector`, offline,
   weak) or a torchvision detection model from a weights file the user has
   (:class:`TorchvisionPersonDetector`, never downloaded);
3. boxes a person draws (the UI passes them in as rows, like a file).

Boxes whose score is below ``box_threshold`` (0.8, SlowFast's
``DETECTION_SCORE_THRESH``) are dropped; boxes without a score (ground truth,
drawn) are kept. Boxes are linked across keyframes by IoU
(:func:`link_person_ids`) so each person keeps a ``person_id`` (a file that
gives every box a ``person_id`` keeps its ids).

For each keyframe with boxes the detector sees one clip centred on it, sampled
as SlowFast's AVA loader does (``num_frames`` frames every ``sampling_rate``
frames from ``centre - num_frames * sampling_rate / 2``, clamped to the video,
:func:`keyframe_clip_indices`), resized as its AVA test does (short side to
the weights' ``crop_size``, the whole frame, no crop; a backbone with a fixed
input size, like Hiera, gets the frame resized to ``crop_size`` x
``crop_size``), normalised with the weights' mean/std. Every box gets one
sigmoid score per action; results are rows of the official AVA detection
format (:class:`~videoapp.data.ava.AVARow`), one per (box, action), action id
``i + 1`` for head output ``i``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from videoapp.data.ava import AVARow, canonical_timestamp, format_timestamp, keyframe_times, read_ava_csv, read_boxes_json, unique_boxes
from videoapp.data.sampling import Window, iter_window_clips
from videoapp.data.transforms import normalize, resize_short_side, to_tensor
from videoapp.data.video import VideoReader

logger = logging.getLogger("videoapp")

__all__ = [
    "DetectError",
    "draw_box",
    "keyframe_index",
    "PersonBox",
    "BoxActions",
    "VideoDetections",
    "DetectionPredictor",
    "HOGPersonDetector",
    "TorchvisionPersonDetector",
    "make_person_detector",
    "read_person_boxes",
    "link_person_ids",
    "keyframe_clip_indices",
    "default_detector_weights",
    "write_overlay",
    "DEFAULT_DETECTOR_WEIGHTS_NAME",
]

#: The shipped detector lives at weights/<this name>.
DEFAULT_DETECTOR_WEIGHTS_NAME = "detector.safetensors"
#: SlowFast's AVA ``DETECTION_SCORE_THRESH``: person boxes scored below it are dropped.
DEFAULT_BOX_THRESHOLD = 0.8

Box = tuple[float, float, float, float]
#: A person detector: uint8 RGB frame ``[H, W, 3]`` -> ``[(box normalised (x1, y1, x2, y2), score), ...]``.
PersonDetector = Callable[[np.ndarray], list[tuple[Box, float]]]


class DetectError(ValueError):
    """Bad detection input (no boxes for a video, keyframes outside it, wrong weights). ``str()`` is one line."""


@dataclass
class PersonBox:
    """One person box on one keyframe.

    ``timestamp`` is the keyframe as written (file) or formatted
    (:func:`~videoapp.data.ava.format_timestamp`), ``box`` ``(x1, y1, x2, y2)``
    normalised to the frame, ``score`` the person detector's confidence
    (``None`` for given boxes), ``person_id`` the track id.
    """

    timestamp: str
    box: Box
    score: float | None = None
    person_id: int | None = None

    @property
    def seconds(self) -> float:
        """Keyframe time in seconds (as written, before any ``time_offset``)."""
        return float(self.timestamp)


@dataclass
class BoxActions:
    """A person box and its action probabilities ``scores`` ``[num_actions]`` (sigmoid, float32)."""

    person: PersonBox
    scores: np.ndarray = field(repr=False)


@dataclass
class VideoDetections:
    """Result for one video: every scored box, in keyframe then box order.

    ``video_id`` is the file name without extension (the AVA ``video_id``);
    ``labels`` the action names (index ``i`` is action id ``i + 1``).
    """

    video: str
    video_id: str
    model: str
    labels: list[str]
    fps: float
    num_frames: int
    boxes: list[BoxActions] = field(default_factory=list)
    keyframes: list[str] = field(default_factory=list)

    def rows(self, threshold: float = 0.0) -> list[AVARow]:
        """AVA detection rows, one per (box, action) with ``score >= threshold``, action ids ascending."""
        out = []
        for b in self.boxes:
            p = b.person
            for i in np.flatnonzero(b.scores >= threshold):
                out.append(AVARow(self.video_id, p.timestamp, p.box, int(i) + 1, p.person_id, float(b.scores[i])))
        return out

    def box_rows(self) -> list[AVARow]:
        """One row per box without an action (``score`` = the person detector's), e.g. for JSON output."""
        return [AVARow(self.video_id, b.person.timestamp, b.person.box, None, b.person.person_id, b.person.score)
                for b in self.boxes]

    def label_map(self) -> dict[int, str]:
        """``{action id: name}`` (ids 1-based)."""
        return {i + 1: name for i, name in enumerate(self.labels)}


# --------------------------------------------------------------------------- person boxes
def read_person_boxes(path: str | os.PathLike) -> list[AVARow]:
    """Person boxes from an AVA CSV (``*.csv``, any of its box layouts) or our JSON box format (``*.json``)."""
    if Path(path).suffix.lower() == ".json":
        return read_boxes_json(path)
    return read_ava_csv(path, kind="boxes")


def _clip_box(box: Sequence[float]) -> Box:
    return tuple(min(max(float(v), 0.0), 1.0) for v in box)  # type: ignore[return-value]


def _iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    from torchvision.ops import box_iou

    if not a or not b:
        return np.zeros((len(a), len(b)))
    return box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).numpy()


def link_person_ids(keyframes: Sequence[Sequence[Box]], iou_threshold: float = 0.3, max_gap: int = 1) -> list[list[int]]:
    """Give boxes on successive keyframes person ids by IoU: ``ids[k][j]`` for box ``j`` of keyframe ``k``.

    Each box is matched to a track whose last box (seen at most ``max_gap``
    keyframes before the previous one, i.e. a person may be missed on
    ``max_gap`` keyframes) overlaps it by IoU ``>= iou_threshold``; pairs are
    taken greedily, highest IoU first, one box per track. Unmatched boxes
    start new tracks; ids count from 0 in order of appearance.
    """
    tracks: list[tuple[int, Box, int]] = []  # (id, last box, keyframe of the last box)
    next_id = 0
    out: list[list[int]] = []
    for k, boxes in enumerate(keyframes):
        live = [t for t in tracks if k - t[2] <= max_gap + 1]
        iou = _iou_matrix(list(boxes), [t[1] for t in live])
        ids = [-1] * len(boxes)
        taken: set[int] = set()
        if iou.size:
            order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape))[0]
            for j, t in order:
                if iou[j, t] < iou_threshold:
                    break
                if ids[j] == -1 and t not in taken:
                    ids[j] = live[t][0]
                    taken.add(int(t))
        for j in range(len(boxes)):
            if ids[j] == -1:
                ids[j] = next_id
                next_id += 1
        by_id = {t[0]: t for t in tracks}
        for j, box in enumerate(boxes):
            by_id[ids[j]] = (ids[j], tuple(box), k)
        tracks = list(by_id.values())
        out.append(ids)
    return out


class HOGPersonDetector:
    """OpenCV's built-in HOG + linear SVM people detector (Dalal & Triggs; no downloads).

    Weak: it finds upright, mostly unoccluded people at least 128 px tall (its
    64 x 128 window; frames under ``min_height`` px are upscaled first), and
    misses sitting, lying, partly visible or small people. Its score is the
    SVM margin (about 0 to 3, not a probability). Call it on a uint8 RGB frame
    ``[H, W, 3]``; returns ``[(box normalised, score), ...]``, boxes rounded to
    4 decimals and clipped to the frame.
    """

    def __init__(self, win_stride: int = 8, scale: float = 1.05, min_height: int = 256) -> None:
        import cv2

        self._cv2 = cv2
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.win_stride = (int(win_stride), int(win_stride))
        self.scale = float(scale)
        self.min_height = int(min_height)

    def __call__(self, frame: np.ndarray) -> list[tuple[Box, float]]:
        h, w = frame.shape[:2]
        img = np.ascontiguousarray(frame)
        if h < self.min_height:
            f = self.min_height / h
            img = self._cv2.resize(img, (round(w * f), self.min_height), interpolation=self._cv2.INTER_LINEAR)
        ih, iw = img.shape[:2]
        rects, weights = self.hog.detectMultiScale(img, winStride=self.win_stride, padding=(8, 8), scale=self.scale)
        out = []
        for (x, y, rw, rh), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            box = _clip_box((x / iw, y / ih, (x + rw) / iw, (y + rh) / ih))
            out.append((tuple(round(v, 4) for v in box), float(s)))
        return out


class TorchvisionPersonDetector:
    """A torchvision detection model (``fasterrcnn_resnet50_fpn_v2``, ...) with the user's weights file.

    The model is built with ``weights=None, weights_backbone=None`` (nothing is
    downloaded) and loaded strictly from ``weights`` (a ``.pth`` state dict or
    ``.safetensors``). Boxes of class ``person_label`` (1: person in the COCO
    label set torchvision's detectors use) are returned as
    ``[(box normalised, score), ...]``, rounded to 4 decimals.
    """

    def __init__(self, name: str, weights: str | os.PathLike, device: str = "cpu", person_label: int = 1) -> None:
        from torchvision.models import detection, get_model_builder, list_models

        from videoapp.models.pretrained import load_raw_checkpoint
        from videoapp.weights import CheckpointError

        known = list_models(module=detection)
        if name not in known:
            raise DetectError(f"unknown torchvision detector '{name}' (known: {', '.join(known)})")
        model = get_model_builder(name)(weights=None, weights_backbone=None)
        state, _ = load_raw_checkpoint(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{weights}: not weights of torchvision {name} (missing {len(missing)} keys, e.g. "
                                  f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})")
        self.name = name
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.person_label = int(person_label)

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray) -> list[tuple[Box, float]]:
        h, w = frame.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).to(self.device, torch.float32).div_(255.0)
        result = self.model([x])[0]
        keep = result["labels"] == self.person_label
        out = []
        for box, s in zip(result["boxes"][keep].tolist(), result["scores"][keep].tolist()):
            b = _clip_box((box[0] / w, box[1] / h, box[2] / w, box[3] / h))
            out.append((tuple(round(v, 4) for v in b), float(s)))
        return out


def make_person_detector(spec: str, weights: str | os.PathLike | None = None, device: str = "cpu") -> PersonDetector:
    """``"hog"`` or ``"torchvision:NAME"`` (with ``weights``) -> a :data:`PersonDetector`."""
    if spec == "hog":
        return HOGPersonDetector()
    if spec.startswith("torchvision:"):
        if weights is None:
            raise DetectError(f"--detector {spec} needs --detector-weights FILE (torchvision weights are never downloaded)")
        if not Path(weights).is_file():
            raise DetectError(f"{weights}: no such weights file")
        return TorchvisionPersonDetector(spec.split(":", 1)[1], weights, device=device)
    raise DetectError(f"unknown person detector '{spec}' (hog or torchvision:NAME)")


def default_detector_weights() -> Path | None:
    """The shipped detector weights file, or ``None`` when it is missing."""
    from videoapp.weights import WEIGHTS_DIR

    path = WEIGHTS_DIR / DEFAULT_DETECTOR_WEIGHTS_NAME
    return path if path.is_file() else None


# --------------------------------------------------------------------------- clips
def keyframe_clip_indices(centre: int, num_frames: int, sampling_rate: int, num_video_frames: int) -> np.ndarray:
    """Frames of the clip centred on frame ``centre`` (SlowFast's AVA ``get_sequence``).

    ``centre - num_frames * sampling_rate // 2 + k * sampling_rate`` for
    ``k = 0..num_frames-1``, clamped to ``[0, num_video_frames - 1]`` (the
    clip repeats the first/last frame near the ends). Returns ``np.int64 [num_frames]``.
    """
    start = int(centre) - (num_frames * sampling_rate) // 2
    idx = start + np.arange(num_frames, dtype=np.int64) * sampling_rate
    return np.clip(idx, 0, num_video_frames - 1)


def keyframe_index(seconds: float, fps: float, num_video_frames: int) -> int:
    """The frame shown at ``seconds`` (video time) at ``fps``: ``round(seconds * fps)`` clamped to the video."""
    return min(max(int(round(seconds * fps)), 0), num_video_frames - 1)


# --------------------------------------------------------------------------- the detector
class DetectionPredictor:
    """Runs an action detector over videos and person boxes.

    ``model_or_weights``: an :class:`~videoapp.models.detector.ActionDetector`
    from :func:`videoapp.create_model` (labels and clip protocol in its ``pretrained_cfg``), a
    path to detection weights (``task: detection`` in the metadata), or an
    exported detector (``.onnx`` from ``videoapp export``, run by onnxruntime;
    its graph takes ``crop_size`` x ``crop_size`` frames, so every backbone then
    sees the frame resized to that square, as Hiera's always does).
    ``batch_size`` keyframe clips go through the model at once; ``bf16`` runs
    under bf16 autocast.
    """

    def __init__(self, model_or_weights: nn.Module | str | os.PathLike, *, model_name: str | None = None,
                 device: str = "cpu", bf16: bool = False, batch_size: int = 4) -> None:
        from videoapp.engine.predict import resolve_weights_model
        from videoapp.models.detector import ActionDetector
        from videoapp.models import create_model, get_model_entry, get_pretrained_cfg
        from videoapp.models.export import OnnxModel

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no CUDA device is available")
        if isinstance(model_or_weights, nn.Module):
            model = model_or_weights
        elif Path(model_or_weights).suffix.lower() == ".onnx":
            # An exported detector ('videoapp export'): onnxruntime, protocol and labels from the file's metadata.
            model = OnnxModel(model_or_weights)
            if not model.detector:
                raise DetectError(f"{model_or_weights}: an exported classifier; detection needs an exported "
                                  "action detector (a *_ava model)")
        else:
            name = resolve_weights_model(model_or_weights, model_name)
            if get_model_entry(name).data.get("task") != "detection":
                raise DetectError(f"{model_or_weights}: weights of the classifier '{name}'; detection needs "
                                  "detection weights (a *_ava model, task: detection)")
            model = create_model(name, pretrained=str(model_or_weights))
        onnx = isinstance(model, OnnxModel) and model.detector
        if not isinstance(model, ActionDetector) and not onnx:
            raise DetectError(f"{type(model).__name__} is not an action detector (a *_ava model)")
        cfg = get_pretrained_cfg(model)
        self.model = model.eval().to(device)
        self.model_name = cfg.model_name
        self.num_frames = cfg.num_frames
        self.sampling_rate = cfg.sampling_rate
        self.crop_size = cfg.crop_size
        self.mean = list(cfg.mean)
        self.std = list(cfg.std)
        self.channel_order = cfg.channel_order
        # A backbone with position embeddings of one size (Hiera) takes crop x crop frames only, and so
        # does an exported graph (tracing fixes its input size: crop x crop, see models/export.py).
        self.fixed_size = onnx or getattr(model.backbone, "input_size", None) is not None
        n = model.num_classes
        self.labels = list(cfg.labels) if cfg.labels else [f"action_{i + 1}" for i in range(n)]
        self.device = torch.device(device)
        self.bf16 = bf16
        self.batch_size = max(1, int(batch_size))

    # -- preprocessing ------------------------------------------------------
    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames ``[T, H, W, 3]`` -> normalised float32 ``[3, T, H_in, W_in]`` (the whole frame).

        Short side to ``crop_size`` (long side ``floor(long / short * crop_size)``,
        SlowFast's AVA test scale), or exactly ``crop_size`` x ``crop_size`` for
        a fixed-size backbone; bilinear without antialiasing, as the
        classification transforms.
        """
        clip = to_tensor(frames)
        if self.fixed_size:
            # [C, T, H, W] read as a batch of C images with T channels: per-plane bilinear.
            clip = F.interpolate(clip, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False)
        else:
            clip = resize_short_side(clip, self.crop_size)
        if self.channel_order == "bgr":
            clip = clip.flip(0)
        return normalize(clip, self.mean, self.std)

    @staticmethod
    def pixel_boxes(boxes: Sequence[Box], batch_index: int, input_hw: tuple[int, int]) -> torch.Tensor:
        """Normalised boxes -> ``[K, 5]`` rows ``[batch_index, x1, y1, x2, y2]`` in input pixels."""
        h, w = input_hw
        t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * torch.tensor([w, h, w, h], dtype=torch.float32)
        return torch.cat([torch.full((t.shape[0], 1), float(batch_index)), t], dim=1)

    @torch.inference_mode()
    def score_clips(self, clips: Iterable[tuple[np.ndarray, Sequence[Box]]]) -> Iterator[np.ndarray]:
        """For each ``(frames [T, H, W, 3], boxes)`` yield the sigmoid scores ``[len(boxes), num_actions]``."""
        batch: list[tuple[torch.Tensor, Sequence[Box]]] = []

        def flush() -> list[np.ndarray]:
            x = torch.stack([c for c, _ in batch]).to(self.device)
            rois = torch.cat([self.pixel_boxes(b, i, tuple(x.shape[-2:])) for i, (_, b) in enumerate(batch)]).to(self.device)
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
            with autocast:
                logits = self.model(x, rois)
            probs = logits.float().sigmoid().cpu().numpy()
            sizes = np.cumsum([len(b) for _, b in batch])[:-1]
            batch.clear()
            return np.split(probs, sizes)

        for frames, boxes in clips:
            batch.append((self.preprocess(frames), boxes))
            if len(batch) == self.batch_size:
                yield from flush()
        if batch:
            yield from flush()

    # -- one video ------------------------------------------------------------
    def _given_boxes(self, rows: Sequence[AVARow], video_id: str, path: str, box_threshold: float) -> dict[str, list[PersonBox]]:
        mine = [r for r in rows if r.video_id == video_id]
        boxed = unique_boxes(mine)
        if not boxed:
            others = sorted({r.video_id for r in rows})
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise DetectError(f"{path}: the box file has no box for video '{video_id}' "
                              f"(its videos: {shown or 'none'})")
        clipped = dropped = 0
        out: dict[str, list[PersonBox]] = {}
        for r in mine:  # keyframes listed without boxes stay keyframes (with no rows)
            out.setdefault(canonical_timestamp(r.timestamp), [])
        for r in boxed:
            if r.score is not None and r.score < box_threshold:
                continue
            box = _clip_box(r.box)  # type: ignore[arg-type]
            if box != tuple(r.box):  # type: ignore[arg-type]
                clipped += 1
                if box[2] <= box[0] or box[3] <= box[1]:
                    dropped += 1
                    continue
            out[canonical_timestamp(r.timestamp)].append(PersonBox(r.timestamp, box, r.score, r.person_id))
        if clipped:
            gone = f" ({dropped} wholly outside, dropped)" if dropped else ""
            logger.warning("warning: %s: %d box%s outside the frame clipped to it%s", video_id, clipped,
                           "es" if clipped > 1 else "", gone)
        return out

    def _detected_boxes(self, reader: VideoReader, detector: PersonDetector, times: Sequence[float],
                        box_threshold: float, bar) -> dict[str, list[PersonBox]]:
        info = reader.info
        out: dict[str, list[PersonBox]] = {}
        chunk = 16  # keyframe frames decoded at once (bounded memory on long videos)
        for c in range(0, len(times), chunk):
            part = times[c:c + chunk]
            frames = reader.get_frames([keyframe_index(t, info.fps, info.num_frames) for t in part])
            for t, frame in zip(part, frames):
                ts = format_timestamp(t)
                out[canonical_timestamp(ts)] = [PersonBox(ts, box, score) for box, score in detector(frame)
                                                if score >= box_threshold]
            bar.update(len(part))
        return out

    def detect(
        self,
        path: str | os.PathLike,
        boxes: Sequence[AVARow] | None = None,
        person_detector: PersonDetector | None = None,
        *,
        keyframe_fps: float = 1.0,
        box_threshold: float = DEFAULT_BOX_THRESHOLD,
        time_offset: float = 0.0,
        progress: bool | None = None,
    ) -> VideoDetections:
        """Score every person box of the video at ``path``.

        Boxes come from ``boxes`` (rows read from a box file; those of this
        video, ``video_id`` = file name without extension) or from
        ``person_detector`` run on keyframes every ``1 / keyframe_fps`` s.
        ``time_offset`` (seconds) is subtracted from file timestamps to get
        the video time (900 for AVA's trimmed 15-minute clips; detected
        keyframes are video times already). Raises
        :class:`DetectError` (no boxes for the video, a keyframe outside it)
        or :class:`~videoapp.data.video.VideoError`.
        """
        from tqdm import tqdm

        if (boxes is None) == (person_detector is None):
            raise ValueError("give either boxes or a person_detector")
        path = os.fspath(path)
        video_id = Path(path).stem
        disable = None if progress is None else not progress
        with VideoReader(path) as reader:
            info = reader.info
            n = info.num_frames
            if boxes is not None:
                per_kf = self._given_boxes(boxes, video_id, path, box_threshold)
                offset = float(time_offset)
            else:
                times = keyframe_times(0.0, (n - 1) / info.fps, keyframe_fps)
                with tqdm(total=len(times), desc=f"{Path(path).name} persons", unit="kf", disable=disable,
                          leave=False) as bar:
                    per_kf = self._detected_boxes(reader, person_detector, times, box_threshold, bar)  # type: ignore[arg-type]
                offset = 0.0
            keys = sorted(per_kf, key=float)
            last_s = (n - 1) / info.fps
            for k in keys:
                t = float(k) - offset
                if t < -0.5 / info.fps or t > last_s + 0.5 / info.fps:
                    raise DetectError(f"{path}: keyframe {k} s (video time {t:g} s) is outside the video "
                                      f"(0-{last_s:.3f} s; AVA 15-minute clips need --time-offset 900)")
            # Person ids: kept when the file gives every box one, else linked by IoU.
            all_boxes = [b for k in keys for b in per_kf[k]]
            if not all_boxes or any(b.person_id is None for b in all_boxes):
                ids = link_person_ids([[b.box for b in per_kf[k]] for k in keys])
                for k, kid in zip(keys, ids):
                    for b, i in zip(per_kf[k], kid):
                        b.person_id = i
            result = VideoDetections(video=path, video_id=video_id, model=self.model_name, labels=self.labels,
                                     fps=info.fps, num_frames=n, keyframes=[per_kf[k][0].timestamp if per_kf[k] else k for k in keys])
            work = [k for k in keys if per_kf[k]]
            windows = []
            for k in work:
                centre = keyframe_index(float(k) - offset, info.fps, n)
                idx = keyframe_clip_indices(centre, self.num_frames, self.sampling_rate, n)
                windows.append(Window(float(idx[0]) / info.fps, float(idx[-1] + 1) / info.fps, idx))
            bar = tqdm(total=len(work), desc=Path(path).name, unit="kf", disable=disable, leave=False)

            def clips() -> Iterator[tuple[np.ndarray, list[Box]]]:
                for k, (_, clip) in zip(work, iter_window_clips(reader, windows)):
                    yield clip, [b.box for b in per_kf[k]]
                    bar.update(1)

            try:
                for k, scores in zip(work, self.score_clips(clips())):
                    result.boxes.extend(BoxActions(b, s) for b, s in zip(per_kf[k], scores))
            finally:
                bar.close()
        return result


# --------------------------------------------------------------------------- overlay video
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190)]


def write_overlay(out: str | os.PathLike, det: VideoDetections, threshold: float = 0.5, top: int = 3,
                  keyframe_fps: float = 1.0, time_offset: float = 0.0, progress: bool | None = None) -> Path:
    """Write the video with its boxes, person ids and actions drawn, as H.264 ``.mp4`` (PyAV).

    Each frame shows the boxes of the nearest keyframe within half a keyframe
    interval (``0.5 / keyframe_fps`` s), labelled ``#id`` and up to ``top``
    actions scoring at least ``threshold``. Frames keep the video's size
    (padded by one pixel to even sides for H.264) and frame rate.
    """
    import cv2
    from tqdm import tqdm

    from videoapp.data.synthetic import write_video

    by_kf: dict[str, list[BoxActions]] = {}
    for b in det.boxes:
        by_kf.setdefault(canonical_timestamp(b.person.timestamp), []).append(b)
    kf_times = np.array(sorted(float(k) - time_offset for k in by_kf)) if by_kf else np.zeros(0)
    kf_keys = sorted(by_kf, key=float)
    half = 0.5 / keyframe_fps

    def frames() -> Iterator[np.ndarray]:
        with VideoReader(det.video) as reader, tqdm(total=reader.info.num_frames, desc="overlay", unit="frame",
                                                    disable=None if progress is None else not progress, leave=False) as bar:
            for i, frame in reader.iter_frames():
                h, w = frame.shape[:2]
                img = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                t = i / det.fps
                if kf_times.size:
                    j = int(np.argmin(np.abs(kf_times - t)))
                    if abs(kf_times[j] - t) <= half + 1e-9:
                        for b in by_kf[kf_keys[j]]:
                            draw_box(cv2, img, b, det.labels, threshold, top, w, h)
                bar.update(1)
                yield img

    return write_video(out, frames(), fps=det.fps)


def draw_box(cv2, img: np.ndarray, b: BoxActions, labels: Sequence[str], threshold: float, top: int, w: int, h: int) -> None:
    """Draw one person's box and its ``top`` actions scoring ``>= threshold`` onto ``img`` in place.

    ``cv2``: the OpenCV module (imported by the caller, an optional dependency);
    ``img``: uint8 ``[h, w, 3]`` frame of ``w`` x ``h`` pixels; ``b.person.box``:
    normalised ``(x1, y1, x2, y2)`` in ``[0, 1]``; ``labels``: class names by score index.
    The colour and the ``#id`` tag follow the person id (0 when untracked).
    """
    x1, y1, x2, y2 = b.person.box
    p1, p2 = (int(round(x1 * (w - 1))), int(round(y1 * (h - 1)))), (int(round(x2 * (w - 1))), int(round(y2 * (h - 1))))
    pid = b.person.person_id if b.person.person_id is not None else 0
    colour = _PALETTE[pid % len(_PALETTE)]
    thick = max(1, round(min(w, h) / 240))
    cv2.rectangle(img, p1, p2, colour, thick)
    order = [int(i) for i in np.argsort(-b.scores, kind="stable")[:top] if b.scores[i] >= threshold]
    lines = [f"#{pid}"] + [f"{labels[i]} {b.scores[i]:.2f}" for i in order]
    scale = max(0.35, min(w, h) / 720)
    y = p1[1] + 2
    for text in lines:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y0 = min(max(y, 0), h - th - base)
        cv2.rectangle(img, (p1[0], y0), (p1[0] + tw + 2, y0 + th + base), colour, -1)
        cv2.putText(img, text, (p1[0] + 1, y0 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        y = y0 + th + base + 1
