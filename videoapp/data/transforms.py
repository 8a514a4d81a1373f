"""Spatial transforms for video clips: resize, crops, flip, normalize, to tensor.

Layouts (the same function accepts both):

- *frames*: uint8 ``[T, H, W, 3]`` RGB, a NumPy array or a uint8 torch tensor
  (what :class:`videoapp.data.video.VideoReader` returns);
- *clip tensor*: float torch tensor ``[C, T, H, W]`` (any float dtype); the
  functions work on its last two (spatial) dims.

A NumPy array or a uint8 tensor is taken as *frames*; any other tensor as a
*clip tensor*.

Resizing is ``F.interpolate(mode="bilinear", align_corners=False,
antialias=False)`` on float values, batched over time and channels in one
call: that is what PySlowFast does (and torchvision's video preset also uses
``antialias=False``; it resizes uint8 and rounds, which differs from ours by
at most 0.5/255). MViTv2/Hiera checkpoints were evaluated that way, so
``antialias`` is off by default; turn it on for heavy downscaling of your own
training data. New sizes follow PySlowFast: the short side becomes ``size``,
the long side ``floor(long / short * size)``; centre crops start at
``ceil((H - size) / 2)``.

We do not use ``pytorchvideo.transforms``: in pytorchvideo 0.1.5 it imports
``torchvision.transforms.functional_tensor``, which torchvision 0.29 no longer
has, so the import fails.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "to_tensor",
    "resize_short_side",
    "short_side_for_crop",
    "center_crop",
    "uniform_crop",
    "three_crops",
    "horizontal_flip",
    "normalize",
    "ClipTransform",
    "TrainTransform",
]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _is_frames(x: ArrayLike) -> bool:
    # uint8 frames [T, H, W, 3] (NumPy or tensor) vs float clip tensors [C, T, H, W].
    return isinstance(x, np.ndarray) or (isinstance(x, torch.Tensor) and x.dtype == torch.uint8)


def _check_frames(frames: ArrayLike) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {tuple(frames.shape)}")


def to_tensor(frames: ArrayLike) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float32 clip tensor ``[C, T, H, W]`` in ``[0, 1]``."""
    _check_frames(frames)
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    # Make the (cheap, 1 byte/elem) uint8 copy contiguous before the 4x larger float one.
    return t.permute(3, 0, 1, 2).contiguous().to(torch.float32).div_(255.0)


def _short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    if w <= h:
        return int(math.floor(h / w * size)), size
    return size, int(math.floor(w / h * size))


def _resize_clip(x: torch.Tensor, out_h: int, out_w: int, antialias: bool) -> torch.Tensor:
    c, t, h, w = x.shape
    if (h, w) == (out_h, out_w):
        return x
    # Bilinear filtering is per channel: fold C and T into one batch of planes
    # so one interpolate call does the whole clip without permute copies.
    planes = x.reshape(1, c * t, h, w)
    if not planes.is_floating_point():
        planes = planes.float()
    out = F.interpolate(planes, size=(out_h, out_w), mode="bilinear", align_corners=False,
                        antialias=antialias)
    return out.reshape(c, t, out_h, out_w)


def short_side_for_crop(crop_size: int, resize: int = 256) -> int:
    """The short side (pixels) to resize to before a ``crop_size`` centre crop: ``round(crop_size * resize / 224)``.

    The ImageNet rule "resize 256, crop 224" scaled to other crop sizes (e.g.
    160 -> 183); ``resize=320`` gives the upper end of the training scale jitter.
    """
    return int(round(crop_size * resize / 224))


def resize_short_side(x: ArrayLike, size: int, antialias: bool = False) -> ArrayLike:
    """Resize so the short side is ``size`` pixels, keeping the aspect ratio.

    Frames uint8 ``[T, H, W, 3]`` in -> frames uint8 ``[T, h, w, 3]`` out (same
    type, rounded); float clip tensor ``[C, T, H, W]`` in -> ``[C, T, h, w]``
    out. Long side ``floor(long / short * size)`` (PySlowFast).
    """
    if _is_frames(x):
        _check_frames(x)
        h, w = int(x.shape[1]), int(x.shape[2])
        out_h, out_w = _short_side_size(h, w, size)
        if (out_h, out_w) == (h, w):
            return x
        clip = _resize_clip(to_tensor(x), out_h, out_w, antialias)
        out = clip.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()
        return out.numpy() if isinstance(x, np.ndarray) else out
    h, w = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = _short_side_size(h, w, size)
    return _resize_clip(x, out_h, out_w, antialias)


def _hw(x: ArrayLike) -> tuple[int, int]:
    if _is_frames(x):
        return int(x.shape[1]), int(x.shape[2])
    return int(x.shape[-2]), int(x.shape[-1])


