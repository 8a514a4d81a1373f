"""Generated clips: camera-motion training/test data for the shipped default models, and the demo clip.

Camera motion
-------------
A clip is made by moving a virtual camera (a crop window) over a still
picture: a real photograph shipped offline by scikit-image
(``skimage/data``) or a procedural texture. The ten labels follow the
*camera*, as cinematographers name the moves (:data:`CAMERA_MOTIONS`):

==============  =========================================================
``pan_left``    the camera turns left: the scene slides **right** across the frame
``pan_right``   the scene slides left
``tilt_up``     the camera tilts up: the scene slides **down**
``tilt_down``   the scene slides up
``zoom_in``     the scene **grows** (the window shrinks)
``zoom_out``    the scene shrinks
``rotate_cw``   the camera rolls clockwise: the scene turns **counter-clockwise**
``rotate_ccw``  the scene turns clockwise
``static``      a camera on a tripod (at most sub-pixel vibration)
``shake``       a hand-held camera: jitter with no net direction
==============  =========================================================

Speeds, start, direction wobble, easing, noise, brightness, colour, scale and
small independently moving objects are random. Optionally (``large_movers``,
a probability per clip, 0 by default) one or two large person-like figures
walk, wave or bend in the frame (:mod:`videoapp.data.synthetic_figures`),
whatever the camera does: the label still follows the camera only, so a
tripod shot of a walking person is ``static``. Everything is seeded:
clip ``i`` of a pool with seed ``s`` depends only on ``(s, i)``. Source
pictures are split: :data:`TRAIN_PHOTOS` and training texture seeds for
training, :data:`TEST_PHOTOS` and another texture-seed namespace for held-out
testing, so a test never sees a training picture.

Two ways out:

- :func:`generate_pool` renders the *sampled* frames of many clips straight
  into a uint8 array ``[N, T, S, S, 3]`` (a "pool"), preprocessed exactly as
  the :class:`~videoapp.engine.predict.Predictor` preprocesses a video (short
  side resized to ``round(S * 256 / 224)`` without antialiasing, centre crop
  ``S``) and sampled with the Predictor's frame-index formula. Training from a
  pool is much faster than generating on the fly or decoding files.
- :func:`write_camera_motion_videos` writes whole clips (every frame, at a
  video resolution) as real H.264 files in a class-per-folder tree, so the full
  decode path is exercised.

Label-swapping augmentations (:data:`TIME_REVERSE`, :data:`HFLIP`,
:data:`VFLIP`, :data:`TRANSPOSE`) map each label to the label of the
transformed clip; :func:`augment_clip` applies them.

``python -m videoapp.data.synthetic OUT.mp4`` writes the demo clip: a
sequence of camera moves over a held-out photograph, encoded as H.264.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

# Bump when the generator's output changes (invalidates cached pools).
GENERATOR_VERSION = 4

CAMERA_MOTIONS: tuple[str, ...] = (
    "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
    "rotate_cw", "rotate_ccw", "static", "shake",
)

_SWAP_DIRECTION = {
    "pan_left": "pan_right", "pan_right": "pan_left", "tilt_up": "tilt_down", "tilt_down": "tilt_up",
    "zoom_in": "zoom_out", "zoom_out": "zoom_in", "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw",
    "static": "static", "shake": "shake",
}
#: Label of a clip played backwards: every direction reverses.
TIME_REVERSE: dict[str, str] = dict(_SWAP_DIRECTION)
#: Label of a left-right mirrored clip: horizontal directions and the sense of rotation swap.
HFLIP: dict[str, str] = {
    **{m: m for m in CAMERA_MOTIONS},
    "pan_left": "pan_right", "pan_right": "pan_left", "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw",
}
#: Label of an upside-down mirrored clip: vertical directions and the sense of rotation swap.
VFLIP: dict[str, str] = {
    **{m: m for m in CAMERA_MOTIONS},
    "tilt_up": "tilt_down", "tilt_down": "tilt_up", "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw",
}
#: Label of a clip with x and y swapped (square frames): pans become tilts, rotation reverses.
TRANSPOSE: dict[str, str] = {
    **{m: m for m in CAMERA_MOTIONS},
    "pan_left": "tilt_up", "tilt_up": "pan_left", "pan_right": "tilt_down", "tilt_down": "pan_right",
    "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw",
}

# Real photographs in scikit-image's wheel (no download). The two splits never share a picture
# (motorcycle_left/right are one scene, both on the training side). Left out: pictures that are
# mostly flat (cell, color, phantom), tiny, synthetic or periodic (chessboard), or already
# motion-blurred (clock_motion): camera motion over them is barely visible.
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "coffee.png", "coins.png", "grass.png",
    "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "retina.jpg", "page.png", "text.png",
)
TEST_PHOTOS: tuple[str, ...] = ("chelsea.png", "rocket.jpg", "gravel.png")
SPLITS = ("train", "test")
# Procedural textures per split; their seeds live in separate namespaces.
_TEXTURES_PER_SPLIT = {"train": 24, "test": 8}
_SPLIT_TAG = {"train": 1, "test": 2}
_POOL_TAG = 11
_VIDEO_TAG = 12
_MOVERS_TAG = 13


# --------------------------------------------------------------------------- video writing
def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 30.0,
    codec: str = "libx264",
    crf: int = 23,
) -> Path:
    """Encode uint8 RGB frames ``[H, W, 3]`` (even H and W for H.264) into ``path`` with PyAV.

    Frames are consumed one at a time, so arbitrarily long videos use constant memory.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------- source pictures
