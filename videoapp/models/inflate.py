"""2-D image checkpoints -> 3-D video models ("inflation" with centre-frame initialisation).

An image network becomes a video network of the same family and width when
every video parameter is derived from the image one so that **a clip of T
identical frames gives exactly the image model's logits** on that frame:

- parameters with the same shape are copied (linears, norms, heads);
- convolution kernels that gained a time axis (the patch stem, MViTv2's
  pooling convolutions) get the 2-D kernel in their middle time slice and zeros
  elsewhere ("centre-frame" init). With temporal padding ``k_t // 2`` every
  output frame then sees exactly one input frame through the image kernel;
- a patch embedding whose temporal kernel equals its temporal stride (Twins'
  stems: no temporal padding, so no tap is "the" frame) gets the 2-D kernel
  divided by the time kernel in every slice: the average over the frames it
  covers, which on identical frames is the image kernel's output;
- temporal position terms (Hiera's ``pos_embed_temporal``, MViTv2's
  ``rel_pos_t``) start at zero, so no frame is told apart from another;
- spatial position terms are interpolated only when the video model's token
  grid differs from the image model's (otherwise copied bit for bit).

Why identical frames then reproduce the image: each frame's tokens are the
image tokens, per-token layers (norms, linears, MLPs) act frame by frame, and
an attention whose keys/values are T copies of the same set gives every copy
``exp(s)/(T * sum exp)``; summing the T copies restores the image attention
exactly. Mean pooling over T copies is the image mean. Family-specific
arguments live beside each family's rules (:func:`hiera_rules`,
:func:`mvitv2_rules`).

:func:`inflate_state_dict` works on in-memory state dicts (our key names);
:func:`inflate_checkpoint` reads any image checkpoint that the family's
converters understand (timm, official) and returns a state dict for a
registered video model.

Layers (tests/test_layers.py): inflation sits beside the factory, on the
pretrained layer (``models.pretrained`` reads and converts checkpoints) and on
``videoapp.weights`` only for the file format (``CheckpointError``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "InflationReport",
    "centre_frame_kernel",
    "resize_pos_embed_2d",
    "hiera_rules",
    "mvitv2_rules",
    "twins_rules",
    "RULES",
    "inflate_state_dict",
    "inflate_checkpoint",
]


@dataclass
class InflationReport:
    """What :func:`inflate_state_dict` did, key by key (video model names).

    ``copied``: same shape, copied; ``centre_frame``: 2-D kernels placed in the
    middle time slice; ``averaged``: 2-D kernels spread evenly over time (a
    temporal patch with kernel = stride, divided by its length); ``zeroed``:
    temporal position terms set to zero;
    ``resized``: spatial position terms interpolated to another grid;
    ``fresh``: keys kept at the video model's own initialisation (a head of
    another class count); ``unused``: image keys that were not needed.
    """

    model: str = ""
    source: str = ""
    num_classes: int | None = None
    copied: list[str] = field(default_factory=list)
    centre_frame: list[str] = field(default_factory=list)
    zeroed: list[str] = field(default_factory=list)
    averaged: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``"139 copied, 1 centre-frame, 1 zeroed, 0 resized, 0 fresh"``."""
        return (f"{len(self.copied)} copied, {len(self.centre_frame)} centre-frame, {len(self.zeroed)} zeroed, "
                f"{len(self.resized)} resized, {len(self.fresh)} fresh"
                + (f", {len(self.averaged)} time-averaged" if self.averaged else ""))


# --------------------------------------------------------------------------- tensor helpers
def centre_frame_kernel(weight: torch.Tensor, time_kernel: int) -> torch.Tensor:
    """``[C_out, C_in, *k]`` -> ``[C_out, C_in, time_kernel, *k]``: the 2-D kernel in the middle slice, zeros elsewhere.

    The middle slice is ``time_kernel // 2``, the tap that a convolution with
    temporal padding ``time_kernel // 2`` aligns with the output frame's own
    input frame (for an even ``time_kernel`` there is no such tap and the
    identity property does not hold exactly).
    """
    out = weight.new_zeros(weight.shape[0], weight.shape[1], time_kernel, *weight.shape[2:])
    out[:, :, time_kernel // 2] = weight
    return out


def resize_pos_embed_2d(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int],
                        mode: str = "bicubic") -> torch.Tensor:
    """Resample a raster-order position table ``[1, h*w, C]`` from grid ``src`` to ``dst`` -> ``[1, H*W, C]``.

    Returns ``pos`` itself when the grids are equal (no interpolation round-off).
    Bicubic without corner alignment, as timm's ``resample_abs_pos_embed``.
    """
    if tuple(src) == tuple(dst):
        return pos
    c = pos.shape[-1]
    grid = pos.reshape(1, src[0], src[1], c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(dst), mode=mode, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], c).to(pos.dtype)


