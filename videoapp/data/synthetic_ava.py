"""Generated AVA-format data: objects cut from real photographs, each moving on its own, for action detection.

A scene is a short video (3 s at 30 fps by default) of a background (a
photograph or procedural texture from :mod:`videoapp.data.synthetic`, still or
filmed by a slowly moving camera) with 1-3 objects cut out of other pictures
(ellipses, rounded and plain rectangles) moving over it at once. Every object
is a "person" in AVA terms: its box on each keyframe (1 fps, seconds ``1 ..
duration - 1``) is labelled with *its own* on-screen motion, several actions
when several hold (:data:`MOTIONS`, action ids 1-8 in that order):

==============  ===============================================================
``move_left``   the object's centre moves left across the frame
``move_right``  ... right
``move_up``     ... up
``move_down``   ... down
``approach``    the object grows (comes closer)
``recede``      the object shrinks
``rotate``      the object turns (either way)
``still``       none of the above (a little hand-held wobble at most)
==============  ===============================================================

A moving object moves at most along one axis and may also grow or shrink and
turn, so ``move_left`` + ``approach`` happens; ``still`` never comes with
another action. Motions are constant over a scene, clearly above the
threshold that separates them from ``still`` (translation 0.5-0.9 % of the
frame's short side per frame, scale 1.2-2.2 %/frame (:data:`SCALE_SPEED`),
rotation 2-4 degrees/frame: :data:`ROTATION_SPEED`). Object heights (10-100 % of the short side over
a scene, at most half of it mid-scene: :data:`SIZE_RANGE`), positions,
overlaps (boxes of two objects overlap by IoU <= 0.3 on every keyframe, so
they may occlude each other partly), speeds, directions (within 8 degrees of
the axis), the background and its camera motion (a quarter of the scenes), and
photometric changes (gamma, contrast, noise) are random. A box is the extent
of the object's whole silhouette in the frame (occluded parts included,
clipped to the frame).

Seeds and splits follow :mod:`videoapp.data.synthetic`: scene ``i`` of split
``s`` with seed ``k`` depends only on ``(s, k, i)``; the ``train`` split draws
backgrounds and objects from the training pictures, ``test`` from the
held-out ones, so held-out scenes never show a training picture.

:func:`write_ava_scenes` writes a dataset the way AVA is distributed: H.264
clips ``videos/<video_id>.mp4``, a ground-truth CSV (8 columns, ``person_id``
= object id), a ``.pbtxt`` label map and a keyframe list. ``python -m
videoapp.data.synthetic_ava OUT --videos N`` does the same from the shell.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from videoapp.data.ava import AVARow, format_timestamp, write_ava_csv, write_label_map
from videoapp.data.synthetic import SPLITS, _photometric, _picture, _placement, _sample, motion_segment, source_images, write_video

__all__ = [
    "MOTIONS",
    "SCALE_SPEED",
    "SIZE_RANGE",
    "ROTATION_SPEED",
    "ROTATE_PROBABILITY",
    "ObjectTrack",
    "Scene",
    "label_map",
    "render_scene",
    "write_ava_scenes",
    "AVAScenes",
]

#: Action names; action id ``i + 1`` is ``MOTIONS[i]``.
MOTIONS: tuple[str, ...] = ("move_left", "move_right", "move_up", "move_down", "approach", "recede", "rotate", "still")

_TAG = {"train": 21, "test": 22}
_SIZES = ((72, 96), (96, 128), (120, 160))  # (height, width): 4:3, so every clip resizes to one input size
#: Growth/shrink rate of approaching/receding objects (log size per frame) and object heights over a
#: scene (fractions of the frame's short side). Version 1 (the data of the first two training stages in
#: weights/README.md) used (0.006, 0.015) and (0.14, 0.75): at 64 px, an edge of a mid-sized object moved
#: only 2-5 px in the detector's 1 s clip, against 9-16 px for translations.
SCALE_SPEED = (0.012, 0.022)
SIZE_RANGE = (0.1, 1.0)
#: Turning rate of rotating objects (degrees per frame) and the chance that an object turns. Versions 1-2
#: used (1, 3) and 0.2: at the low end an edge of a small object moved 3 px in the detector's 1 s clip,
#: and `rotate` stayed the weakest action (AP 0.2); version 3 turns at least 60 degrees per second.
ROTATION_SPEED = (2.0, 4.0)
ROTATE_PROBABILITY = 0.3
_DIRECTIONS = {"move_left": math.pi, "move_right": 0.0, "move_up": -math.pi / 2, "move_down": math.pi / 2}


def label_map() -> dict[int, str]:
    """``{action id: name}`` of :data:`MOTIONS` (ids 1-8)."""
    return {i + 1: m for i, m in enumerate(MOTIONS)}


@dataclass
class ObjectTrack:
    """One object of a scene and where it is on every frame.

    ``actions``: its labels (names from :data:`MOTIONS`); ``boxes``: float64
    ``[num_frames, 4]`` ``(x1, y1, x2, y2)`` normalised to the frame (its
    silhouette's extent, clipped; NaN on frames where none of it is visible);
    ``centre`` ``[num_frames, 2]`` (x, y in pixels), ``half_height``
    ``[num_frames]`` (pixels) and ``angle`` ``[num_frames]`` (radians) the
    path it was drawn along, from which its actions were decided.
    """

    object_id: int
    actions: tuple[str, ...]
    boxes: np.ndarray = field(repr=False)
    centre: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2)))
    half_height: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    angle: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


@dataclass
class Scene:
    """A rendered scene: uint8 frames ``[T, H, W, 3]``, its objects, ``fps`` and keyframe times (s)."""

    frames: np.ndarray = field(repr=False)
    objects: list[ObjectTrack]
    fps: float
    keyframes: list[float]

    def rows(self, video_id: str) -> list[AVARow]:
        """Ground-truth rows (one per keyframe, object and action; ``person_id`` = object id)."""
        out = []
        for t in self.keyframes:
            k = int(round(t * self.fps))
            ts = format_timestamp(t)
            for obj in self.objects:
                box = obj.boxes[k]
                if not np.all(np.isfinite(box)):
                    continue
                b = tuple(float(v) for v in box)
                for a in obj.actions:
                    out.append(AVARow(video_id, ts, b, MOTIONS.index(a) + 1, obj.object_id))
        return out


# --------------------------------------------------------------------------- objects
def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _sample_actions(rng: np.random.Generator) -> tuple[str | None, str | None, bool]:
    """(direction or None, "approach"/"recede" or None, rotates)."""
    u = rng.uniform()
    direction = None if u < 0.4 else ("move_left", "move_right", "move_up", "move_down")[int((u - 0.4) / 0.15)]
    v = rng.uniform()
    scale = None if v < 0.6 else ("approach" if v < 0.8 else "recede")
    return direction, scale, bool(rng.uniform() < ROTATE_PROBABILITY)


def _sprite(split: str, rng: np.random.Generator, exclude: int):
    """An object cut from a picture: float32 RGBA ``[4, S, S']`` (0-255 colour, alpha 0-1)."""
    import torch
    import torch.nn.functional as F

    images = source_images(split)
    n = len(images)
    idx = int(rng.integers(0, n - 1))
    idx = idx + 1 if idx >= exclude else idx  # never the background picture
    img = images[idx]
    h, w = img.shape[:2]
    aspect = _log_uniform(rng, 0.6, 1.6)  # width / height
    side = int(rng.integers(min(h, w) // 5, min(h, w) // 2 + 1))
    ch, cw = side, min(w, max(8, int(side * aspect)))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = torch.from_numpy(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])).permute(2, 0, 1)[None].float()
    sh = 64
    sw = max(8, int(round(sh * cw / ch)))
    rgb = F.interpolate(crop, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)[0]
    # Contrast with the background: objects are a little brighter/darker and more saturated at random.
    rgb = (rgb - 127.5) * rng.uniform(0.8, 1.4) + 127.5 + rng.uniform(-40, 40)
    yy = (torch.arange(sh, dtype=torch.float32) + 0.5) / sh * 2 - 1
    xx = (torch.arange(sw, dtype=torch.float32) + 0.5) / sw * 2 - 1
    yy, xx = yy.view(-1, 1), xx.view(1, -1)
    shape = rng.choice(["ellipse", "rounded", "rect"])
    if shape == "ellipse":
        alpha = (xx * xx + yy * yy <= 1).float()
    elif shape == "rounded":
        r = 0.4
        dx, dy = (xx.abs() - (1 - r)).clamp(min=0), (yy.abs() - (1 - r)).clamp(min=0)
        alpha = ((dx * dx + dy * dy) <= r * r).float()
    else:
        alpha = torch.ones(sh, sw)
    if rng.uniform() < 0.5:  # an outline, as objects often have against a background
        edge = F.max_pool2d(1 - alpha[None, None], 5, stride=1, padding=2)[0, 0] * alpha
        rgb = rgb * (1 - edge) + edge * float(rng.choice([0.0, 255.0]))
    return torch.cat([rgb.clamp(0, 255), alpha[None]], dim=0)


@dataclass
class _Motion:
    cx: np.ndarray      # centre x per frame (px)
    cy: np.ndarray
    half: np.ndarray    # half-height per frame (px)
    angle: np.ndarray   # radians


def _object_motion(direction: str | None, scale: str | None, rotates: bool, t: np.ndarray, height: int, width: int,
                   rng: np.random.Generator, scale_speed: tuple[float, float] = SCALE_SPEED,
                   size_range: tuple[float, float] = SIZE_RANGE) -> _Motion | None:
    """A constant motion at frame offsets ``t`` (centred on the scene's middle) that keeps the centre in view."""
    short = min(height, width)
    span = float(t.max() - t.min())
    z = 0.0
    if scale is not None:
        z = _log_uniform(rng, *scale_speed) * (1 if scale == "approach" else -1)
    half_t = float(np.abs(t).max())
    # Object height over the whole scene within size_range (fractions of the short side).
    lo, hi = size_range[0] * math.exp(abs(z) * half_t), size_range[1] * math.exp(-abs(z) * half_t)
    hi = min(hi, 0.5)
    if lo > hi:
        return None
    size = _log_uniform(rng, lo, hi) * short
    v, d = 0.0, 0.0
    if direction is not None:
        v = _log_uniform(rng, 0.005, 0.009) * short
        d = _DIRECTIONS[direction] + math.radians(rng.uniform(-8, 8))
    vx, vy = v * math.cos(d), v * math.sin(d)
    margin = 0.1 * short
    # The centre stays in view over the whole scene: middle position range.
    x_lo, x_hi = margin - min(vx * t.min(), vx * t.max()), width - margin - max(vx * t.min(), vx * t.max())
    y_lo, y_hi = margin - min(vy * t.min(), vy * t.max()), height - margin - max(vy * t.min(), vy * t.max())
    if x_lo > x_hi or y_lo > y_hi or span <= 0:
        return None
    x0, y0 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
    w = math.radians(_log_uniform(rng, *ROTATION_SPEED)) * (1 if rng.uniform() < 0.5 else -1) if rotates else 0.0
    # Hand-held wobble: sub-threshold, zero-mean.
    wob = short * rng.uniform(0, 0.003)
    ph = rng.uniform(0, 2 * np.pi, size=2)
    f = rng.uniform(0.05, 0.2, size=2)
    cx = x0 + vx * t + wob * np.sin(f[0] * t + ph[0])
    cy = y0 + vy * t + wob * np.sin(f[1] * t + ph[1])
    half = 0.5 * size * np.exp(z * t)
    angle = rng.uniform(-0.3, 0.3) + w * t
    return _Motion(cx, cy, half, angle)


def _draw(sprite, m: _Motion, height: int, width: int):
    """The sprite along ``m``: float32 ``[T, 4, H, W]`` (premultiplied colour is not used: RGB, alpha)."""
    import torch
    import torch.nn.functional as F

    sh, sw = sprite.shape[1:]
    hh = m.half
    hw = m.half * sw / sh
    c, s = np.cos(m.angle), np.sin(m.angle)
    ox, oy = width / 2 - m.cx, height / 2 - m.cy
    theta = np.zeros((len(hh), 2, 3))
    # Output normalised coords -> sprite normalised coords: rotate by -angle about the centre, then scale.
    theta[:, 0, 0] = c * width / 2 / hw
    theta[:, 0, 1] = s * height / 2 / hw
    theta[:, 0, 2] = (c * ox + s * oy) / hw
    theta[:, 1, 0] = -s * width / 2 / hh
    theta[:, 1, 1] = c * height / 2 / hh
    theta[:, 1, 2] = (-s * ox + c * oy) / hh
    grid = F.affine_grid(torch.from_numpy(theta).float(), [len(hh), 4, height, width], align_corners=False)
    return F.grid_sample(sprite[None].expand(len(hh), -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _boxes(alpha, width: int, height: int) -> np.ndarray:
    """Normalised extent of ``alpha > 0.5`` per frame (``[T, H, W]`` tensor) -> ``[T, 4]`` (NaN when empty)."""
    a = (alpha > 0.5).numpy()
    out = np.full((a.shape[0], 4), np.nan)
    cols, rows = a.any(1), a.any(2)
    for k in range(a.shape[0]):
        xs, ys = np.flatnonzero(cols[k]), np.flatnonzero(rows[k])
        if xs.size and ys.size:
            out[k] = (xs[0] / width, ys[0] / height, (xs[-1] + 1) / width, (ys[-1] + 1) / height)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_scene(index: int, split: str = "train", seed: int = 0, *, fps: float = 30.0, seconds: int = 3,
                 size: tuple[int, int] | None = None, max_objects: int = 3,
                 scale_speed: tuple[float, float] = SCALE_SPEED, size_range: tuple[float, float] = SIZE_RANGE) -> Scene:
    """Scene ``index`` of ``split`` with ``seed``: ``seconds`` s of video, keyframes at ``1 .. seconds - 1`` s.

    ``size`` is ``(height, width)`` (default: one of 72x96, 96x128, 120x160
    at random); ``scale_speed`` and ``size_range`` as :data:`SCALE_SPEED`,
    :data:`SIZE_RANGE`. Deterministic in ``(split, seed, index)`` and those.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seconds < 2:
        raise ValueError(f"a scene needs at least 2 s (keyframes at 1 s steps inside it), got {seconds}")
    rng = np.random.default_rng([_TAG[split], seed, index])
    height, width = size if size is not None else _SIZES[int(rng.integers(0, len(_SIZES)))]
    n = int(round(seconds * fps))
    frames_t = np.arange(n, dtype=np.float64)
    t = frames_t - (n - 1) / 2
    keyframes = [float(k) for k in range(1, seconds)]
    key_idx = [int(round(k * fps)) for k in keyframes]

    # Background: a picture, filmed still or by a slowly moving camera.
    images = source_images(split)
    bg_index = int(rng.integers(0, len(images)))
    bg_pic = _picture(split, bg_index)
    label = "static" if rng.uniform() < 0.75 else str(rng.choice(["pan_left", "pan_right", "tilt_up", "tilt_down",
                                                                   "zoom_in", "zoom_out"]))
    path = motion_segment(label, frames_t, min(height, width), rng, fps=fps, speed=0.4)
    frames = _sample(bg_pic, path, height, width, _placement(bg_pic, path, height, width, rng))

    count = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.30]))
    count = min(count, max_objects)
    objects: list[ObjectTrack] = []
    layers = []
    for obj_id in range(count):
        for _ in range(12):  # re-draw an object that would not fit or would cover another one too much
            direction, scale, rotates = _sample_actions(rng)
            motion = _object_motion(direction, scale, rotates, t, height, width, rng, scale_speed, size_range)
            if motion is None:
                continue
            sprite = _sprite(split, rng, bg_index)
            layer = _draw(sprite, motion, height, width)
            boxes = _boxes(layer[:, 3], width, height)
            if any(np.isnan(boxes[k]).any() for k in key_idx):
                continue
            if any(_iou(boxes[k], o.boxes[k]) > 0.3 for o in objects for k in key_idx):
                continue
            actions = tuple(a for a in (direction, scale, "rotate" if rotates else None) if a) or ("still",)
            objects.append(ObjectTrack(obj_id, actions, boxes, np.stack([motion.cx, motion.cy], axis=1),
                                       motion.half, motion.angle))
            layers.append(layer)
            break
    # Random depth order: later layers occlude earlier ones.
    for j in rng.permutation(len(layers)):
        a = layers[j][:, 3:4]
        frames = frames * (1 - a) + layers[j][:, :3] * a
    frames = _photometric(frames, rng)
    out = frames.round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return Scene(out, objects, fps, keyframes)


# --------------------------------------------------------------------------- datasets on disk
@dataclass
class AVAScenes:
    """Paths of a dataset written by :func:`write_ava_scenes`."""

    root: Path
    videos: list[Path]
    groundtruth: Path
    label_map: Path
    keyframes: Path


def write_ava_scenes(out_dir: str | os.PathLike, num_videos: int, *, split: str = "train", seed: int = 0,
                     fps: float = 30.0, seconds: int = 3, size: tuple[int, int] | None = None,
                     prefix: str | None = None, crf: int = 23, progress: bool = False,
                     scale_speed: tuple[float, float] = SCALE_SPEED,
                     size_range: tuple[float, float] = SIZE_RANGE) -> AVAScenes:
    """Render ``num_videos`` scenes into ``out_dir`` as an AVA-format dataset.

    Writes ``videos/<video_id>.mp4`` (H.264), ``groundtruth.csv`` (8 columns:
    ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id``; one row per
    keyframe, object and action), ``label_map.pbtxt`` (:data:`MOTIONS`, ids
    1-8) and ``keyframes.csv`` (every keyframe as ``video_id,timestamp``).
    ``video_id`` is ``<prefix>_<index>`` (prefix default ``<split>s<seed>``); ``seconds``,
    ``size`` (``(height, width)``, default random), ``scale_speed`` and ``size_range`` go to
    :func:`render_scene`.
    """
    from tqdm import tqdm

    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    prefix = prefix or f"{split}s{seed}"
    rows: list[AVARow] = []
    keys: list[AVARow] = []
    videos = []
    for i in tqdm(range(num_videos), desc=f"writing {split} scenes", unit="video", disable=not progress, leave=False):
        scene = render_scene(i, split, seed, fps=fps, seconds=seconds, size=size, scale_speed=scale_speed,
                             size_range=size_range)
        vid = f"{prefix}_{i:05d}"
        videos.append(write_video(root / "videos" / f"{vid}.mp4", scene.frames, fps=fps, crf=crf))
        rows.extend(scene.rows(vid))
        keys.extend(AVARow(vid, format_timestamp(t)) for t in scene.keyframes)
    write_ava_csv(root / "groundtruth.csv", rows, person_ids=True)
    write_ava_csv(root / "keyframes.csv", keys)
    return AVAScenes(root, videos, root / "groundtruth.csv", write_label_map(root / "label_map.pbtxt", label_map()),
                     root / "keyframes.csv")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m videoapp.data.synthetic_ava OUT --videos N [--split test] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m videoapp.data.synthetic_ava",
        description="Write generated action-detection data in AVA format: H.264 clips of objects moving over "
                    "a background, a ground-truth CSV (each object's box labelled with its own motion), "
                    "a .pbtxt label map and a keyframe list.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--videos", type=int, default=20, help="number of scenes (default 20)")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="source pictures (default test: held out from training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=3, help="scene length; keyframes at 1 .. seconds-1 s")
    args = parser.parse_args(argv)
    if args.videos < 1 or args.seconds < 2:
        parser.error("--videos must be >= 1 and --seconds >= 2")
    ds = write_ava_scenes(args.out, args.videos, split=args.split, seed=args.seed, seconds=args.seconds,
                          progress=True)
    print(f"wrote {len(ds.videos)} videos, {ds.groundtruth}, {ds.label_map}, {ds.keyframes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