def procedural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random smooth colour texture with sharp edges, uint8 ``[height, width, 3]``.

    Sums of random sinusoids plus a few rectangles: enough structure at every
    scale for motion to be visible.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.005, 0.06, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(fy * yy + fx * xx + phase)
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * 255
    for _ in range(12):
        h, w = rng.integers(height // 16, height // 4), rng.integers(width // 16, width // 4)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        img[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
    return img.astype(np.uint8)


def procedural_shapes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A cartoon-like scene: a colour gradient with many random ellipses and blobs, uint8 ``[H, W, 3]``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.cos(ang) * xx / width + np.sin(ang) * yy / height)
    g = (g - g.min()) / (np.ptp(g) + 1e-6)
    img = c0 * (1 - g[..., None]) + c1 * g[..., None]
    n = int(rng.integers(40, 90))
    for _ in range(n):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = rng.uniform(0.01, 0.12) * height
        rx = ry * rng.uniform(0.4, 2.5)
        th = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (np.cos(th) * dx + np.sin(th) * dy) / rx
        v = (-np.sin(th) * dx + np.cos(th) * dy) / ry
        inside = u * u + v * v <= 1.0
        img[inside] = rng.uniform(0, 255, size=3)
    noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _photo_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-image is not installed (it ships the photographs the generator uses)")
    return Path(spec.origin).parent / "data"


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A photograph from scikit-image's data folder as uint8 RGB ``[H, W, 3]`` (grey images replicated)."""
    from PIL import Image

    with Image.open(_photo_dir() / name) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr.setflags(write=False)
    return arr


@lru_cache(maxsize=8)
def source_images(split: str) -> tuple[np.ndarray, ...]:
    """All source pictures of ``split`` ("train" or "test"): its photographs, then its procedural scenes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    photos = TRAIN_PHOTOS if split == "train" else TEST_PHOTOS
    images = [load_photo(p) for p in photos]
    for k in range(_TEXTURES_PER_SPLIT[split]):
        rng = np.random.default_rng([_SPLIT_TAG[split], 7, k])
        make = procedural_texture if k % 2 == 0 else procedural_shapes
        img = make(384, 384, rng)
        img.setflags(write=False)
        images.append(img)
    return tuple(images)


def _num_photos(split: str) -> int:
    return len(TRAIN_PHOTOS if split == "train" else TEST_PHOTOS)


# --------------------------------------------------------------------------- camera paths
@dataclass
class CameraPath:
    """A camera trajectory sampled at frame times, relative to its start.

    Units: ``x``, ``y`` (window centre) are in output pixels at the start scale,
    image axes (x right, y down); ``log_scale`` is the log of the window size
    relative to the start (negative = smaller window = the scene grows);
    ``angle`` (radians) is the window's rotation in the picture, positive =
    clockwise on screen (y points down), which turns the scene
    *counter-clockwise* in the frame.
    """

    x: np.ndarray
    y: np.ndarray
    log_scale: np.ndarray
    angle: np.ndarray


def _profile(t: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Distance travelled (in units of the mean speed x time) along ``t``: constant, speeding up or slowing down."""
    if rng.uniform() < 0.6 or duration <= 0:
        return t.astype(np.float64)
    ratio = math.exp(rng.uniform(-math.log(2.5), math.log(2.5)))  # end speed / start speed
    v0 = 2.0 / (1.0 + ratio)
    v1 = v0 * ratio
    u = t / duration
    return duration * (v0 * u + 0.5 * (v1 - v0) * u * u)


def _jitter(t: np.ndarray, amplitude: float, fps: float, rng: np.random.Generator, fmin: float, fmax: float) -> np.ndarray:
    """Smooth random zero-mean jitter: a sum of three sinusoids with frequencies in [fmin, fmax] Hz."""
    out = np.zeros_like(t, dtype=np.float64)
    weights = rng.uniform(0.3, 1.0, size=3)
    weights /= weights.sum()
    for w in weights:
        f = rng.uniform(fmin, fmax)
        out += w * np.sin(2 * np.pi * f * t / fps + rng.uniform(0, 2 * np.pi))
    return amplitude * out / max(np.abs(out).max(), 1e-6) if amplitude > 0 else out