# --------------------------------------------------------------------------- family rules
# A rule gets the image state (our names) and the video model and returns the
# video tensors it decides itself plus the image keys it consumed; every other
# video key goes through the generic copy / centre-frame logic.
Rule = Callable[[Mapping[str, torch.Tensor], nn.Module, InflationReport], tuple[dict[str, torch.Tensor], set[str]]]


def hiera_rules(image_state: Mapping[str, torch.Tensor], video_model: nn.Module,
                report: InflationReport) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Hiera image ``pos_embed [1, h*w, C]`` -> video ``pos_embed_spatial`` (resized if needed) + zero ``pos_embed_temporal``.

    Identity on T identical frames: the stem (centre-frame ``(3, 7, 7)``,
    temporal padding 1, stride 2) turns every frame pair into the image's
    patch tokens; the temporal table is zero so all T/2 token frames are equal;
    mask units are ``(1, 8, 8)`` tokens, i.e. inside one token frame, so
    stages 1-2 compute each frame exactly as the image; the q-pools are
    ``(1, 2, 2)`` (never across time); the global attention of stages 3-4 sees
    every key T/2 times, which leaves softmax-weighted sums unchanged (module
    docstring); the mean over T/2 equal frames is the image mean. Only the
    summation order differs, so logits agree to float rounding (about 1e-7
    relative), not bit for bit.
    """
    if "pos_embed" not in image_state:
        raise KeyError("pos_embed")
    t, h, w = video_model.tokens_spatial_shape
    pos = image_state["pos_embed"]
    side = math.isqrt(pos.shape[1])
    if side * side != pos.shape[1]:
        raise ValueError(f"image pos_embed has {pos.shape[1]} tokens, not a square grid")
    spatial = resize_pos_embed_2d(pos, (side, side), (h, w))
    (report.resized if (side, side) != (h, w) else report.copied).append("pos_embed_spatial")
    report.zeroed.append("pos_embed_temporal")
    return {"pos_embed_spatial": spatial, "pos_embed_temporal": pos.new_zeros(1, t, pos.shape[-1])}, {"pos_embed"}


def mvitv2_rules(image_state: Mapping[str, torch.Tensor], video_model: nn.Module,
                 report: InflationReport) -> tuple[dict[str, torch.Tensor], set[str]]:
    """MViTv2 image ``rel_pos_h/w`` -> video tables (resized only for another grid) + zero ``rel_pos_t``.

    Identity on T identical frames (for the ImageNet layout,
    ``mvitv2_*_16x224``): the stem and the Q/K/V pooling convolutions are
    centre-frame with temporal padding ``k_t // 2`` and temporal stride 1 in
    every block, so each token frame is computed from its own input frame
    exactly as the image; the skip max-pool is (1, 3, 3); with ``rel_pos_t``
    zero every key appears once per token frame with the image's spatial
    logits, which leaves the softmax-weighted sums unchanged; the mean of the
    final-normed tokens over equal frames is the image mean.
    """
    from videoapp.models.mvitv2 import resize_rel_pos

    target = video_model.state_dict()
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key, want in target.items():
        if key.endswith(".attn.rel_pos_t"):
            out[key] = torch.zeros(want.shape, dtype=want.dtype)  # the video model may be on "meta"
            report.zeroed.append(key)
        elif key.endswith((".attn.rel_pos_h", ".attn.rel_pos_w")):
            table = image_state[key]
            if table.shape[1:] != want.shape[1:]:
                raise ValueError(f"{key} {tuple(table.shape)} vs {tuple(want.shape)}")
            out[key] = resize_rel_pos(table, want.shape[0])
            (report.resized if table.shape[0] != want.shape[0] else report.copied).append(key)
            consumed.add(key)
    return out, consumed


def twins_rules(image_state: Mapping[str, torch.Tensor], video_model: nn.Module,
                report: InflationReport) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Twins stems with a temporal patch ``t > 1`` (kernel = stride, ``(2, 4, 4)`` by default):
    the image kernel / ``t`` in each of the ``t`` slices. Everything else is generic.

    Identity on T identical frames (``T`` a multiple of the temporal strides
    and, after the stem, of the LSA temporal window, as with the defaults):
    every token frame of each stage equals the image's tokens (the averaged
    stem sums ``t`` equal frames / ``t``; later stems have ``t = 1``; the PEG
    ``(3, 3, 3)`` kernels and the GSA reduction ``(1, sr, sr)`` are
    centre-frame); LSA windows hold ``t_w`` copies of the image window
    (spatial zero padding included) and GSA keys are T copies of the image's,
    which leaves the softmax-weighted sums unchanged; the mean over equal
    frames is the image mean. Twins has no position tables to convert.
    """
    out: dict[str, torch.Tensor] = {}
    for i, embed in enumerate(video_model.patch_embeds):
        conv = embed.proj
        key = f"patch_embeds.{i}.proj.weight"
        if not isinstance(conv, nn.Conv3d):
            continue
        t = conv.kernel_size[0]
        if t > 1 and conv.stride[0] == t and key in image_state and image_state[key].dim() == 4:
            weight = image_state[key]
            out[key] = (weight / t).unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()
            report.averaged.append(key)
    return out, set(out)