def _crop(x: ArrayLike, y0: int, x0: int, ch: int, cw: int) -> ArrayLike:
    if _is_frames(x):
        return x[:, y0:y0 + ch, x0:x0 + cw, :]
    return x[..., y0:y0 + ch, x0:x0 + cw]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def center_crop(x: ArrayLike, size: int | Sequence[int]) -> ArrayLike:
    """Central ``size`` (int or ``(h, w)``) crop; offsets ``ceil((H - h) / 2)``, ``ceil((W - w) / 2)``.

    Works on frames ``[T, H, W, 3]`` and clip tensors ``[C, T, H, W]``; returns a view.
    """
    ch, cw = _size2(size)
    h, w = _hw(x)
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} larger than the frame {h}x{w}")
    return _crop(x, int(math.ceil((h - ch) / 2)), int(math.ceil((w - cw) / 2)), ch, cw)


def uniform_crop(x: ArrayLike, size: int, spatial_idx: int) -> ArrayLike:
    """Square ``size`` crop number ``spatial_idx`` (0, 1, 2) along the long side.

    As PySlowFast ``uniform_crop``: landscape 0 = left, 1 = centre, 2 = right;
    portrait top, centre, bottom. The short side is cropped centrally.
    Works on frames ``[T, H, W, 3]`` and clip tensors ``[C, T, H, W]``; returns a view.
    """
    if spatial_idx not in (0, 1, 2):
        raise ValueError(f"spatial_idx must be 0, 1 or 2, got {spatial_idx}")
    h, w = _hw(x)
    if size > h or size > w:
        raise ValueError(f"crop {size} larger than the frame {h}x{w}")
    y0 = int(math.ceil((h - size) / 2))
    x0 = int(math.ceil((w - size) / 2))
    if h > w:
        y0 = {0: 0, 1: y0, 2: h - size}[spatial_idx]
    else:
        x0 = {0: 0, 1: x0, 2: w - size}[spatial_idx]
    return _crop(x, y0, x0, size, size)


def three_crops(x: ArrayLike, size: int) -> list[ArrayLike]:
    """The three test crops (SlowFast multi-crop): left/centre/right, or top/centre/bottom for portrait.

    Used after resizing the short side to ``size``, so together they cover the
    whole frame. Returns three views, each ``size`` x ``size``.
    """
    return [uniform_crop(x, size, i) for i in range(3)]