def motion_segment(label: str, t: np.ndarray, short_side: float, rng: np.random.Generator,
                   fps: float = 30.0, speed: float = 1.0) -> CameraPath:
    """The camera path of one labelled move at frame times ``t`` (from 0), for frames with ``short_side`` pixels.

    Speeds per frame (at ``speed=1``): pans/tilts 0.7-3 % of the short side,
    zooms 1-3.5 % scale change, rolls 0.5-2 degrees; shake is 2-6 % jitter
    at 1.5-7 Hz. Moves wobble off their axis by up to 20 degrees and may speed
    up or slow down; a third of them carry a little hand-held jitter.
    """
    if label not in CAMERA_MOTIONS:
        raise ValueError(f"unknown camera motion {label!r} (known: {', '.join(CAMERA_MOTIONS)})")
    t = np.asarray(t, dtype=np.float64)
    duration = float(t.max()) if t.size else 0.0
    zeros = np.zeros_like(t)
    x, y, ls, ang = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    travel = _profile(t, duration, rng)
    if label in ("pan_left", "pan_right", "tilt_up", "tilt_down"):
        v = speed * short_side * math.exp(rng.uniform(math.log(0.007), math.log(0.03)))
        # Direction the *window* moves (the scene moves the opposite way).
        base = {"pan_left": math.pi, "pan_right": 0.0, "tilt_up": -math.pi / 2, "tilt_down": math.pi / 2}[label]
        d = base + math.radians(rng.uniform(-20, 20))
        x, y = v * travel * math.cos(d), v * travel * math.sin(d)
        if rng.uniform() < 0.3:  # a little zoom or roll along the way
            ls = rng.uniform(-0.002, 0.002) * travel
    elif label in ("zoom_in", "zoom_out"):
        z = speed * math.exp(rng.uniform(math.log(0.01), math.log(0.035)))
        ls = (-z if label == "zoom_in" else z) * travel
        if rng.uniform() < 0.3:  # a slight drift of the zoom centre
            dv = short_side * rng.uniform(0, 0.0015)
            d = rng.uniform(0, 2 * np.pi)
            x, y = dv * travel * math.cos(d), dv * travel * math.sin(d)
    elif label in ("rotate_cw", "rotate_ccw"):
        w = speed * math.radians(math.exp(rng.uniform(math.log(0.5), math.log(2.0))))
        ang = (w if label == "rotate_cw" else -w) * travel
    elif label == "shake":
        amp = short_side * math.exp(rng.uniform(math.log(0.02), math.log(0.06)))
        x = _jitter(t, amp, fps, rng, 1.5, 7.0)
        y = _jitter(t, amp * rng.uniform(0.5, 1.0), fps, rng, 1.5, 7.0)
        ang = _jitter(t, math.radians(rng.uniform(0, 1.5)), fps, rng, 1.5, 7.0)
        ls = _jitter(t, rng.uniform(0, 0.02), fps, rng, 1.0, 5.0)
    elif label == "static":
        amp = short_side * rng.uniform(0, 0.003)
        x = _jitter(t, amp, fps, rng, 2.0, 10.0)
        y = _jitter(t, amp, fps, rng, 2.0, 10.0)
    if label not in ("static", "shake") and rng.uniform() < 0.3:
        amp = short_side * rng.uniform(0, 0.006)
        x = x + _jitter(t, amp, fps, rng, 2.0, 8.0)
        y = y + _jitter(t, amp, fps, rng, 2.0, 8.0)
    return CameraPath(np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(ls, np.float64),
                      np.asarray(ang, np.float64))


def chain_paths(segments: Sequence[CameraPath]) -> CameraPath:
    """Concatenate segments, each continuing from where the previous one ended.

    A segment's moves are in its own start frame of reference (a pan moves
    along the screen's x axis even after a roll or zoom).
    """
    xs, ys, lss, angs = [], [], [], []
    x0 = y0 = ls0 = a0 = 0.0
    for seg in segments:
        s0 = math.exp(ls0)
        c, s = math.cos(a0), math.sin(a0)
        xs.append(x0 + s0 * (c * seg.x - s * seg.y))
        ys.append(y0 + s0 * (s * seg.x + c * seg.y))
        lss.append(ls0 + seg.log_scale)
        angs.append(a0 + seg.angle)
        x0, y0, ls0, a0 = xs[-1][-1], ys[-1][-1], lss[-1][-1], angs[-1][-1]
    return CameraPath(np.concatenate(xs), np.concatenate(ys), np.concatenate(lss), np.concatenate(angs))


# --------------------------------------------------------------------------- rendering
def _bounds(path: CameraPath, height: int, width: int) -> tuple[float, float, float, float]:
    """Bounding box of every window corner along ``path``, relative to the start centre (start-scale px)."""
    hx, hy = width / 2.0, height / 2.0
    corners = np.array([[-hx, -hy], [hx, -hy], [-hx, hy], [hx, hy]])
    s = np.exp(path.log_scale)[:, None]
    c, sn = np.cos(path.angle)[:, None], np.sin(path.angle)[:, None]
    px = path.x[:, None] + s * (c * corners[None, :, 0] - sn * corners[None, :, 1])
    py = path.y[:, None] + s * (sn * corners[None, :, 0] + c * corners[None, :, 1])
    return float(px.min()), float(px.max()), float(py.min()), float(py.max())


class _Picture:
    """A source picture as float32 tensors ``[1, 3, h, w]`` (0-255): full size and antialiased halvings."""

    def __init__(self, image: np.ndarray) -> None:
        import torch
        import torch.nn.functional as F

        self.height, self.width = image.shape[:2]
        level = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
        self.levels = [level]
        while min(level.shape[-2:]) >= 128:
            level = F.interpolate(level, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
            self.levels.append(level)
        # Pictures whose three channels are equal everywhere (grey photographs).
        self.grey = bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))

    def level_for(self, factor: float):
        """The finest level whose downscaling ``factor`` (picture px per output px) leaves at most ~1.5."""
        k = 0
        while k + 1 < len(self.levels) and factor / 2 ** (k + 1) >= 0.75:
            k += 1
        return self.levels[k]


