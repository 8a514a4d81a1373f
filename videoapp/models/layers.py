"""Dimension-generic building blocks shared by the model families.

Everything here works for 2-D images and 3-D video alike: the number of
spatial dimensions is taken from the kernel / size tuples, never hard-coded.

Token layout convention: a grid of ``N = prod(size)`` tokens is ``[B, N, C]``
with the spatial index in row-major order (``t, h, w`` for video). Its grid
view ``[B, C, *size]`` is *channels-last* in memory, so moving between the two
with :func:`tokens_to_grid` / :func:`grid_to_tokens` is a free view and
convolutions / pooling run in oneDNN's fast channels-last kernels without any
permute-and-copy (the main pooling cost in the reference implementations).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PatchEmbed",
    "Mlp",
    "DropPath",
    "drop_path",
    "tokens_to_grid",
    "grid_to_tokens",
    "conv_nd",
    "max_pool_nd",
    "feature_take_indices",
    "check_output_fmt",
    "stage_feature_info",
    "run_block",
]


def conv_nd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Sequence[int] | int = 1,
            padding: Sequence[int] | int = 0, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` or ``F.conv3d`` chosen by the weight's rank (``[C_out, C_in/groups, *kernel]``)."""
    fn = F.conv3d if weight.dim() == 5 else F.conv2d if weight.dim() == 4 else F.conv1d
    return fn(x, weight, bias, stride, padding, 1, groups)


def max_pool_nd(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """Max pooling over the trailing ``len(kernel)`` dimensions of ``x`` (``[B, C, *size]``)."""
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(x, tuple(kernel), tuple(stride), tuple(padding))


def tokens_to_grid(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """View tokens ``[B, N, C]`` (``N = prod(size)``) as a grid ``[B, C, *size]``.

    The result shares memory with ``x`` and is channels-last, i.e. what
    oneDNN's and cuDNN's channels-last convolution / pooling kernels consume
    without a layout copy (exactly so when ``x`` is contiguous per sample).
    """
    b, n, c = x.shape
    return x.view(b, *size, c).movedim(-1, 1)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Grid ``[B, C, *size]`` to tokens ``[B, N, C]``; a free view for channels-last grids."""
    return x.movedim(1, -1).flatten(1, -2)


class PatchEmbed(nn.Module):
    """Patchify stem: one strided convolution, ``Conv2d`` or ``Conv3d`` by ``len(kernel)``.

    ``forward``: ``[B, in_chans, *size]`` -> ``[B, embed_dim, *size']`` with
    ``size'[i] = (size[i] + 2 * padding[i] - kernel[i]) // stride[i] + 1``.
    Use :meth:`flatten` (or :func:`grid_to_tokens`) for ``[B, N, embed_dim]`` tokens.
    The convolution lives at ``proj`` (SlowFast / timm key ``patch_embed.proj.*``).
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]) -> None:
        super().__init__()
        if not len(kernel) == len(stride) == len(padding):
            raise ValueError(f"kernel {kernel}, stride {stride} and padding {padding} must have the same length")
        conv = {2: nn.Conv2d, 3: nn.Conv3d}.get(len(kernel))
        if conv is None:
            raise ValueError(f"PatchEmbed supports 2-D or 3-D kernels, got {tuple(kernel)}")
        self.proj = conv(in_chans, embed_dim, tuple(kernel), tuple(stride), tuple(padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    @staticmethod
    def flatten(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``[B, C, *size]`` -> (``[B, N, C]`` tokens, ``size``); a view when ``x`` is channels-last."""
        return grid_to_tokens(x), tuple(x.shape[2:])


class Mlp(nn.Module):
    """Transformer MLP: ``fc1 -> act -> drop -> fc2 -> drop``; ``[..., in] -> [..., out]``.

    Keys ``fc1.*`` / ``fc2.*`` as in SlowFast and timm.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole samples (dim 0) with probability ``p``, scale the rest by ``1/(1-p)``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (per-sample stochastic depth; identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------- the model contract
def feature_take_indices(num_stages: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Which stages ``forward_intermediates`` returns (timm's rule): ``(sorted stage indices, the largest)``.

    ``None``: every stage; an ``int`` ``n``: the last ``n`` stages; a sequence:
    those stages, negative ones counted from the end (``-1`` is the last).
    Out-of-range values are a ``ValueError`` naming the valid range.
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices}: take the last 1 to {num_stages} stages")
        take = list(range(num_stages - indices, num_stages))
    else:
        take = []
        for i in indices:
            idx = num_stages + int(i) if int(i) < 0 else int(i)
            if not 0 <= idx < num_stages:
                raise ValueError(f"stage index {i} is out of range for {num_stages} stages")
            take.append(idx)
        if not take:
            raise ValueError("indices is empty: name at least one stage")
        take = sorted(set(take))
    return take, max(take)


def check_output_fmt(output_fmt: str) -> str:
    """Validate ``forward_intermediates``' ``output_fmt``: ``"NCTHW"`` (grids) or ``"NLC"`` (tokens)."""
    if output_fmt not in ("NCTHW", "NLC"):
        raise ValueError(f"output_fmt must be 'NCTHW' (feature maps) or 'NLC' (tokens), got {output_fmt!r}")
    return output_fmt


def stage_feature_info(stage_dims: Sequence[int], stage_ends: Sequence[int],
                       strides: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """timm-style ``feature_info``: one dict per stage.

    ``num_chs`` (channels), ``reduction`` (spatial stride in pixels, as timm),
    ``stride`` (``(t, h, w)`` stride of the stage's map in input frames/pixels;
    image models report ``t = 1``) and ``module`` (the block whose output it is).
    """
    info = []
    for dim, end, stride in zip(stage_dims, stage_ends, strides):
        stride = (1,) * (3 - len(stride)) + tuple(int(s) for s in stride)
        info.append(dict(num_chs=int(dim), reduction=stride[-1], module=f"blocks.{end}", stride=stride))
    return info


def run_block(block: nn.Module, use_checkpoint: bool, *args: Any, **kwargs: Any) -> Any:
    """``block(*args, **kwargs)``, through ``torch.utils.checkpoint`` when ``use_checkpoint`` and autograd is on.

    Checkpointing keeps only the block's input and recomputes its inside during
    backward (less activation memory, about one more forward of compute); the
    RNG state is replayed, so drop-path and dropout draw the same masks.
    """
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)
