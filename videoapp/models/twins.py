"""Twins (Chu et al., "Twins: Revisiting the Design of Spatial Attention in Vision Transformers", NeurIPS 2021),
spatio-temporal.

One dimension-generic network for images (``[B, 3, H, W]``, 2-D convolutions,
timm's ``twins_*`` checkpoints load unchanged) and video (``[B, 3, T, H, W]``,
3-D convolutions); ``temporal_patch=None`` builds the image model. No video
Twins exists publicly; ours comes from inflating the image checkpoints
(:mod:`videoapp.models.inflate`). It computes what timm's ``twins.py`` computes
(up to float rounding) on images and extends every piece over time:

- four stages, each opened by a patch embedding: a convolution with kernel =
  stride (space 4 in stage 1, 2 after; time ``temporal_patch[i]``, default
  2 then 1) followed by ``LayerNorm``;
- pre-norm transformer blocks (``LayerNorm`` eps 1e-6, GELU MLP);
- **GSA**, global sub-sampled attention: every query attends to all keys of
  the clip, whose keys/values come from a copy of the tokens reduced by a
  convolution with kernel = stride = ``sr_ratio`` in space and 1 in time
  (then ``LayerNorm``); no reduction when ``sr_ratio`` is 1;
- **LSA**, locally-grouped attention: attention inside non-overlapping windows
  of ``window_sizes[i]`` x ``window_sizes[i]`` tokens in space and
  ``temporal_window`` token frames in time. In space the map is zero-padded
  at the bottom/right to whole windows, as timm does (padded tokens are zero
  vectors, so their keys are the projection's bias: kept for checkpoint
  parity). In time the window is clamped to the clip (as Video Swin does), so
  short clips need no padding; longer clips are padded at the end like space;
- PCPVT uses GSA in every block; SVT alternates LSA (even blocks) and GSA;
- PEG, the positional encoding generator: after the first block of each stage
  a depthwise convolution (3 x 3 in space, ``temporal_peg`` in time, zero
  padding) is added to the tokens. It is the only position signal (no tables),
  so any input size runs;
- the final tokens are ``LayerNorm``-ed, mean-pooled and classified by
  ``head.fc``.

Tokens are ``[B, N, C]`` in raster order over the grid ``(T, H, W)`` (images
``(H, W)``); their grid view is channels-last (``layers.tokens_to_grid``), so
the convolutions between attention blocks need no layout copies. Every
attention is ``F.scaled_dot_product_attention``.

State-dict keys are timm's except ``head.fc`` (timm ``head``) and the PEG
convolution ``pos_block.i.proj`` (timm ``pos_block.i.proj.0``, a one-layer
``Sequential``); :data:`CONVERTERS` reads timm checkpoints.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from videoapp.models.heads import ClassificationHead
from videoapp.models.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    check_output_fmt,
    feature_take_indices,
    grid_to_tokens,
    run_block,
    stage_feature_info,
    tokens_to_grid,
)
from videoapp.models.registry import keep_keys, IMAGENET_MEAN, IMAGENET_STD, register_converters, register_model

__all__ = [
    "Twins",
    "TwinsBlock",
    "StageEmbed",
    "LocallyGroupedAttention",
    "GlobalSubSampleAttention",
    "PosConv",
    "window_partition",
    "window_reverse",
    "CONVERTERS",
    "detect_source",
    "convert_timm",
]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


# --------------------------------------------------------------------------- windows
def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Grid tokens ``[B, *size, C]`` -> windows ``[B * num_windows, prod(window), C]``.

    ``size`` must be a multiple of ``window`` on every axis; windows are
    ordered raster over the window grid, tokens raster inside each window.
    """
    b, *size, c = x.shape
    split: list[int] = []
    for n, w in zip(size, window):
        split += [n // w, w]
    dims = len(size)
    x = x.view(b, *split, c)
    order = [0] + [1 + 2 * a for a in range(dims)] + [2 + 2 * a for a in range(dims)] + [2 * dims + 1]
    return x.permute(*order).reshape(-1, math.prod(window), c)


def window_reverse(x: torch.Tensor, window: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition` for attention outputs, heads merged on the way.

    ``[B * num_windows, heads, prod(window), head_dim]`` -> ``[B, *size, heads * head_dim]``
    in one permute-and-copy (no separate head transpose).
    """
    _, heads, _, head_dim = x.shape
    counts = [n // w for n, w in zip(size, window)]
    dims = len(size)
    x = x.view(-1, *counts, heads, *window, head_dim)
    order = [0]
    for a in range(dims):
        order += [1 + a, 2 + dims + a]
    return x.permute(*order, 1 + dims, 2 + 2 * dims).reshape(-1, *size, heads * head_dim)


# --------------------------------------------------------------------------- attention
class LocallyGroupedAttention(nn.Module):
    """LSA: multi-head self-attention inside non-overlapping windows.

    ``forward(x [B, N, dim], size)`` -> ``[B, N, dim]`` with ``N = prod(size)``.
    ``window`` has one entry per grid axis: ``(w, w)`` for images, ``(t, w, w)``
    for video. Spatial axes are zero-padded at the end to whole windows (timm);
    leading (time) axes use ``min(t, T)`` and are padded only when ``T`` is
    longer and not a multiple. Parameters ``qkv`` (``Linear(dim, 3 * dim)``,
    output laid out ``[3, heads, head_dim]``) and ``proj``, as timm.
    """

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = tuple(int(w) for w in window)
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        b, n, c = x.shape
        window = tuple(min(w, s) for w, s in zip(self.window[:-2], size[:-2])) + self.window[-2:]
        pads = [(-s) % w for s, w in zip(size, window)]
        x = x.view(b, *size, c)
        if any(pads):
            # F.pad lists (before, after) pairs from the last axis backwards; channels first.
            x = F.pad(x, [0, 0] + [v for p in reversed(pads) for v in (0, p)])
        padded = tuple(s + p for s, p in zip(size, pads))
        windows = window_partition(x, window)  # [B * nW, M, C]
        bw, m, _ = windows.shape
        q, k, v = self.qkv(windows).view(bw, m, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = window_reverse(out, window, padded)  # [B, *padded, C]
        if any(pads):
            x = x[(slice(None),) + tuple(slice(0, s) for s in size)]
        return self.proj(x.reshape(b, n, c))


class GlobalSubSampleAttention(nn.Module):
    """GSA: every query attends to all keys, computed from spatially sub-sampled tokens.

    ``forward(x [B, N, dim], size)`` -> ``[B, N, dim]``. With ``sr_ratio > 1``
    the keys/values come from ``norm(sr(x))``: a convolution with kernel =
    stride = ``sr_ratio`` on the two spatial axes and 1 on time (floor on
    sizes that do not divide), then ``LayerNorm`` (eps 1e-5, timm's default).
    ``ndim`` is the grid rank (2 images, 3 video). Keys ``q``, ``kv``,
    ``proj``, ``sr``, ``norm`` as timm.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, ndim: int = 2, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            kernel = (1,) * (ndim - 2) + (sr_ratio, sr_ratio)
            self.sr = _CONV[ndim](dim, dim, kernel, kernel)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = None
            self.norm = None

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr is not None:
            x = self.norm(grid_to_tokens(self.sr(tokens_to_grid(x, size))))
        k, v = self.kv(x).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


# --------------------------------------------------------------------------- blocks
class TwinsBlock(nn.Module):
    """Pre-norm transformer block with LSA (``window`` given) or GSA attention.

    ``forward(x [B, N, dim], size)`` -> ``[B, N, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 sr_ratio: int = 1, window: Sequence[int] | None = None, ndim: int = 2,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if window is not None:
            self.attn: nn.Module = LocallyGroupedAttention(dim, num_heads, window, attn_drop)
        else:
            self.attn = GlobalSubSampleAttention(dim, num_heads, sr_ratio, ndim, attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PosConv(nn.Module):
    """PEG (Chu et al., "Conditional Positional Encodings"): tokens + depthwise conv of their grid.

    ``forward(x [B, N, dim], size)`` -> ``[B, N, dim]``; the convolution
    (``proj``, kernel ``kernel``, zero padding ``kernel // 2``, bias) keeps the grid.
    """

    def __init__(self, dim: int, kernel: Sequence[int]) -> None:
        super().__init__()
        kernel = tuple(int(k) for k in kernel)
        self.proj = _CONV[len(kernel)](dim, dim, kernel, 1, tuple(k // 2 for k in kernel), groups=dim)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        grid = tokens_to_grid(x, size)
        return grid_to_tokens(self.proj(grid) + grid)


class StageEmbed(PatchEmbed):
    """A stage's patch embedding: convolution with kernel = stride = ``patch``, then ``LayerNorm`` (eps 1e-5).

    ``forward(grid [B, in_chans, *size])`` -> ``(tokens [B, N', embed_dim], size')``
    with ``size' = size // patch`` (floor). Keys ``proj``, ``norm`` as timm.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch: Sequence[int]) -> None:
        super().__init__(in_chans, embed_dim, patch, patch, (0,) * len(patch))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:  # type: ignore[override]
        tokens, size = self.flatten(self.proj(x))
        return self.norm(tokens), size


# --------------------------------------------------------------------------- model
class Twins(nn.Module):
    """Twins-PCPVT / Twins-SVT classifier for images or video.

    Input ``[B, in_chans, T, H, W]`` normalised frames (video) or
    ``[B, in_chans, H, W]`` (image model; a one-frame clip is accepted too);
    output logits ``[B, num_classes]``. Without position tables any size runs
    whose last stage keeps at least one token (``H, W >= 32``,
    ``T >= prod(temporal_patch)``). A video model given a 4-D image treats it
    as a still clip of ``temporal_patch[0]`` frames, the shortest clip its stem
    takes (with inflated weights: the image model's logits).

    Args (names as timm's ``Twins`` where they exist):
        num_classes: classifier size (0: ``forward`` returns pooled features).
        in_chans: input channels.
        embed_dims, num_heads, mlp_ratios, depths, sr_ratios: per stage width,
            heads, MLP ratio, blocks, and GSA key/value reduction in space.
        window_sizes: per stage LSA window in space (SVT); ``None`` for PCPVT
            (GSA in every block). SVT blocks alternate LSA (even) / GSA (odd).
        patch_size: spatial patch of the first stage (2 after, as timm).
        temporal_patch: per stage temporal patch (video); ``None`` builds the
            image model with 2-D convolutions (timm's checkpoints load as is).
        temporal_window: LSA window in time, in token frames (clamped to the
            clip; the default 8 spans a 16-frame clip as Video Swin's 8x7x7).
        temporal_peg: PEG kernel in time (video; odd, zero-padded ``// 2``).
        drop_path_rate: stochastic depth of the last block (linear from 0).
        attn_drop_rate, proj_drop_rate: attention / MLP dropout.
        head_dropout: dropout before the classifier (timm ``drop_rate``).
        num_frames, crop_size: the clip the variant is configured for (the
            registry's protocol; recorded, the network itself takes any size).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        window_sizes: Sequence[int] | None = None,
        patch_size: int = 4,
        temporal_patch: Sequence[int] | None = None,
        temporal_window: int = 8,
        temporal_peg: int = 3,
        drop_path_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        head_dropout: float = 0.0,
        num_frames: int | None = None,
        crop_size: int | None = None,
    ) -> None:
        super().__init__()
        stages = len(depths)
        per_stage = {"embed_dims": embed_dims, "num_heads": num_heads, "mlp_ratios": mlp_ratios,
                     "sr_ratios": sr_ratios, **({"window_sizes": window_sizes} if window_sizes is not None else {}),
                     **({"temporal_patch": temporal_patch} if temporal_patch is not None else {})}
        for name, values in per_stage.items():
            if len(values) != stages:
                raise ValueError(f"{name} {tuple(values)} needs one entry per stage ({stages} stages)")
        if min(depths) < 1:
            raise ValueError(f"depths must be positive block counts per stage, got {tuple(depths)}")
        video = temporal_patch is not None
        if not video and num_frames not in (None, 1):
            raise ValueError(f"num_frames={num_frames}: an image model takes one frame (use a video variant)")
        if video and temporal_peg % 2 == 0:
            raise ValueError(f"temporal_peg must be odd (zero padding // 2 keeps the clip length), got {temporal_peg}")
        self.ndim = 3 if video else 2
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.crop_size = crop_size
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.depths = tuple(int(d) for d in depths)
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.grad_checkpointing = False

        # Per-stage patch (time first for video) and the cumulative stride of each stage's grid.
        self.patches: list[tuple[int, ...]] = []
        strides, stride = [], [1] * self.ndim
        for i in range(stages):
            space = patch_size if i == 0 else 2
            self.patches.append(((int(temporal_patch[i]),) if video else ()) + (space, space))
            stride = [s * p for s, p in zip(stride, self.patches[i])]
            strides.append(tuple(stride))
        #: Per stage: ``num_chs``, ``reduction``, ``stride`` ``(t, h, w)`` (``t = 1`` for image models), ``module``.
        self.feature_info = stage_feature_info(self.embed_dims, range(stages), strides)

        drop_rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.patch_embeds = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.pos_block = nn.ModuleList()
        prev, cur = in_chans, 0
        for i in range(stages):
            dim = self.embed_dims[i]
            self.patch_embeds.append(StageEmbed(prev, dim, self.patches[i]))
            window = None
            if window_sizes is not None:
                window = ((int(temporal_window),) if video else ()) + (int(window_sizes[i]),) * 2
            self.blocks.append(nn.ModuleList([
                TwinsBlock(dim, int(num_heads[i]), float(mlp_ratios[i]), drop_rates[cur + j], int(sr_ratios[i]),
                           window if j % 2 == 0 else None, self.ndim, attn_drop_rate, proj_drop_rate)
                for j in range(self.depths[i])
            ]))
            self.pos_block.append(PosConv(dim, ((int(temporal_peg),) if video else ()) + (3, 3)))
            prev, cur = dim, cur + self.depths[i]
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head = ClassificationHead(self.num_features, num_classes, head_dropout)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # timm's initialisation: truncated-normal linears, He-normal (fan-out) convolutions.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
            fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- running the stages ---------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the first stem expects it: ``[B, C, *size]`` of rank ``self.ndim``."""
        if self.ndim == 2 and x.dim() == 5 and x.shape[2] == 1:
            x = x.squeeze(2)  # a one-frame clip for an image model
        elif self.ndim == 3 and x.dim() == 4:
            x = x.unsqueeze(2).expand(-1, -1, self.patches[0][0], -1, -1)  # an image: a still clip
        if x.dim() != self.ndim + 2:
            want = "[B, C, T, H, W] (or [B, C, H, W])" if self.ndim == 3 else "[B, C, H, W] (or [B, C, 1, H, W])"
            raise ValueError(f"Twins expects {want}, got {list(x.shape)}")
        size = list(x.shape[2:])
        for i, patch in enumerate(self.patches):
            size = [n // p for n, p in zip(size, patch)]
            if min(size) < 1:
                raise ValueError(f"input {list(x.shape)} is too small: stage {i + 1} would have no tokens "
                                 f"(strides {self.feature_info[-1]['stride'][3 - self.ndim:]})")
        return x

    def _stage(self, i: int, x: torch.Tensor, size: Sequence[int] | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Stage ``i``: the input grid (stage 0) or the previous stage's tokens -> its tokens and grid size."""
        grid = x if size is None else tokens_to_grid(x, size)
        x, size = self.patch_embeds[i](grid)
        for j, block in enumerate(self.blocks[i]):
            x = run_block(block, self.grad_checkpointing, x, size)
            if j == 0:
                x = self.pos_block[i](x, size)  # PEG after the first block
        return x, size

    @staticmethod
    def _to_map(x: torch.Tensor, size: Sequence[int], output_fmt: str, clip: bool) -> torch.Tensor:
        """Tokens -> the requested output: a grid ``[B, C, *size]`` (channels-last memory; an image
        model's map gains ``T = 1`` when the input was a clip) or the tokens themselves (``"NLC"``)."""
        if output_fmt == "NLC":
            return x
        grid = tokens_to_grid(x, size)
        return grid.unsqueeze(2) if clip and grid.dim() == 4 else grid

    # -- API (timm's contract) ------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed tokens of the last stage ``[B, N_4, num_features]`` (raster order over its grid)."""
        x, size = self._check_input(x), None
        for i in range(len(self.blocks)):
            x, size = self._stage(i, x, size)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``[B, N, num_features]`` -> mean over tokens -> dropout -> ``head.fc`` logits
        ``[B, num_classes]`` (``pre_logits``: the pooled ``[B, num_features]``)."""
        x = self.head.dropout(x.mean(dim=1))
        return x if pre_logits else self.head.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised clips ``[B, C, T, H, W]`` (images ``[B, C, H, W]``) -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCTHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps after the selected stages (timm's ``forward_intermediates``).

        ``indices``: ``None`` all four stages, an ``int`` ``n`` the last ``n``,
        a sequence those stages (negative from the end). ``norm`` applies the
        final ``LayerNorm`` to the last stage's map (the norm is sized for it
        only, as timm). ``stop_early`` skips the stages after the last one
        taken. ``output_fmt="NCTHW"``: maps ``[B, C_i, T_i, H_i, W_i]``
        (channels-last in memory; image models give ``[B, C_i, H_i, W_i]`` for
        an image and ``[B, C_i, 1, H_i, W_i]`` for a one-frame clip, i.e. the
        input's layout); ``"NLC"``: raster-order tokens ``[B, N_i, C_i]``.
        ``C_i`` and the strides are ``feature_info[i]``.

        Returns the maps with ``intermediates_only``, else ``(final, maps)``
        with ``final`` what :meth:`forward_features` returns when every stage
        ran (the last run stage's un-normed tokens when it stopped early).
        """
        check_output_fmt(output_fmt)
        clip = x.dim() == 5
        take, max_index = feature_take_indices(len(self.blocks), indices)
        last = len(self.blocks) - 1
        stop = max_index if stop_early else last
        x, size = self._check_input(x), None
        maps: list[torch.Tensor] = []
        for i in range(stop + 1):
            x, size = self._stage(i, x, size)
            if i in take:
                maps.append(self._to_map(self.norm(x) if norm and i == last else x, size, output_fmt, clip))
        if intermediates_only:
            return maps
        return (self.norm(x) if stop == last else x), maps

    def get_classifier(self) -> nn.Module:
        """The classifier layer (``head.fc``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: pooled features)."""
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training memory for time)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that get no weight decay: the PEG convolutions (timm's choice)."""
        return {f"pos_block.{n}" for n, _ in self.pos_block.named_parameters()}


# --------------------------------------------------------------------------- checkpoint conversion
def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``twins_*`` state dict -> our keys.

    ``head.*`` -> ``head.fc.*`` and ``pos_block.i.proj.0.*`` -> ``pos_block.i.proj.*``; the rest is timm's.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("head.") and not key.startswith("head.fc."):
            key = "head.fc." + key[len("head."):]
        elif key.startswith("pos_block.") and ".proj.0." in key:
            key = key.replace(".proj.0.", ".proj.", 1)
        out[key] = value
    return out


#: Checkpoint format -> converter to our state-dict keys (read by :func:`videoapp.models.pretrained.import_checkpoint`).
CONVERTERS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "videoapp": keep_keys,
    "timm": convert_timm,
}


def detect_source(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Guess a Twins checkpoint's format from its key names: a :data:`CONVERTERS` key or ``None``."""
    keys = set(state_dict)
    if "patch_embeds.0.proj.weight" not in keys or "patch_embeds.0.norm.weight" not in keys:
        return None
    if "pos_block.0.proj.0.weight" in keys:
        return "timm"
    if "pos_block.0.proj.weight" in keys:
        return "videoapp"
    return None


# The pretrained layer (models/pretrained.py) finds the converters here, by registry entry.
register_converters(__name__, detect_source=detect_source, convert=CONVERTERS)


# --------------------------------------------------------------------------- variants
# timm's image hyper-parameters (DESIGN.md section 4).
_PCPVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1))
_SVT = dict(mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), window_sizes=(7, 7, 7, 7))
_SIZES: dict[str, dict[str, Any]] = {
    "pcpvt_s": dict(_PCPVT, depths=(3, 4, 6, 3)),
    "pcpvt_b": dict(_PCPVT, depths=(3, 4, 18, 3)),
    "pcpvt_l": dict(_PCPVT, depths=(3, 8, 27, 3)),
    "svt_s": dict(_SVT, embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 10, 4)),
    "svt_b": dict(_SVT, embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 18, 2)),
    "svt_l": dict(_SVT, embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 2, 18, 2)),
    # Small models for tests and 64 px training: 16..128 wide, two blocks per stage (one LSA + one GSA for SVT).
    "pcpvt_xxs": dict(_PCPVT, embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2)),
    "svt_xxs": dict(_SVT, embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2),
                    window_sizes=(4, 4, 4, 2)),
}
# Video: time patch 2 in the stem (16 frames -> 8 token frames), LSA over 8 token frames.
# (The clip protocol lives in the registry entries only: the network takes any size.)
_VIDEO = dict(temporal_patch=(2, 1, 1, 1), temporal_window=8, temporal_peg=3, num_classes=400)
_IMAGE = dict(temporal_patch=None, num_classes=1000)


def _build(size: str, layout: dict[str, Any], overrides: dict[str, Any]) -> Twins:
    return Twins(**{**_SIZES[size], **layout, **overrides})


_video = register_model("twins", num_frames=16, sampling_rate=4, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
_image = register_model("twins", num_frames=1, sampling_rate=1, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@_video
def twins_pcpvt_s_16x224(**kwargs: Any) -> Twins:
    """Twins-PCPVT-S video 16x4, 224 px: 64-512 wide, blocks 3-4-6-3, 23.8M params (inflate twins_pcpvt_s_224)."""
    return _build("pcpvt_s", _VIDEO, kwargs)


@_video
def twins_pcpvt_b_16x224(**kwargs: Any) -> Twins:
    """Twins-PCPVT-B video 16x4, 224 px: 64-512 wide, blocks 3-4-18-3, 43.5M params (inflate twins_pcpvt_b_224)."""
    return _build("pcpvt_b", _VIDEO, kwargs)


@_video
def twins_pcpvt_l_16x224(**kwargs: Any) -> Twins:
    """Twins-PCPVT-L video 16x4, 224 px: 64-512 wide, blocks 3-8-27-3, 60.7M params (inflate twins_pcpvt_l_224)."""
    return _build("pcpvt_l", _VIDEO, kwargs)


@_video
def twins_svt_s_16x224(**kwargs: Any) -> Twins:
    """Twins-SVT-S video 16x4, 224 px: 64-512 wide, blocks 2-2-10-4, 23.8M params (inflate twins_svt_s_224)."""
    return _build("svt_s", _VIDEO, kwargs)


@_video
def twins_svt_b_16x224(**kwargs: Any) -> Twins:
    """Twins-SVT-B video 16x4, 224 px: 96-768 wide, blocks 2-2-18-2, 55.6M params (inflate twins_svt_b_224)."""
    return _build("svt_b", _VIDEO, kwargs)


@_video
def twins_svt_l_16x224(**kwargs: Any) -> Twins:
    """Twins-SVT-L video 16x4, 224 px: 128-1024 wide, blocks 2-2-18-2, 98.7M params (inflate twins_svt_l_224)."""
    return _build("svt_l", _VIDEO, kwargs)


@_image
def twins_pcpvt_s_224(**kwargs: Any) -> Twins:
    """Twins-PCPVT-S image, 224 px (timm twins_pcpvt_small, IN-1k 81.1 top-1)."""
    return _build("pcpvt_s", _IMAGE, kwargs)


@_image
def twins_pcpvt_b_224(**kwargs: Any) -> Twins:
    """Twins-PCPVT-B image, 224 px (timm twins_pcpvt_base, IN-1k 82.7 top-1)."""
    return _build("pcpvt_b", _IMAGE, kwargs)


@_image
def twins_pcpvt_l_224(**kwargs: Any) -> Twins:
    """Twins-PCPVT-L image, 224 px (timm twins_pcpvt_large, IN-1k 83.1 top-1)."""
    return _build("pcpvt_l", _IMAGE, kwargs)


@_image
def twins_svt_s_224(**kwargs: Any) -> Twins:
    """Twins-SVT-S image, 224 px (timm twins_svt_small, IN-1k 81.7 top-1)."""
    return _build("svt_s", _IMAGE, kwargs)


@_image
def twins_svt_b_224(**kwargs: Any) -> Twins:
    """Twins-SVT-B image, 224 px (timm twins_svt_base, IN-1k 83.2 top-1)."""
    return _build("svt_b", _IMAGE, kwargs)


@_image
def twins_svt_l_224(**kwargs: Any) -> Twins:
    """Twins-SVT-L image, 224 px (timm twins_svt_large, IN-1k 83.7 top-1)."""
    return _build("svt_l", _IMAGE, kwargs)


_xxs = register_model("twins", num_frames=8, sampling_rate=8, crop_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@_xxs
def twins_pcpvt_xxs_8x64(**kwargs: Any) -> Twins:
    """Twins-PCPVT-XXS video 8 frames, 64 px: 16-128 wide, blocks 2-2-2-2, 0.75M params (tests, small models).

    At 64 px the stage grids are 4 x 16 x 16, 4 x 8 x 8, 4 x 4 x 4 and
    4 x 2 x 2 tokens; GSA reduces keys to 4 x 2 x 2 in every stage.
    """
    return _build("pcpvt_xxs", _VIDEO, kwargs)


@_xxs
def twins_svt_xxs_8x64(**kwargs: Any) -> Twins:
    """Twins-SVT-XXS video 8 frames, 64 px: 16-128 wide, blocks 2-2-2-2, 0.68M params (tests, small models).

    LSA windows of 4 x 4 tokens (16 x 16 px in stage 1) over all 4 token frames;
    in stages 3-4 the window is the whole 4 x 4 / 2 x 2 grid.
    """
    return _build("svt_xxs", _VIDEO, kwargs)