@lru_cache(maxsize=64)
def _picture(split: str, index: int) -> _Picture:
    return _Picture(source_images(split)[index])


def _placement(picture: _Picture, path: CameraPath, height: int, width: int, rng: np.random.Generator,
               min_scale: float = 0.6, max_scale: float = 4.0) -> tuple[float, float, float]:
    """Start scale ``s0`` and centre ``(cx, cy)`` (picture px) that keep the whole path inside the picture."""
    hs, ws = picture.height, picture.width
    xmin, xmax, ymin, ymax = _bounds(path, height, width)
    margin = 2.0
    fit = min((ws - 2 * margin) / max(xmax - xmin, 1e-6), (hs - 2 * margin) / max(ymax - ymin, 1e-6))
    lo, hi = min(min_scale, fit), min(max_scale, fit)
    s0 = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else fit
    cx = rng.uniform(margin - s0 * xmin, max(margin - s0 * xmin, ws - margin - s0 * xmax))
    cy = rng.uniform(margin - s0 * ymin, max(margin - s0 * ymin, hs - margin - s0 * ymax))
    return s0, cx, cy


def _sample(picture: _Picture, path: CameraPath, height: int, width: int, placement: tuple[float, float, float],
            frames: slice = slice(None)):
    """The frames ``frames`` of ``path`` at ``placement``: float32 ``[T, 3, height, width]`` (0-255)."""
    import torch
    import torch.nn.functional as F

    s0, cx, cy = placement
    hs, ws = picture.height, picture.width
    # A pre-filtered level so that even the smallest window does not alias much.
    src = picture.level_for(s0 * float(np.exp(path.log_scale.min())))
    s = s0 * np.exp(path.log_scale[frames])
    c, sn = np.cos(path.angle[frames]), np.sin(path.angle[frames])
    ccx = cx + s0 * path.x[frames]
    ccy = cy + s0 * path.y[frames]
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False);
    # normalised coordinates are the same on every level of the pyramid.
    theta = np.zeros((len(s), 2, 3))
    theta[:, 0, 0] = s * c * width / ws
    theta[:, 0, 1] = -s * sn * height / ws
    theta[:, 0, 2] = 2 * ccx / ws - 1
    theta[:, 1, 0] = s * sn * width / hs
    theta[:, 1, 1] = s * c * height / hs
    theta[:, 1, 2] = 2 * ccy / hs - 1
    grid = F.affine_grid(torch.from_numpy(theta).float(), [len(s), 3, height, width], align_corners=False)
    return F.grid_sample(src.expand(len(s), -1, -1, -1), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def _render(picture: _Picture, path: CameraPath, height: int, width: int, rng: np.random.Generator,
            min_scale: float = 0.6, max_scale: float = 4.0):
    """:func:`render_path` on a :class:`_Picture`; returns float32 frames ``[T, 3, height, width]`` (0-255)."""
    placement = _placement(picture, path, height, width, rng, min_scale, max_scale)
    return _sample(picture, path, height, width, placement)


def render_path(image: np.ndarray, path: CameraPath, height: int, width: int, rng: np.random.Generator,
                min_scale: float = 0.6, max_scale: float = 4.0) -> np.ndarray:
    """Film ``image`` (uint8 ``[H, W, 3]``) along ``path`` into uint8 frames ``[len(path), height, width, 3]``.

    The start scale (picture pixels per output pixel) is drawn log-uniformly in
    ``[min_scale, max_scale]`` but shrunk until the whole path stays inside the
    picture; the start position is random among those that keep it inside.
    Sampling is bilinear from an antialiased pyramid of the picture, so
    shrinking windows do not alias much.
    """
    frames = _render(_Picture(image), path, height, width, rng, min_scale, max_scale)
    return frames.permute(0, 2, 3, 1).clamp_(0, 255).round_().to(dtype=__import__("torch").uint8).numpy()


# --------------------------------------------------------------------------- photometric changes
def _colour(frames, grey: bool, rng: np.random.Generator):
    """Per-clip colour change of float frames ``[T, 3, H, W]``: tint grey pictures, shuffle/drop colour, invert."""
    import torch

    if grey and rng.uniform() < 0.6:
        frames = frames * torch.from_numpy(rng.uniform(0.6, 1.0, size=3).astype(np.float32)).view(1, 3, 1, 1)
    u = rng.uniform()
    if u < 0.2:
        frames = frames[:, torch.from_numpy(rng.permutation(3))]
    elif u < 0.3:
        frames = frames.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    if rng.uniform() < 0.1:
        frames = 255.0 - frames
    return frames.contiguous()


def _draw_objects(frames, t: np.ndarray, rng: np.random.Generator) -> None:
    """Add 1-3 small objects moving on their own (or stuck to the screen, like a logo), in place.

    ``frames``: float tensor ``[T, 3, H, W]``.
    """
    import torch

    n, _, h, w = frames.shape
    side = min(h, w)
    yy = torch.arange(h, dtype=torch.float32).view(h, 1) + 0.5
    xx = torch.arange(w, dtype=torch.float32).view(1, w) + 0.5
    for _ in range(int(rng.integers(1, 4))):
        r = side * rng.uniform(0.04, 0.11)
        aspect = rng.uniform(0.5, 2.0)
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        still = rng.uniform() < 0.3
        vx, vy = (0.0, 0.0) if still else tuple(side * rng.uniform(-0.02, 0.02, size=2))
        colour = torch.from_numpy(rng.uniform(0, 255, size=3).astype(np.float32)).view(3, 1)
        square = rng.uniform() < 0.5
        for k in range(n):
            dx = (xx - (x0 + vx * t[k])) / (r * aspect)
            dy = (yy - (y0 + vy * t[k])) / r
            mask = (torch.maximum(dx.abs(), dy.abs()) <= 1) if square else (dx * dx + dy * dy <= 1)
            frames[k][:, mask] = colour


def _draw_large_movers(frames, times: np.ndarray, fps: float, split: str, rng: np.random.Generator) -> list:
    """Draw 1-2 large person-like figures over float frames ``[T, 3, H, W]`` in place; returns their alphas.

    ``times``: frame numbers. Each figure is 30-70 % of the frame height and
    textured from a picture of ``split``. Returns ``[(Figure, alpha [T, H, W]), ...]``.
    """
    from videoapp.data.synthetic_figures import draw_figure, random_figure

    _, _, h, w = frames.shape
    t = (times - times.min()) / fps
    out = []
    for _ in range(1 if rng.uniform() < 0.65 else 2):
        texture = _pick_source(split, rng).levels[0]
        fig = random_figure(h, w, t, rng)
        out.append((fig, draw_figure(frames, fig, t, texture)))
    return out


def _photometric(frames, rng: np.random.Generator):
    """Gamma, contrast, brightness, flicker and sensor noise on float frames ``[T, 3, H, W]`` (0-255)."""
    import torch

    t = frames.shape[0]
    x = (frames / 255.0).clamp_(0, 1)
    gamma = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
    x = x.pow_(gamma)
    contrast = rng.uniform(0.6, 1.2)
    brightness = rng.uniform(-0.15, 0.15)
    flicker = torch.from_numpy(rng.normal(0, rng.uniform(0, 0.03), size=(t, 1, 1, 1)).astype(np.float32))
    x = (x - 0.5).mul_(contrast).add_(0.5 + brightness).add_(flicker)
    sigma = rng.uniform(0, 0.02)
    if sigma > 0:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        x.add_(torch.randn(x.shape, generator=gen).mul_(sigma))
    return x.mul_(255.0).clamp_(0, 255)


def _finish(frames, t: np.ndarray, grey: bool, rng: np.random.Generator, objects: bool = True):
    """Colour, objects and photometric changes; float ``[T, 3, H, W]`` in, uint8 ``[T, H, W, 3]`` out."""
    import torch

    frames = _colour(frames, grey, rng)
    if objects and rng.uniform() < 0.2:
        _draw_objects(frames, t, rng)
    frames = _photometric(frames, rng)
    return frames.round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _pick_source(split: str, rng: np.random.Generator) -> _Picture:
    n_photo = _num_photos(split)
    n_all = n_photo + _TEXTURES_PER_SPLIT[split]
    if rng.uniform() < 0.6:
        return _picture(split, int(rng.integers(0, n_photo)))
    return _picture(split, n_photo + int(rng.integers(0, n_all - n_photo)))


def _video_size(rng: np.random.Generator) -> tuple[int, int]:
    """A small video frame size ``(height, width)``: 1:1, 4:3, 3:4 or 16:9, short side 96-144 (even)."""
    short = int(rng.choice([96, 112, 128, 144]))
    aspect = float(rng.choice([1.0, 4 / 3, 4 / 3, 16 / 9, 3 / 4]))
    if aspect >= 1:
        return short, int(round(short * aspect / 2) * 2)
    return int(round(short / aspect / 2) * 2), short


# Mean absolute grey-level gradient (0-255 scale) a first frame needs; flatter views are re-drawn.
MIN_TEXTURE = 2.0
_MAX_TRIES = 8


def _texture(frame) -> float:
    """Mean absolute horizontal + vertical grey-level difference of a float frame ``[3, H, W]`` (0-255)."""
    g = frame.mean(0)
    return float((g[:, 1:] - g[:, :-1]).abs().mean() + (g[1:] - g[:-1]).abs().mean()) / 2


def camera_motion_clip(label: str, times: np.ndarray, height: int, width: int, rng: np.random.Generator,
                       split: str = "train", fps: float = 30.0, image: np.ndarray | None = None,
                       view_size: int | None = None, objects: bool = True, large_movers: float = 0.0,
                       movers_out: list | None = None) -> np.ndarray:
    """One camera-motion clip: uint8 frames ``[len(times), height, width, 3]`` at frame ``times``.

    ``times`` are frame numbers of a 30 fps (``fps``) video, e.g. ``np.arange(60)``
    for a whole 2 s clip, or the sampled indices of one training clip. The
    source picture comes from ``split`` unless ``image`` is given. With
    ``view_size`` the frames are preprocessed like the Predictor does for
    ``crop_size=view_size`` (short side to ``round(view_size * 256 / 224)``,
    bilinear without antialiasing, centre crop) before the noise is added, and
    come out ``[T, view_size, view_size, 3]``. ``objects=False`` leaves out the
    independently moving distractor objects (20 % of clips have them).

    ``large_movers``: the probability that 1-2 large person-like figures move
    in the clip (drawn in screen space at the video size, before
    preprocessing; the label does not change). At 0 the clip is exactly what
    it was before the option existed (no extra random draws). When
    ``movers_out`` is a list, ``(Figure, alpha [T, height, width])`` of each
    figure drawn is appended to it.
    """
    times = np.asarray(times, dtype=np.float64)
    fixed = None if image is None else _Picture(image)
    for _ in range(_MAX_TRIES):
        # A view with too little texture shows no motion at all: pick another picture / place
        # (judged on the first frame, before rendering the others).
        picture = _pick_source(split, rng) if fixed is None else fixed
        path = motion_segment(label, times - times.min(), min(height, width), rng, fps=fps)
        placement = _placement(picture, path, height, width, rng)
        if fixed is not None or _texture(_sample(picture, path, height, width, placement, slice(0, 1))[0]) >= MIN_TEXTURE:
            break
    frames = _sample(picture, path, height, width, placement)
    if large_movers > 0 and rng.uniform() < large_movers:
        drawn = _draw_large_movers(frames, times, fps, split, rng)
        if movers_out is not None:
            movers_out.extend(drawn)
    if view_size is not None:
        from videoapp.data.transforms import center_crop, resize_short_side, short_side_for_crop

        short = short_side_for_crop(view_size)
        # [T, 3, H, W] is laid out like a [C, T, H, W] clip for the spatial transforms.
        frames = center_crop(resize_short_side(frames, short), view_size)
    return _finish(frames, times, picture.grey, rng, objects=objects)


# --------------------------------------------------------------------------- label-swapping augmentation
def augment_clip(frames: np.ndarray, label: str, rng: np.random.Generator,
                 reverse: bool = True, hflip: bool = True, vflip: bool = True, transpose: bool = True
                 ) -> tuple[np.ndarray, str]:
    """Random time reversal / flips / transpose of ``frames [T, H, W, 3]`` with the matching new label.

    Each enabled transform is applied with probability 0.5 (``transpose`` only
    for square frames). Returns a view (no copy) and the new label.
    """
    if reverse and rng.uniform() < 0.5:
        frames, label = frames[::-1], TIME_REVERSE[label]
    if hflip and rng.uniform() < 0.5:
        frames, label = frames[:, :, ::-1], HFLIP[label]
    if vflip and rng.uniform() < 0.5:
        frames, label = frames[:, ::-1], VFLIP[label]
    if transpose and frames.shape[1] == frames.shape[2] and rng.uniform() < 0.5:
        frames, label = frames.transpose(0, 2, 1, 3), TRANSPOSE[label]
    return frames, label


# --------------------------------------------------------------------------- pools
@dataclass
class Pool:
    """Pre-rendered training clips: ``clips`` uint8 ``[N, T, S, S, 3]``, ``labels`` int64 ``[N]`` into ``classes``."""

    clips: np.ndarray
    labels: np.ndarray
    classes: list[str]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``clips.npy``, ``labels.npy`` and ``meta.json`` into ``folder`` (atomically renamed into place)."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "clips.npy", self.clips)
        np.save(tmp / "labels.npy", self.labels)
        (tmp / "meta.json").write_text(json.dumps({**self.meta, "classes": self.classes}, indent=1))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> "Pool":
        """Read a pool written by :meth:`save` (memory-mapped by default: shared by data-loader workers)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        clips = np.load(folder / "clips.npy", mmap_mode="r" if mmap else None)
        labels = np.load(folder / "labels.npy")
        return cls(clips, labels, list(meta.pop("classes")), meta)


def _pool_chunk(args: tuple) -> tuple[int, np.ndarray]:
    start, stop, split, seed, num_frames, sampling_rate, crop_size, classes, large_movers = args
    import torch

    torch.set_num_threads(1)
    from videoapp.data.sampling import clip_indices

    span = num_frames * sampling_rate
    times = clip_indices(span, num_frames, 0, span).astype(np.float64)
    out = np.empty((stop - start, num_frames, crop_size, crop_size, 3), np.uint8)
    for j, i in enumerate(range(start, stop)):
        rng = np.random.default_rng([_POOL_TAG, _SPLIT_TAG[split], seed, i])
        h, w = _video_size(rng)
        out[j] = camera_motion_clip(classes[i % len(classes)], times, h, w, rng, split=split, view_size=crop_size,
                                    large_movers=large_movers)
    return start, out


def pool_key(num_clips: int, split: str = "train", seed: int = 0, num_frames: int = 8, sampling_rate: int = 4,
             crop_size: int = 64, classes: Sequence[str] = CAMERA_MOTIONS, large_movers: float = 0.0) -> str:
    """A short name that identifies a pool's content (for caching)."""
    key = [GENERATOR_VERSION, num_clips, split, seed, num_frames, sampling_rate, crop_size, list(classes)]
    # Pools without large movers keep the names they had before the option existed.
    blob = json.dumps(key + [float(large_movers)] if large_movers else key)
    return f"camera_{split}_{num_clips}_{num_frames}x{sampling_rate}_{crop_size}px_s{seed}_" + \
        hashlib.sha1(blob.encode()).hexdigest()[:8]


def generate_pool(num_clips: int, *, split: str = "train", seed: int = 0, num_frames: int = 8,
                  sampling_rate: int = 4, crop_size: int = 64, classes: Sequence[str] = CAMERA_MOTIONS,
                  large_movers: float = 0.0, workers: int = 1, progress: bool = False) -> Pool:
    """Render ``num_clips`` camera-motion clips (labels balanced, clip ``i`` has class ``i % len(classes)``).

    Each clip is the ``num_frames`` frames that the Predictor would sample from
    a video (indices over a span of ``num_frames * sampling_rate`` frames, the
    PySlowFast formula), rendered at a random small video size and
    preprocessed like the Predictor does (short side ``round(crop * 256/224)``,
    centre crop ``crop_size``). ``large_movers``: probability of large
    person-like figures in a clip (see :func:`camera_motion_clip`).
    Deterministic in ``(seed, i)`` whatever ``workers`` is.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= large_movers <= 1.0:
        raise ValueError(f"large_movers is a probability in [0, 1], got {large_movers}")
    unknown = [c for c in classes if c not in CAMERA_MOTIONS]
    if unknown:
        raise ValueError(f"unknown camera motions: {unknown}")
    classes = list(classes)
    clips = np.empty((num_clips, num_frames, crop_size, crop_size, 3), np.uint8)
    chunk = max(8, min(64, -(-num_clips // (4 * max(workers, 1)))))
    jobs = [(s, min(s + chunk, num_clips), split, seed, num_frames, sampling_rate, crop_size, classes, large_movers)
            for s in range(0, num_clips, chunk)]
    from tqdm import tqdm

    bar = tqdm(total=num_clips, desc=f"generating {split} pool", unit="clip", disable=not progress, leave=False)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for start, arr in ex.map(_pool_chunk, jobs):
                clips[start:start + len(arr)] = arr
                bar.update(len(arr))
    else:
        import torch

        threads = torch.get_num_threads()
        try:
            for job in jobs:
                start, arr = _pool_chunk(job)
                clips[start:start + len(arr)] = arr
                bar.update(len(arr))
        finally:
            torch.set_num_threads(threads)
    bar.close()
    labels = np.arange(num_clips, dtype=np.int64) % len(classes)
    meta = dict(generator_version=GENERATOR_VERSION, split=split, seed=seed, num_frames=num_frames,
                sampling_rate=sampling_rate, crop_size=crop_size, large_movers=large_movers)
    return Pool(clips, labels, classes, meta)


def cached_pool(cache_dir: str | os.PathLike, num_clips: int, **kwargs) -> Pool:
    """:func:`generate_pool` with the result kept in ``cache_dir`` (reused when the same pool is asked again)."""
    gen_keys = ("split", "seed", "num_frames", "sampling_rate", "crop_size", "classes", "large_movers")
    key = pool_key(num_clips, **{k: kwargs[k] for k in gen_keys if k in kwargs})
    folder = Path(cache_dir) / key
    if (folder / "meta.json").is_file():
        return Pool.load(folder)
    pool = generate_pool(num_clips, **kwargs)
    pool.save(folder)
    return Pool.load(folder)


# --------------------------------------------------------------------------- whole videos
def write_camera_motion_videos(out_dir: str | os.PathLike, clips_per_class: int, *, split: str = "test",
                               seed: int = 0, classes: Sequence[str] = CAMERA_MOTIONS, fps: float = 30.0,
                               min_frames: int = 48, max_frames: int = 90, crf: int = 23,
                               large_movers: float = 0.0) -> list[tuple[Path, str]]:
    """Write ``clips_per_class`` H.264 clips per class as ``out_dir/<label>/<label>_<k>.mp4``.

    Whole videos (every frame, at a random small size and length between
    ``min_frames`` and ``max_frames``) of one camera move each, from the
    ``split`` pictures; clip ``k`` of class ``c`` depends only on ``(seed, c, k)``.
    The tree is a class-per-folder dataset. ``large_movers``: probability of
    large moving figures in a clip. Returns ``[(path, label), ...]``.
    """
    out_dir = Path(out_dir)
    items = []
    for ci, label in enumerate(classes):
        if label not in CAMERA_MOTIONS:
            raise ValueError(f"unknown camera motion {label!r}")
        for k in range(clips_per_class):
            rng = np.random.default_rng([_VIDEO_TAG, _SPLIT_TAG[split], seed, CAMERA_MOTIONS.index(label), k])
            h, w = _video_size(rng)
            n = int(rng.integers(min_frames, max_frames + 1))
            frames = camera_motion_clip(label, np.arange(n), h, w, rng, split=split, fps=fps,
                                        large_movers=large_movers)
            path = write_video(out_dir / label / f"{label}_{k:03d}.mp4", frames, fps=fps, crf=crf)
            items.append((path, label))
    return items


def write_large_mover_videos(out_dir: str | os.PathLike, num_videos: int, *, split: str = "test", seed: int = 0,
                             fps: float = 30.0, min_frames: int = 48, max_frames: int = 90,
                             crf: int = 23) -> list[tuple[Path, str]]:
    """Write ``num_videos`` H.264 clips of a still camera with 1-2 large moving figures in each.

    Files are ``out_dir/static/static_movers_<k>.mp4`` (a class-per-folder
    tree whose only class is ``static``): a tripod shot of people walking,
    waving or bending, which a camera-motion classifier must call static.
    Sizes and lengths as :func:`write_camera_motion_videos`; clip ``k``
    depends only on ``(split, seed, k)``. Returns ``[(path, "static"), ...]``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out_dir = Path(out_dir)
    items = []
    for k in range(num_videos):
        rng = np.random.default_rng([_MOVERS_TAG, _SPLIT_TAG[split], seed, k])
        h, w = _video_size(rng)
        n = int(rng.integers(min_frames, max_frames + 1))
        frames = camera_motion_clip("static", np.arange(n), h, w, rng, split=split, fps=fps, large_movers=1.0)
        items.append((write_video(out_dir / "static" / f"static_movers_{k:03d}.mp4", frames, fps=fps, crf=crf),
                      "static"))
    return items


DEMO_SEQUENCE = ("static", "pan_right", "zoom_in", "tilt_up", "rotate_cw", "pan_left", "zoom_out", "shake")


def camera_motion_sequence(labels: Sequence[str], seconds_each: float = 2.0, fps: float = 30.0,
                           height: int = 240, width: int = 320, seed: int = 0,
                           image: np.ndarray | None = None) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """A continuous shot made of several camera moves, one after the other.

    Returns ``(frames uint8 [N, height, width, 3], [(start_s, end_s, label), ...])``.
    Default picture: the held-out ``rocket.jpg`` photograph.
    """
    rng = np.random.default_rng(seed)
    n_each = max(2, int(round(seconds_each * fps)))
    segs = []
    for label in labels:
        # Moderate, clearly visible speeds; the path continues where the previous move ended.
        seg = motion_segment(label, np.arange(1, n_each + 1, dtype=np.float64), min(height, width), rng, fps=fps)
        segs.append(seg)
    path = chain_paths([CameraPath(np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1))] + segs)
    path = CameraPath(path.x[1:], path.y[1:], path.log_scale[1:], path.angle[1:])
    img = load_photo("rocket.jpg") if image is None else image
    frames = render_path(img, path, height, width, rng, min_scale=0.5, max_scale=2.0)
    spans = [(i * n_each / fps, (i + 1) * n_each / fps, label) for i, label in enumerate(labels)]
    return frames, spans