def horizontal_flip(x: ArrayLike) -> ArrayLike:
    """Mirror left-right (frames ``[T, H, W, 3]`` or clip tensors ``[C, T, H, W]``)."""
    if isinstance(x, np.ndarray):
        return x[:, :, ::-1, :]
    if x.dtype == torch.uint8:
        return x.flip(2)
    return x.flip(-1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel.

    ``x``: float ``[C, T, H, W]`` or ``[N, C, T, H, W]`` (channels at dim -4).

    ``mean``/``std`` are in the channel order of ``x`` and on the ``[0, 1]`` scale. Returns a new tensor.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [C, T, H, W] or [N, C, T, H, W], got shape {tuple(x.shape)}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return (x - m) / s


def _check_channel_order(order: str) -> str:
    order = order.lower()
    if order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {order!r}")
    return order


class ClipTransform:
    """Test-time preprocessing: frames -> normalized multi-crop tensor.

    ``ClipTransform(crop_size, mean, std, num_crops=1, short_side=None,
    channel_order="rgb", antialias=False)``; ``__call__(frames uint8 [T, H, W,
    3] RGB) -> float32 [num_crops, C, T, crop_size, crop_size]``.

    - ``num_crops=1``: short side to ``short_side`` (default
      ``round(crop_size * 256 / 224)``: resize 256, centre crop 224, as
      torchvision's MViTv2 port and PySlowFast's 1-crop test do), centre crop.
    - ``num_crops=3``: short side to ``short_side`` (default ``crop_size``)
      and the three crops along the long side (PySlowFast 3-crop test).

    ``mean``/``std``: per channel, ``[0, 1]`` scale, in the model's input
    channel order. ``channel_order="bgr"`` feeds B, G, R. Note on SSv2: PySlowFast
    reads SSv2 as JPEG frames with OpenCV (BGR) and its configs' ``REVERSE_INPUT_CHANNEL``
    flips them *back to RGB*, so those checkpoints saw RGB; "bgr" is for models
    that were trained on OpenCV frames without that flip.
    """

    def __init__(self, crop_size: int, mean: Sequence[float], std: Sequence[float], num_crops: int = 1,
                 short_side: Optional[int] = None, channel_order: str = "rgb",
                 antialias: bool = False) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (one per channel)")
        self.crop_size = int(crop_size)
        self.num_crops = num_crops
        if short_side is None:
            short_side = short_side_for_crop(crop_size) if num_crops == 1 else crop_size
        if short_side < crop_size:
            raise ValueError(f"short_side {short_side} is smaller than crop_size {crop_size}")
        self.short_side = int(short_side)
        self.channel_order = _check_channel_order(channel_order)
        self.antialias = antialias
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
        self._inv_std = (1.0 / torch.tensor(self.std, dtype=torch.float32)).view(1, 3, 1, 1, 1)

    def __call__(self, frames: ArrayLike) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` RGB -> float32 ``[num_crops, C, T, crop, crop]``, normalized."""
        _check_frames(frames)
        clip = resize_short_side(to_tensor(frames), self.short_side, antialias=self.antialias)
        if self.num_crops == 1:
            crops = [center_crop(clip, self.crop_size)]
        else:
            crops = three_crops(clip, self.crop_size)
        out = torch.stack(crops)  # [N, C, T, h, w], contiguous copy of the crops only
        if self.channel_order == "bgr":
            out = out.flip(1)
        return out.sub_(self._mean).mul_(self._inv_std)

    def __repr__(self) -> str:
        return (f"ClipTransform(crop_size={self.crop_size}, short_side={self.short_side}, "
                f"num_crops={self.num_crops}, mean={self.mean}, std={self.std}, "
                f"channel_order={self.channel_order!r}, antialias={self.antialias})")


class TrainTransform:
    """Training augmentation (PySlowFast ``spatial_sampling`` with ``spatial_idx=-1``).

    ``TrainTransform(crop_size, mean, std, min_scale=256, max_scale=320,
    flip=True, inverse_uniform=False, channel_order="rgb", rng=None)``;
    ``__call__(frames uint8 [T, H, W, 3]) -> float32 [C, T, crop_size, crop_size]``.

    Short side resized to a random size in ``[min_scale, max_scale]`` (uniform,
    or with ``inverse_uniform=True`` the reciprocal of a uniform draw in
    ``[1/max_scale, 1/min_scale]``, PySlowFast ``INV_UNIFORM_SAMPLE`` used by
    its SSv2 configs), a random ``crop_size`` square, a horizontal flip with
    probability 0.5 if ``flip`` (off for SSv2: its labels say "left"/"right"),
    then normalization. ``rng``: ``np.random.Generator`` (default: a fresh one).
    """

    def __init__(self, crop_size: int, mean: Sequence[float], std: Sequence[float], min_scale: int = 256,
                 max_scale: int = 320, flip: bool = True, inverse_uniform: bool = False,
                 channel_order: str = "rgb", rng: Optional[np.random.Generator] = None,
                 antialias: bool = False) -> None:
        if min_scale < crop_size or max_scale < min_scale:
            raise ValueError("need crop_size <= min_scale <= max_scale")
        self.crop_size = int(crop_size)
        self.min_scale, self.max_scale = int(min_scale), int(max_scale)
        self.flip = flip
        self.inverse_uniform = inverse_uniform
        self.channel_order = _check_channel_order(channel_order)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.antialias = antialias
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1, 1)
        self._inv_std = (1.0 / torch.tensor(self.std, dtype=torch.float32)).view(3, 1, 1, 1)

    def sample_scale(self) -> int:
        """Draw the short-side size for one clip."""
        if self.inverse_uniform:
            return int(round(1.0 / self.rng.uniform(1.0 / self.max_scale, 1.0 / self.min_scale)))
        return int(round(self.rng.uniform(self.min_scale, self.max_scale)))

    def __call__(self, frames: ArrayLike) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` RGB -> float32 ``[C, T, crop, crop]``, augmented and normalized."""
        _check_frames(frames)
        clip = resize_short_side(to_tensor(frames), self.sample_scale(), antialias=self.antialias)
        h, w = clip.shape[-2:]
        y0 = int(self.rng.integers(0, h - self.crop_size + 1))
        x0 = int(self.rng.integers(0, w - self.crop_size + 1))
        clip = clip[..., y0:y0 + self.crop_size, x0:x0 + self.crop_size]
        if self.flip and self.rng.uniform() < 0.5:
            clip = clip.flip(-1)
        if self.channel_order == "bgr":
            clip = clip.flip(0)
        return (clip - self._mean).mul_(self._inv_std)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale=[{self.min_scale}, {self.max_scale}], "
                f"flip={self.flip}, inverse_uniform={self.inverse_uniform}, "
                f"channel_order={self.channel_order!r})")