#: Family name (registry ``family``) -> its inflation rule.
RULES: dict[str, Rule] = {"hiera": hiera_rules, "mvitv2": mvitv2_rules, "twins": twins_rules}


def _family_of(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None:
        from videoapp.models.registry import get_model_entry

        return get_model_entry(cfg.model_name).family
    return type(model).__name__.lower()


# --------------------------------------------------------------------------- inflation
def inflate_state_dict(image_state: Mapping[str, torch.Tensor], video_model: nn.Module,
                       family: str | None = None) -> tuple[dict[str, torch.Tensor], InflationReport]:
    """Video state dict for ``video_model`` from an image state dict of the same family (our key names).

    Every key of ``video_model.state_dict()`` is filled: by the family rule
    (:data:`RULES`), by a copy of the same-shaped image tensor, by
    :func:`centre_frame_kernel` for a kernel that gained a time axis, or (only
    ``head.*`` of another class count) by the video model's own values. Image
    keys left over are listed in ``report.unused``. Raises ``ValueError``
    naming the first keys that do not fit (another width or depth).
    """
    family = family or _family_of(video_model)
    if family not in RULES:
        raise ValueError(f"no inflation rules for model family '{family}' (known: {', '.join(sorted(RULES))})")
    cfg = getattr(video_model, "pretrained_cfg", None)
    report = InflationReport(model=cfg.model_name if cfg is not None else type(video_model).__name__)
    target = video_model.state_dict()
    special, consumed = RULES[family](image_state, video_model, report)
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, want in target.items():
        if key in special:
            value = special[key]
        elif key not in image_state:
            if key.startswith("head."):
                value = want
                report.fresh.append(key)
            else:
                problems.append(f"{key} missing")
                continue
        else:
            src = image_state[key]
            consumed.add(key)
            if src.shape == want.shape:
                value = src
                report.copied.append(key)
            elif src.dim() + 1 == want.dim() and src.shape[:2] == want.shape[:2] and src.shape[2:] == want.shape[3:]:
                value = centre_frame_kernel(src, want.shape[2])
                report.centre_frame.append(key)
            elif key.startswith("head."):
                value = want  # another class count: the video model's own head
                report.fresh.append(key)
            else:
                problems.append(f"{key} {tuple(src.shape)} vs {tuple(want.shape)}")
                continue
        if tuple(value.shape) != tuple(want.shape):
            problems.append(f"{key} {tuple(value.shape)} vs {tuple(want.shape)}")
            continue
        out[key] = value.detach().to(dtype=want.dtype).clone()
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"image weights do not fit {report.model}: {', '.join(problems[:3])}{more}")
    report.unused = sorted(k for k in image_state if k not in consumed)
    head = out.get("head.fc.weight")
    report.num_classes = int(head.shape[0]) if head is not None else None
    return out, report


def inflate_checkpoint(path: str | os.PathLike, model_name: str, num_classes: int | None = None,
                       source: str = "auto") -> tuple[dict[str, torch.Tensor], InflationReport]:
    """Read an image checkpoint (timm, official, ours) and inflate it into registered video model ``model_name``.

    The checkpoint is converted to our key names with the family's
    converters (``source`` as for :func:`videoapp.models.pretrained.import_checkpoint`).
    ``num_classes=None`` keeps the image classifier (its class count), which
    makes the result reproduce the image model on still clips; another count
    gives a freshly initialised head. Unused image keys are an error (the
    image model is not of this family or size). Raises
    :class:`videoapp.weights.CheckpointError` with one line on any mismatch.
    """
    from videoapp.models.factory import create_model
    from videoapp.models.pretrained import read_and_convert
    from videoapp.weights import CheckpointError

    image_state, source, _ = read_and_convert(path, model_name, source)
    if num_classes is None and "head.fc.weight" in image_state:
        num_classes = int(image_state["head.fc.weight"].shape[0])
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):  # only names and shapes are needed, not an initialisation
        video_model = create_model(model_name, **kwargs)
    try:
        state, report = inflate_state_dict(image_state, video_model)
    except KeyError as exc:
        raise CheckpointError(f"{path}: not an image checkpoint for {model_name} (missing key {exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if report.unused:
        more = f" (+{len(report.unused) - 3} more)" if len(report.unused) > 3 else ""
        raise CheckpointError(f"{path}: image weights have keys {model_name} does not use: "
                              f"{', '.join(report.unused[:3])}{more}")
    if report.fresh:
        # A head of another class count: the video model's own initialisation.
        initialised = create_model(model_name, **kwargs).state_dict()
        state.update({key: initialised[key] for key in report.fresh})
    report.source = source
    return state, report