def main(argv: list[str] | None = None) -> int:
    """``python -m videoapp.data.synthetic OUT.mp4 [--seconds S] [--moves a,b,...]``: write the demo clip.

    The clip is one continuous shot over a held-out photograph, ``--seconds``
    of each move in :data:`DEMO_SEQUENCE` (static, pan right, zoom in, ...).
    With ``--camera-videos N``, ``OUT`` is a folder that receives N held-out
    H.264 clips per camera motion as a class-per-folder tree (see
    :func:`write_camera_motion_videos`); with ``--large-movers-videos N``, N
    still-camera clips with large moving figures under ``OUT/static/`` (see
    :func:`write_large_mover_videos`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m videoapp.data.synthetic",
        description="Write generated camera-motion video: the demo clip (a sequence of camera moves), "
                    "or with --camera-videos a class-per-folder tree of labelled clips.")
    parser.add_argument("out", help="output video path (e.g. out/demo.mp4), or a folder with --camera-videos")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per camera move in the demo (default 2)")
    parser.add_argument("--moves", default=",".join(DEMO_SEQUENCE),
                        help=f"comma-separated camera moves of the demo (default {','.join(DEMO_SEQUENCE)})")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--camera-videos", type=int, metavar="N",
                        help="write N labelled clips per camera motion into the folder OUT instead")
    parser.add_argument("--large-movers-videos", type=int, metavar="N",
                        help="write N still-camera clips with large moving figures into OUT/static/ instead")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="source pictures for --camera-videos / --large-movers-videos "
                             "(default test: held out from training)")
    args = parser.parse_args(argv)
    if args.fps <= 0 or args.seconds <= 0:
        parser.error("--seconds and --fps must be positive")
    if args.large_movers_videos is not None:
        if args.large_movers_videos < 1:
            parser.error("--large-movers-videos must be >= 1")
        items = write_large_mover_videos(args.out, args.large_movers_videos, split=args.split, seed=args.seed,
                                         fps=args.fps)
        print(f"wrote {len(items)} still-camera clips with large movers into {args.out}/static/ "
              f"({args.split} pictures, seed {args.seed})")
        return 0
    if args.camera_videos is not None:
        if args.camera_videos < 1:
            parser.error("--camera-videos must be >= 1")
        items = write_camera_motion_videos(args.out, args.camera_videos, split=args.split, seed=args.seed,
                                           fps=args.fps)
        print(f"wrote {len(items)} clips into {args.out}/<motion>/ ({args.split} pictures, seed {args.seed})")
        return 0
    moves = [m.strip() for m in args.moves.split(",") if m.strip()]
    bad = [m for m in moves if m not in CAMERA_MOTIONS]
    if bad or not moves:
        parser.error(f"--moves must be among {', '.join(CAMERA_MOTIONS)}")
    frames, spans = camera_motion_sequence(moves, args.seconds, args.fps, seed=args.seed)
    path = write_video(args.out, frames, fps=args.fps)
    print(f"wrote {path}: " + ", ".join(f"{a:g}-{b:g} s {m}" for a, b, m in spans))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
