"""MViTv2 for video (Li et al., "MViTv2: Improved Multiscale Vision Transformers", CVPR 2022).

The network computes exactly what SlowFast's ``MViT`` (and torchvision's
``mvit_v2_s`` port) compute for the official MViTv2 video configurations:

- stem: ``Conv3d`` kernel (3, 7, 7), stride (2, 4, 4), padding (1, 3, 3); a
  learned cls token is prepended; no absolute position embedding;
- every block pools Q, K and V with a depthwise ``Conv3d`` (kernel (3, 3, 3),
  one kernel shared by all heads) followed by ``LayerNorm(head_dim)``. Q is
  strided (1, 2, 2) at the first block of stages 2-4, K/V start at stride
  (1, 8, 8) that is divided by each Q stride ("adaptive"). The cls token is
  never pooled (it is taken out and put back in front). (The L layout pools Q
  at stage starts only, with K/V stride (2, 4, 4); see ``mvitv2_l_40x3``.);
- decomposed relative position: ``q_i . R_t[t_i, t_j] + q_i . R_h[h_i, h_j] +
  q_i . R_w[w_i, w_j]`` added to the attention logits, with SlowFast's
  distance scaling when the query and key grids differ and linear
  interpolation of the tables for inputs of another size than configured;
- residual pooling (pooled Q added to the attention output, not on the cls
  row), channel doubling inside the attention (``dim_mul_in_att``, S/B) or in
  the MLP of the block before (L), skip path max-pooled with kernel ``stride + 1``;
- final ``LayerNorm`` (eps 1e-6) on the cls token, dropout 0.5, linear head.

Speed (same numbers, different schedule). Three things make it faster than the
reference on CPU while keeping float32 results equal to rounding:

1. Attention runs in ``F.scaled_dot_product_attention`` (the fused CPU flash
   kernel). The relative-position term goes in as its float ``attn_mask``,
   built by broadcast-adding the three small per-axis tables into one buffer,
   instead of materialising ``[B, heads, Nq, Nk]`` logits and adding views.
2. Tokens stay ``[B, N, C]`` and are pooled as channels-last grids (see
   :mod:`videoapp.models.layers`): no permute/contiguous copies. Q, K and V
   therefore have separate projections (the converters split the reference's
   fused ``qkv``), and the shared per-head pooling kernel is repeated over
   heads and applied as one depthwise convolution over all channels.
3. After pooling, the rest of a block (attention, projection, MLP, residuals)
   is independent per query row; in inference it runs over row chunks of about
   16 MiB per intermediate, so the big intermediates (mask, MLP hidden) are never
   allocated at full size. Under autocast the chunks share one low-precision
   copy of each Linear weight (autocast does not cache its casts under
   ``inference_mode``), and the norm1 output is cast once for Q, K and V
   (same values as autocast's own casts). In ``forward`` without autograd the last block
   computes only the cls row, all the head reads (the result equals
   ``forward_head(forward_features(x))``, which computes every row).

Our state-dict keys are SlowFast's, except ``attn.q/k/v`` (split ``qkv``) and
``head.fc`` (``head.projection``); :data:`CONVERTERS` maps torchvision,
SlowFast and timm checkpoints onto them.

The ImageNet MViTv2 models (timm ``mvitv2_{tiny,small,base,large}``, the
official ``MViTv2_*_in1k.pyth``) have another layout: no cls token (mean of
the final-normed tokens), K/V stride 4 in stage 1, and for L the width change
in the MLP. ``mvitv2_{tiny,small,base,large}_16x224`` are those networks in 3-D
(K/V stride (1, 4, 4), Q stride (1, 2, 2), every kernel with a time axis), the
targets of :mod:`videoapp.models.inflate`.
"""
from __future__ import annotations

import functools
import math
import re
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
    conv_nd,
    feature_take_indices,
    grid_to_tokens,
    max_pool_nd,
    run_block,
    stage_feature_info,
    tokens_to_grid,
)
from videoapp.models.registry import (
    keep_keys,
    IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, register_converters, register_model,
)

__all__ = [
    "MViTv2",
    "MultiScaleBlock",
    "MultiScaleAttention",
    "CONVERTERS",
    "detect_source",
    "convert_torchvision",
    "convert_slowfast",
    "convert_timm",
    "resize_rel_pos",
    "mvitv2_s_16x4",
    "mvitv2_b_32x3",
    "mvitv2_l_40x3",
    "mvitv2_l_40x3_ssv2",
    "mvitv2_tiny_16x224",
    "mvitv2_small_16x224",
    "mvitv2_base_16x224",
    "mvitv2_large_16x224",
    "mvitv2_xxs_8x64",
]

# Inference processes the per-row part of a block in chunks whose largest
# intermediate (attention mask or MLP hidden) holds about _CHUNK_ELEMENTS
# elements (16 MiB in float32): below glibc's 32 MiB mmap threshold (fresh
# mmapped buffers cost a page fault per 4 KiB), and large enough that the
# fixed cost of each call (oneDNN's weight reorder for bf16, waking the
# threads) stays small: on MViTv2-S 16x224 (2 threads, AMX Xeon) 1 << 22
# was 5 % faster in float32 and 12 % under bf16 autocast than 1 << 20, and
# as fast as no chunks in bf16 (1 << 24) while 5 % faster in float32. At
# least _CHUNK_MIN_ROWS query rows, which the CPU flash-attention kernel
# needs for its large (256-row) query blocks.
_CHUNK_ELEMENTS = 1 << 22
_CHUNK_MIN_ROWS = 256


def _prod(xs: Sequence[int]) -> int:
    return math.prod(int(x) for x in xs)


def _untouched(m: nn.Module | None, cls: type = nn.Linear) -> bool:
    # Only an untouched module of exactly ``cls`` may be bypassed (an nn.Linear computed with
    # F.linear on pre-cast weights, an Mlp unrolled): a subclass, an adapter or a hook would be skipped.
    return type(m) is cls and not (m._forward_hooks or m._forward_pre_hooks)


def _autocast_weights(layers: Sequence[nn.Module | None], device_type: str) -> dict[nn.Module, tuple]:
    """``{layer: (weight, bias)}`` cast once to the autocast dtype, for the plain ``nn.Linear`` among ``layers``.

    Empty unless autocast is on for ``device_type``. Autocast casts a Linear's
    float32 weight on every call and, under ``inference_mode``, does not cache
    the cast: running a block's rows in chunks would cast each weight once per
    chunk. These are the same casts (same rounding), so results are bitwise equal.
    """
    if not torch.is_autocast_enabled(device_type):
        return {}
    dtype = torch.get_autocast_dtype(device_type)
    return {m: (m.weight.to(dtype), None if m.bias is None else m.bias.to(dtype))
            for m in layers if _untouched(m) and m.weight.dtype != dtype}


def _linear(layer: nn.Module, x: torch.Tensor, cast: dict[nn.Module, tuple] | None) -> torch.Tensor:
    """``layer(x)``, with the weights from ``cast`` (:func:`_autocast_weights`) where it has them."""
    wb = cast.get(layer) if cast else None
    return layer(x) if wb is None else F.linear(x, *wb)


# --------------------------------------------------------------------------- relative position
@functools.lru_cache(maxsize=512)
def _rel_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    """Table row for each (query, key) position pair along one axis: long ``[q_size, k_size]``.

    SlowFast's formula, evaluated in float32 exactly as there: when the query
    and key grids differ (pooled K/V), both coordinates are scaled to the finer
    grid before taking the difference, and the result is truncated.
    """
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    # Cached across calls: must not be an inference-mode tensor, or a later
    # autograd forward could not use it.
    with torch.inference_mode(False):
        dist = (torch.arange(q_size, dtype=torch.float32, device="cpu")[:, None] * q_ratio
                - torch.arange(k_size, dtype=torch.float32, device="cpu")[None, :] * k_ratio)
        dist += (k_size - 1) * k_ratio
        return dist.long().to(device)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a relative-position table ``[L, C]`` to ``[length, C]`` (``table`` itself if ``L == length``).

    SlowFast's ``get_rel_pos`` (and timm's checkpoint filter): used at run time
    for inputs of another size and by inflation for another crop size.
    """
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()


def _rel_table(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Per-axis relative-position embeddings ``[q_size, k_size, head_dim]``.

    ``table`` is ``[L, head_dim]``; it is linearly interpolated to
    ``2 * max(q_size, k_size) - 1`` rows when the input is not the configured
    size (SlowFast ``get_rel_pos``).
    """
    table = resize_rel_pos(table, 2 * max(q_size, k_size) - 1)
    return table[_rel_index(q_size, k_size, table.device)]


# --------------------------------------------------------------------------- attention
class MultiScaleAttention(nn.Module):
    """Pooling attention with decomposed relative position and residual pooling.

    Input ``[B, P + T*H*W, dim]`` (``P`` = 1 with the cls token first, else 0)
    on the grid ``thw``; output ``[B, P + T'*H'*W', dim_out]`` on the Q-pooled grid ``thw'``.
    ``input_size`` (the configured grid) only sizes the relative-position tables.
    Parameters: ``q``, ``k``, ``v``, ``proj`` (Linear); ``pool_q/k/v`` (depthwise
    ``Conv3d`` weight ``[head_dim, 1, *kernel]``, shared by the heads) with
    ``norm_q/k/v`` (``LayerNorm(head_dim)``); ``rel_pos_h/w/t`` (``[L, head_dim]``).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_size: Sequence[int],
        kernel_q: Sequence[int] = (3, 3, 3),
        kernel_kv: Sequence[int] = (3, 3, 3),
        stride_q: Sequence[int] = (1, 1, 1),
        stride_kv: Sequence[int] = (1, 1, 1),
        qkv_bias: bool = True,
        rel_pos: bool = True,
        residual_pooling: bool = True,
        norm_eps: float = 1e-6,
        has_cls: bool = True,
    ) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out {dim_out} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.dim_out = dim_out
        self.residual_pooling = residual_pooling
        # Leading tokens that are never pooled and carry no position: the cls token (1) or none (0).
        self.num_prefix = 1 if has_cls else 0
        self.q = nn.Linear(dim, dim_out, bias=qkv_bias)
        self.k = nn.Linear(dim, dim_out, bias=qkv_bias)
        self.v = nn.Linear(dim, dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        hd = self.head_dim

        def pool(kernel: Sequence[int], stride: Sequence[int]) -> tuple[nn.Module | None, nn.Module | None]:
            # As SlowFast: kernel 1 and stride 1 means no pooling (and no norm).
            if _prod(kernel) == 1 and _prod(stride) == 1:
                return None, None
            conv = nn.Conv3d(hd, hd, tuple(kernel), tuple(stride), tuple(k // 2 for k in kernel), groups=hd, bias=False)
            return conv, nn.LayerNorm(hd, eps=norm_eps)

        self.pool_q, self.norm_q = pool(kernel_q, stride_q)
        self.pool_k, self.norm_k = pool(kernel_kv, stride_kv)
        self.pool_v, self.norm_v = pool(kernel_kv, stride_kv)

        self.rel_pos = rel_pos
        if rel_pos:
            size = max(input_size[1:])
            q_size = size // stride_q[1]
            kv_size = size // stride_kv[1]
            spatial = 2 * max(q_size, kv_size) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial, hd))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial, hd))
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * input_size[0] - 1, hd))
            for p in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
                nn.init.trunc_normal_(p, std=0.02)

    # -- whole-sequence part ------------------------------------------------
    def _pool_tokens(self, tokens: torch.Tensor, thw: Sequence[int], conv: nn.Module | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Depthwise-pool tokens ``[B, N, C]`` on grid ``thw`` -> (``[B, N', C]``, ``thw'``); channels-last, no copies."""
        if conv is None:
            return tokens, tuple(thw)
        weight = conv.weight
        if self.num_heads > 1:
            # One kernel shared by the heads == a depthwise conv over all channels.
            weight = weight.repeat(self.num_heads, 1, 1, 1, 1)
        grid = conv_nd(tokens_to_grid(tokens, thw), weight, None, conv.stride, conv.padding, groups=tokens.shape[-1])
        return grid_to_tokens(grid), tuple(grid.shape[2:])

    def _heads(self, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, heads, head_dim]``, normalised per head when pooled."""
        x = x.unflatten(-1, (self.num_heads, self.head_dim))
        if norm is not None:
            x = F.layer_norm(x, (self.head_dim,), norm.weight, norm.bias, norm.eps)
        return x

    def project_pool(self, x: torch.Tensor, thw: Sequence[int], cls_only: bool = False):
        """Project and pool ``x`` ``[B, P+N, dim]`` (cls first when ``P`` = 1) into per-head Q, K, V.

        Returns ``(q_cls, q_tok, k, v, q_thw, k_thw)``: ``q_cls`` ``[B, 1, heads,
        head_dim]`` (the cls token is never pooled; ``None`` without one),
        ``q_tok`` ``[B, Nq, heads, head_dim]`` on the pooled grid ``q_thw``
        (``None`` with ``cls_only``), ``k``/``v`` ``[B, P+Nk, heads, head_dim]``
        with the cls key first. Keeping the cls query apart saves concatenating the large Q.
        """
        p = self.num_prefix
        if cls_only:
            if not p:
                raise ValueError("cls_only needs a cls token")
            q = self.q(x[:, :1])
            q_tok, q_thw = None, self.pooled_size(thw, self.pool_q)
        else:
            q = self.q(x)
            q_tok, q_thw = self._pool_tokens(q[:, p:], thw, self.pool_q)
            q_tok = self._heads(q_tok, self.norm_q)
        q_cls = self._heads(q[:, :1], self.norm_q) if p else None
        kv = []
        for proj, conv, norm in ((self.k, self.pool_k, self.norm_k), (self.v, self.pool_v, self.norm_v)):
            y = proj(x)
            tok, k_thw = self._pool_tokens(y[:, p:], thw, conv)
            if conv is not None:
                y = torch.cat((y[:, :p], tok), dim=1) if p else tok
            kv.append(self._heads(y, norm))
        return q_cls, q_tok, kv[0], kv[1], q_thw, k_thw

    @staticmethod
    def pooled_size(thw: Sequence[int], conv: nn.Module | None) -> tuple[int, ...]:
        """Grid size after ``conv`` (identity when ``None``)."""
        if conv is None:
            return tuple(thw)
        return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(thw, conv.kernel_size, conv.stride, conv.padding))

    def rel_pos_terms(self, q_tok: torch.Tensor, q_thw: Sequence[int], k_thw: Sequence[int]):
        """Per-axis relative-position logits of the query tokens.

        ``q_tok``: pooled, normed, unscaled queries ``[B, Nq, heads, head_dim]``.
        Returns ``(rt, rh, rw)``, each ``[B, Nq, heads, k_t | k_h | k_w]``, e.g.
        ``rh[b, i, n, j] = q_tok[b, i, n] . R_h[h_i, j]``; ``None`` without rel pos.
        """
        if not self.rel_pos:
            return None
        b, n, heads, hd = q_tok.shape
        qt, qh, qw = q_thw
        kt, kh, kw = k_thw
        r = q_tok.view(b, qt, qh, qw, heads, hd)
        rt = torch.einsum("btyxnc,tkc->btyxnk", r, _rel_table(self.rel_pos_t, qt, kt))
        rh = torch.einsum("btyxnc,ykc->btyxnk", r, _rel_table(self.rel_pos_h, qh, kh))
        rw = torch.einsum("btyxnc,xkc->btyxnk", r, _rel_table(self.rel_pos_w, qw, kw))
        return rt.reshape(b, n, heads, kt), rh.reshape(b, n, heads, kh), rw.reshape(b, n, heads, kw)

    @staticmethod
    def rel_pos_mask(rel, start: int, stop: int, num_keys: int, inplace: bool = False) -> torch.Tensor:
        """Float attention mask ``[B, heads, stop-start, num_keys]`` for query tokens ``[start, stop)``.

        The cls key's column (the first, when ``num_keys`` counts one) is zero;
        the rest is ``rt + rh + rw`` broadcast over the key grid (keys in
        ``t, h, w`` order), one write per element.
        ``inplace`` writes the sum straight into the mask buffer (no autograd).
        """
        rt, rh, rw = rel
        b, _, heads, kt = rt.shape
        kh, kw = rh.shape[-1], rw.shape[-1]
        prefix = num_keys - kt * kh * kw
        if prefix not in (0, 1):
            raise RuntimeError(f"relative position expects {kt * kh * kw} grid keys, got {num_keys} keys")
        n = stop - start
        t = rt[:, start:stop].transpose(1, 2)[..., :, None, None]
        hw = (rh[:, start:stop, :, :, None] + rw[:, start:stop, :, None, :]).transpose(1, 2)[..., None, :, :]
        if not inplace:
            return F.pad((t + hw).flatten(-3), (prefix, 0))  # flatten, not reshape(b, ...): keeps the ONNX graph batch-free
        mask = rt.new_empty(b, heads, n, num_keys)
        mask[..., :prefix] = 0
        torch.add(t, hw, out=mask[..., prefix:].view(b, heads, n, kt, kh, kw))
        return mask

    # -- per-row part ---------------------------------------------------------
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               residual: bool, inplace: bool = False, cast: dict[nn.Module, tuple] | None = None) -> torch.Tensor:
        """Attention for query rows ``q`` ``[B, n, heads, head_dim]``, then residual pooling and ``proj``.

        ``k``, ``v``: ``[B, Nk, heads, head_dim]``; ``mask``: ``[B, heads, n, Nk]``
        relative-position logits or ``None``; ``residual`` adds ``q`` (query
        tokens, not the cls row). Returns ``[B, n, dim_out]``. ``inplace`` reuses
        buffers (no autograd); ``cast``: pre-cast ``proj`` weights (:func:`_autocast_weights`).
        """
        # SDPA's default scale head_dim**-0.5 applies to q.k only; the mask is
        # added unscaled, exactly like the reference's rel-pos term.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        out = out.transpose(1, 2)  # [B, n, heads, hd]
        if residual and self.residual_pooling:
            out = out.add_(q) if inplace else out + q
        return _linear(self.proj, out.flatten(2), cast)

    def forward(self, x: torch.Tensor, thw: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``[B, P+N, dim]`` on grid ``thw`` -> (``[B, P+N', dim_out]``, ``thw'``)."""
        q_cls, q_tok, k, v, q_thw, k_thw = self.project_pool(x, thw)
        rel = self.rel_pos_terms(q_tok, q_thw, k_thw)
        mask = None if rel is None else self.rel_pos_mask(rel, 0, q_tok.shape[1], k.shape[1])
        out = self.attend(q_tok, k, v, mask, True)
        if q_cls is not None:
            out = torch.cat((self.attend(q_cls, k, v, None, False), out), dim=1)
        return out, q_thw


# --------------------------------------------------------------------------- block
class MultiScaleBlock(nn.Module):
    """One MViTv2 block: ``x + attn(norm1(x))`` then ``+ mlp(norm2(.))``, with pooled skip.

    ``[B, P + T*H*W, dim]`` -> ``[B, P + T'*H'*W', dim_out]`` (``P`` = 1 with a
    cls token first, else 0). With
    ``dim_mul_in_att`` the channel change happens in the attention and the skip
    goes through ``proj(norm1(x))``; otherwise the MLP changes the width and the
    skip is ``proj(norm2(.))``. A Q stride > 1 max-pools the skip with kernel
    ``stride + 1``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_size: Sequence[int],
        kernel_q: Sequence[int] = (3, 3, 3),
        kernel_kv: Sequence[int] = (3, 3, 3),
        stride_q: Sequence[int] = (1, 1, 1),
        stride_kv: Sequence[int] = (1, 1, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rel_pos: bool = True,
        residual_pooling: bool = True,
        dim_mul_in_att: bool = True,
        norm_eps: float = 1e-6,
        has_cls: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.dim_mul_in_att = dim_mul_in_att
        att_dim = dim_out if dim_mul_in_att else dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiScaleAttention(
            dim, att_dim, num_heads, input_size, kernel_q, kernel_kv, stride_q, stride_kv,
            qkv_bias=qkv_bias, rel_pos=rel_pos, residual_pooling=residual_pooling, norm_eps=norm_eps,
            has_cls=has_cls,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=norm_eps)
        self.mlp = Mlp(att_dim, int(att_dim * mlp_ratio), dim_out)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        if _prod(stride_q) > 1:
            self.skip_kernel = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.skip_stride = tuple(stride_q)
            self.skip_padding = tuple(k // 2 for k in self.skip_kernel)
        else:
            self.skip_kernel = None

    def _skip(self, x: torch.Tensor, xn: torch.Tensor, thw: Sequence[int],
              cls_only: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Skip path split as (cls row ``[B, 1, C]`` or ``None``, tokens ``[B, Nq, C]`` or ``None``)."""
        p = self.attn.num_prefix
        src = xn if (self.proj is not None and self.dim_mul_in_att) else x
        if cls_only:
            src = src[:, :1]
        if self.proj is not None and self.dim_mul_in_att:
            src = self.proj(src)
        if cls_only:
            return src, None
        tok = src[:, p:]
        if self.skip_kernel is not None:
            grid = max_pool_nd(tokens_to_grid(tok, thw), self.skip_kernel, self.skip_stride, self.skip_padding)
            tok = grid_to_tokens(grid)
        return (src[:, :1] if p else None), tok

    def _rows(self, q, k, v, mask, skip, residual: bool, inplace: bool, out: torch.Tensor | None = None,
              cast: dict[nn.Module, tuple] | None = None):
        """Block output for query rows ``q`` ``[B, n, heads, head_dim]``: ``[B, n, dim_out]`` (into ``out`` if given).

        ``cast``: pre-cast Linear weights for the chunked inference path (:func:`_autocast_weights`).
        """
        a = self.attn.attend(q, k, v, mask, residual, inplace=inplace, cast=cast)
        # In-place adds only where they keep the wider dtype (bf16 autocast mixes dtypes).
        y = a.add_(skip) if inplace and a.dtype == skip.dtype else skip + self.drop_path(a)
        yn = self.norm2(y)
        mlp = self.mlp
        if cast and mlp.fc1 in cast:
            # Mlp.forward on the pre-cast weights (its dropouts are off: cast is for inference only).
            z = _linear(mlp.fc2, mlp.act(_linear(mlp.fc1, yn, cast)), cast)
        else:
            z = self.drop_path(mlp(yn))
        if self.proj is not None and not self.dim_mul_in_att:
            y = _linear(self.proj, yn, cast)
        if out is not None:
            return torch.add(y, z, out=out)
        return z.add_(y) if inplace and z.dtype == y.dtype else y + z

    def forward(self, x: torch.Tensor, thw: Sequence[int], cls_only: bool = False) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``[B, P+N, dim]`` on grid ``thw`` -> (``[B, P+N', dim_out]``, ``thw'``).

        With ``cls_only`` only the cls row is computed (``[B, 1, dim_out]``):
        all a classifier needs from the last block (cls-token models only).
        """
        xn = self.norm1(x)
        attn, dev = self.attn, x.device.type
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.norm1.weight.requires_grad)
        # Autograd needs out-of-place ops, and drop-path one mask per sample: no chunks.
        inplace = not (needs_grad or self.training)
        if (inplace and torch.is_autocast_enabled(dev) and xn.dtype == torch.float32
                and all(_untouched(m) for m in (attn.q, attn.k, attn.v))
                and (self.proj is None or not self.dim_mul_in_att or _untouched(self.proj))):
            # Every reader of xn is a Linear that autocast would feed a low-precision copy of it:
            # make that copy once instead of once per q, k, v (and skip proj). Same values.
            xn = xn.to(torch.get_autocast_dtype(dev))
        q_cls, q_tok, k, v, q_thw, k_thw = self.attn.project_pool(xn, thw, cls_only)
        skip_cls, skip_tok = self._skip(x, xn, thw, cls_only)
        p = self.attn.num_prefix
        # The row part below runs once per chunk: cast its Linear weights once for all chunks.
        row_linears = (attn.proj,) + ((self.mlp.fc1, self.mlp.fc2) if _untouched(self.mlp, Mlp) else ())
        if not self.dim_mul_in_att:
            row_linears += (self.proj,)
        cast = _autocast_weights(row_linears, dev) if inplace else None
        cls_out = self._rows(q_cls, k, v, None, skip_cls, residual=False, inplace=inplace, cast=cast) if p else None
        if cls_only:
            return cls_out, q_thw
        rel = self.attn.rel_pos_terms(q_tok, q_thw, k_thw)
        b, rows = q_tok.shape[:2]
        num_k = k.shape[1]

        def mask(start: int, stop: int) -> torch.Tensor | None:
            return None if rel is None else self.attn.rel_pos_mask(rel, start, stop, num_k, inplace)

        if not inplace:
            tok_out = self._rows(q_tok, k, v, mask(0, rows), skip_tok, residual=True, inplace=False)
            return (torch.cat((cls_out, tok_out), dim=1) if p else tok_out), q_thw
        widest = max(self.attn.num_heads * num_k, self.mlp.fc1.out_features)
        step = rows if x.device.type != "cpu" else max(_CHUNK_MIN_ROWS, _CHUNK_ELEMENTS // (b * widest))
        out = None
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            args = (q_tok[:, start:stop], k, v, mask(start, stop), skip_tok[:, start:stop])
            if out is None:
                # The first chunk fixes the dtype (autocast may mix them).
                first = self._rows(*args, residual=True, inplace=True, cast=cast)
                out = first.new_empty(b, p + rows, first.shape[-1])
                if p:
                    out[:, :1] = cls_out
                out[:, p + start:p + stop] = first
            else:
                self._rows(*args, residual=True, inplace=True, out=out[:, p + start:p + stop], cast=cast)
        return out, q_thw


# --------------------------------------------------------------------------- model
def _triple(x: int | Sequence[int], n: int = 2) -> tuple[int, ...]:
    return (int(x),) * n if isinstance(x, int) else tuple(int(v) for v in x)


class MViTv2(nn.Module):
    """Spatio-temporal MViTv2 classifier (SlowFast ``MViT`` with the MViTv2 video settings).

    Input ``[B, in_chans, T, H, W]`` normalised frames (a 4-D ``[B, C, H, W]``
    image is a one-frame clip); output logits ``[B, num_classes]``.

    Args:
        num_classes: classifier size (0: ``forward`` returns features).
        in_chans: input channels.
        num_frames, crop_size: the configured clip (frames, pixels ``int`` or
            ``(H, W)``); they only size the relative-position tables, other
            sizes work through table interpolation.
        embed_dim, num_heads: width and heads of stage 1; both double at the
            first block of every later stage.
        depths: blocks per stage. Stage ``i > 0`` starts with a Q stride
            ``q_stride`` (SlowFast ``POOL_Q_STRIDE``) and the width/head doubling
            (``DIM_MUL`` / ``HEAD_MUL``).
        patch_kernel, patch_stride, patch_padding: the stem ``Conv3d``.
        pool_kernel: depthwise pooling kernel for Q, K, V (``POOL_KVQ_KERNEL``).
        q_stride: Q stride at stage starts: one ``(t, h, w)`` for all, or one per
            stage start (e.g. ``(1, 1, 1)`` last keeps the last map at stride 16, as
            SlowFast's dilated res5 for AVA detection).
        kv_stride_adaptive: K/V stride of the first stage, divided by each Q stride.
        q_pool_every_block: pool Q (stride 1) in every block, as MViTv2-S/B do;
            ``False`` pools Q only at stage starts (the MViTv2-L K400 layout).
        mlp_ratio: MLP hidden width / block width.
        qkv_bias: bias in the Q, K, V projections.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        head_dropout: dropout before the classifier.
        residual_pooling: add pooled Q to the attention output (MViTv2).
        dim_mul_in_att: change width inside the attention of the stage's first
            block (MViTv2-S/B) rather than in the MLP of the block before (MViTv2-L).
        rel_pos: decomposed relative position (MViTv2). ``False`` leaves the model
            without any positional term (an ablation; the official models use it).
        norm_eps: LayerNorm epsilon.
        use_cls_token: prepend a learned cls token and classify from it (the
            SlowFast video models); ``False`` classifies from the mean of the
            final-normed tokens (timm's ImageNet ``mvitv2_{tiny,small,base,large}``).
    """

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        num_frames: int = 16,
        crop_size: int | Sequence[int] = 224,
        embed_dim: int = 96,
        num_heads: int = 1,
        depths: Sequence[int] = (1, 2, 11, 2),
        patch_kernel: Sequence[int] = (3, 7, 7),
        patch_stride: Sequence[int] = (2, 4, 4),
        patch_padding: Sequence[int] = (1, 3, 3),
        pool_kernel: Sequence[int] = (3, 3, 3),
        q_stride: Sequence[int] | Sequence[Sequence[int]] = (1, 2, 2),
        kv_stride_adaptive: Sequence[int] = (1, 8, 8),
        q_pool_every_block: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.5,
        residual_pooling: bool = True,
        dim_mul_in_att: bool = True,
        rel_pos: bool = True,
        norm_eps: float = 1e-6,
        use_cls_token: bool = True,
    ) -> None:
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if not depths or min(depths) < 1:
            raise ValueError(f"depths must be positive block counts per stage, got {depths}")
        crop = _triple(crop_size)
        patch_stride = tuple(patch_stride)
        self.num_classes = num_classes
        self.patch_stride = patch_stride
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None

        depth = sum(depths)
        stage_starts = {sum(depths[:i]) for i in range(1, len(depths))}
        drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        input_size = [n // s for n, s in zip((num_frames, *crop), patch_stride)]
        kv_stride = list(kv_stride_adaptive)
        if isinstance(q_stride[0], int):
            q_stride = [q_stride] * (len(depths) - 1)
        if len(q_stride) != len(depths) - 1:
            raise ValueError(f"q_stride: one (t, h, w) per stage start ({len(depths) - 1}), got {q_stride}")
        stage_q_strides = iter(tuple(int(v) for v in s) for s in q_stride)
        dim, heads = embed_dim, num_heads
        self.blocks = nn.ModuleList()
        self.stage_ends: list[int] = []
        self.stage_dims: list[int] = []
        stride, stage_strides = list(patch_stride), []
        for i in range(depth):
            start = i in stage_starts
            stride_q = next(stage_q_strides) if start else (1, 1, 1)
            kernel_q = pool_kernel if (start or q_pool_every_block) else (1,) * len(pool_kernel)
            if start:
                heads *= 2
                kv_stride = [max(s // q, 1) for s, q in zip(kv_stride, stride_q)]
                stride = [a * q for a, q in zip(stride, stride_q)]
            if dim_mul_in_att:
                dim_out = dim * 2 if start else dim
            else:
                dim_out = dim * 2 if (i + 1) in stage_starts else dim
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, heads, input_size,
                kernel_q=kernel_q, kernel_kv=pool_kernel, stride_q=stride_q, stride_kv=tuple(kv_stride),
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_rates[i], rel_pos=rel_pos,
                residual_pooling=residual_pooling, dim_mul_in_att=dim_mul_in_att, norm_eps=norm_eps,
                has_cls=use_cls_token,
            ))
            input_size = [n // s for n, s in zip(input_size, stride_q)]
            dim = dim_out
            if (i + 1) in stage_starts or i == depth - 1:
                self.stage_ends.append(i)
                self.stage_dims.append(dim)
                stage_strides.append(tuple(stride))
        #: Per stage: ``num_chs``, ``reduction``, ``stride`` ``(t, h, w)``, ``module`` (see ``forward_intermediates``).
        self.feature_info = stage_feature_info(self.stage_dims, self.stage_ends, stage_strides)
        self.num_features = dim
        self.grad_checkpointing = False
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = ClassificationHead(dim, num_classes, head_dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- API (timm's contract) ------------------------------------------------
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if x.dim() == 4:
            x = x.unsqueeze(2)
        if x.dim() != 5:
            raise ValueError(f"expected input [B, C, T, H, W] or [B, C, H, W], got {tuple(x.shape)}")
        grid = self.patch_embed(x)
        tokens, thw = PatchEmbed.flatten(grid)
        if self.cls_token is None:
            return tokens, thw
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat((cls, tokens), dim=1), thw

    def _run(self, x: torch.Tensor, cls_only: bool, stages: list | None = None,
             last_block: int | None = None) -> torch.Tensor:
        """Stem and blocks ``0..last_block`` (default all): un-normed tokens ``[B, P+N, C]``.

        ``cls_only``: the last block computes the cls row only (``[B, 1, C]``).
        ``stages`` collects ``(tokens, thw)`` after each stage's last block.
        """
        x, thw = self._embed(x)
        last = len(self.blocks) - 1 if last_block is None else last_block
        for i, block in enumerate(self.blocks[:last + 1]):
            x, thw = run_block(block, self.grad_checkpointing, x, thw, cls_only=cls_only and i == last)
            if stages is not None and i in self.stage_ends:
                stages.append((x, thw))
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed tokens ``[B, P + T'*H'*W', num_features]``: the cls token first
        (``P`` = 1) when the model has one, then the last stage's grid in ``t, h, w`` raster order."""
        return self.norm(self._run(x, cls_only=False))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens from :meth:`forward_features` -> logits ``[B, num_classes]``.

        Pools the cls token (or, without one, the mean of the tokens) into
        ``[B, num_features]``, returned as is with ``pre_logits``; otherwise
        dropout + ``head.fc``.
        """
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised clips ``[B, C, T, H, W]`` (or images ``[B, C, H, W]``) -> logits ``[B, num_classes]``.

        Equals ``forward_head(forward_features(x))``. Without autograd a
        cls-token model lets the last block compute the cls row only (all the
        head reads); with autograd every row runs so every parameter gets a
        (zero) gradient, as DDP expects.
        """
        if self.cls_token is not None and not torch.is_grad_enabled():
            return self.forward_head(self.norm(self._run(x, cls_only=True)))
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
        """Feature maps of the stages (timm's ``forward_intermediates``).

        ``indices``: stages to return, ``None`` all, an ``int`` ``n`` the last
        ``n``, a list the given ones (negative from the end). Maps are
        ``[B, C_i, T_i, H_i, W_i]`` (``output_fmt="NCTHW"``, channels-last
        views of the tokens: ``.contiguous()`` if needed) or tokens
        ``[B, T_i*H_i*W_i, C_i]`` (``"NLC"``), cls token dropped; ``C_i`` and
        the stride are ``feature_info[i]`` (``T_i = ceil(T / stride_t)``, alike
        for H, W). A 4-D image gives ``T_i = 1``. ``norm`` applies the final
        ``LayerNorm`` to the last stage's map (the only one it is sized for; as
        SlowFast's detection head consumes it). ``stop_early`` skips the blocks
        after the last requested stage.

        Returns the maps with ``intermediates_only``, else ``(final, maps)``
        where ``final`` is :meth:`forward_features`' output (un-normed tokens of
        the last block run when ``stop_early`` ended before the last stage).
        """
        check_output_fmt(output_fmt)
        take, max_index = feature_take_indices(len(self.stage_ends), indices)
        last_stage = len(self.stage_ends) - 1
        stages: list = []
        x = self._run(x, cls_only=False, stages=stages,
                      last_block=self.stage_ends[max_index] if stop_early else None)
        p = 0 if self.cls_token is None else 1
        out = []
        for j in take:
            tokens, thw = stages[j]
            if norm and j == last_stage:
                tokens = self.norm(tokens)
            tokens = tokens[:, p:]
            out.append(tokens_to_grid(tokens, thw) if output_fmt == "NCTHW" else tokens)
        if intermediates_only:
            return out
        if len(stages) == len(self.stage_ends):
            x = self.norm(x)
        return x, out

    def get_classifier(self) -> nn.Module:
        """The classifier layer (``head.fc``: ``nn.Linear``, or ``nn.Identity`` with 0 classes)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: features only)."""
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of storing its activations (training memory).

        Same outputs and gradients (the RNG state is replayed for drop-path); costs about one more forward.
        """
        self.grad_checkpointing = bool(enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that conventionally get no weight decay (cls token, rel-pos tables)."""
        return {n for n, _ in self.named_parameters() if n == "cls_token" or ".rel_pos_" in n}


# --------------------------------------------------------------------------- checkpoint conversion
def _split_qkv(prefix: str, suffix: str, tensor: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    # The reference's fused qkv output is laid out [3, heads, head_dim]: q rows first.
    q, k, v = tensor.chunk(3, dim=0)
    out[f"{prefix}q.{suffix}"] = q.clone()
    out[f"{prefix}k.{suffix}"] = k.clone()
    out[f"{prefix}v.{suffix}"] = v.clone()


def convert_slowfast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SlowFast ``MViT`` ``model_state`` (MViTv2 S/B/L) -> our keys.

    Our names are SlowFast's except the fused ``blocks.N.attn.qkv.*`` (split
    into ``attn.q/k/v``) and ``head.projection.*`` (-> ``head.fc.*``). Other
    keys pass through unchanged (the strict import check reports strays).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("blocks.") and ".attn.qkv." in key:
            prefix, suffix = key.rsplit("qkv.", 1)
            _split_qkv(prefix, suffix, value, out)
        elif key.startswith("head.projection."):
            out["head.fc." + key[len("head.projection."):]] = value
        else:
            out[key] = value
    return out


_TORCHVISION_BLOCK_RENAMES = (
    ("attn.project.0.", "attn.proj."),
    ("attn.pool_q.pool.", "attn.pool_q."),
    ("attn.pool_k.pool.", "attn.pool_k."),
    ("attn.pool_v.pool.", "attn.pool_v."),
    ("attn.pool_q.norm_act.0.", "attn.norm_q."),
    ("attn.pool_k.norm_act.0.", "attn.norm_k."),
    ("attn.pool_v.norm_act.0.", "attn.norm_v."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.3.", "mlp.fc2."),
    ("project.", "proj."),
)


def convert_torchvision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``mvit_v2_s`` state dict -> our keys.

    ``conv_proj`` -> ``patch_embed.proj``, ``pos_encoding.class_token [D]`` ->
    ``cls_token [1, 1, D]``, fused ``attn.qkv`` split, ``attn.project.0`` ->
    ``attn.proj``, ``attn.pool_x.pool`` / ``.norm_act.0`` -> ``attn.pool_x`` /
    ``attn.norm_x``, ``mlp.0`` / ``mlp.3`` -> ``mlp.fc1`` / ``mlp.fc2``,
    ``project`` -> ``proj``, ``head.1`` -> ``head.fc``. Unknown keys pass through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("conv_proj."):
            out["patch_embed.proj." + key[len("conv_proj."):]] = value
        elif key == "pos_encoding.class_token":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key.startswith("head.1."):
            out["head.fc." + key[len("head.1."):]] = value
        elif key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            prefix = f"blocks.{idx}."
            if rest.startswith("attn.qkv."):
                _split_qkv(prefix + "attn.", rest[len("attn.qkv."):], value, out)
                continue
            for old, new in _TORCHVISION_BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[prefix + rest] = value
        else:
            out[key] = value
    return out


_TIMM_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)")


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``mvitv2_*`` (``MultiScaleVit``) state dict -> our keys.

    ``stages.S.blocks.J.*`` -> ``blocks.N.*`` numbered through the stages,
    fused ``attn.qkv`` split, ``shortcut_proj_attn`` / ``shortcut_proj_mlp`` ->
    ``proj`` (the width change of the attention or MLP; the model's
    ``dim_mul_in_att`` tells which). Tensors keep their shapes: a 2-D image
    checkpoint goes into a video model through :mod:`videoapp.models.inflate`.
    """
    depths: dict[int, int] = {}
    for key in state_dict:
        m = _TIMM_BLOCK.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    offsets, total = {}, 0
    for stage in sorted(depths):
        offsets[stage] = total
        total += depths[stage]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _TIMM_BLOCK.match(key)
        if not m:
            out[key] = value
            continue
        prefix = f"blocks.{offsets[int(m.group(1))] + int(m.group(2))}."
        rest = m.group(3)
        if rest.startswith("attn.qkv."):
            _split_qkv(prefix + "attn.", rest[len("attn.qkv."):], value, out)
            continue
        for old in ("shortcut_proj_attn.", "shortcut_proj_mlp."):
            if rest.startswith(old):
                rest = "proj." + rest[len(old):]
        out[prefix + rest] = value
    return out


#: Checkpoint format -> converter to our state-dict keys (read by :func:`videoapp.models.pretrained.import_checkpoint`).
CONVERTERS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "videoapp": keep_keys,
    "torchvision": convert_torchvision,
    "slowfast": convert_slowfast,
    "timm": convert_timm,
}


def detect_source(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Guess an MViTv2 checkpoint's format from its key names: a :data:`CONVERTERS` key or ``None``."""
    keys = set(state_dict)
    if "conv_proj.weight" in keys or "pos_encoding.class_token" in keys:
        return "torchvision"
    if "patch_embed.proj.weight" in keys and any(_TIMM_BLOCK.match(k) for k in keys):
        return "timm"
    if "patch_embed.proj.weight" not in keys:
        return None
    if "head.projection.weight" in keys or any(k.endswith(".attn.qkv.weight") for k in keys):
        return "slowfast"
    if any(k.endswith(".attn.q.weight") for k in keys):
        return "videoapp"
    return None


# The pretrained layer (models/pretrained.py) finds the converters here, by registry entry.
register_converters(__name__, detect_source=detect_source, convert=CONVERTERS)


# --------------------------------------------------------------------------- variants
def _build(defaults: dict[str, Any], overrides: dict[str, Any]) -> MViTv2:
    return MViTv2(**{**defaults, **overrides})


@register_model("mvitv2", num_frames=16, sampling_rate=4, crop_size=224, mean=KINETICS_MEAN, std=KINETICS_STD)
def mvitv2_s_16x4(**kwargs: Any) -> MViTv2:
    """MViTv2-S 16x4, 224 px: 96/1 heads, blocks 1-2-11-2, 34.5M params (K400 81.0 top-1)."""
    return _build(dict(num_frames=16, crop_size=224, embed_dim=96, num_heads=1, depths=(1, 2, 11, 2),
                       drop_path_rate=0.2), kwargs)


@register_model("mvitv2", num_frames=32, sampling_rate=3, crop_size=224, mean=KINETICS_MEAN, std=KINETICS_STD)
def mvitv2_b_32x3(**kwargs: Any) -> MViTv2:
    """MViTv2-B 32x3, 224 px: 96/1 heads, blocks 2-3-16-3, 51.2M params (K400 82.9 top-1)."""
    return _build(dict(num_frames=32, crop_size=224, embed_dim=96, num_heads=1, depths=(2, 3, 16, 3),
                       drop_path_rate=0.3), kwargs)


# The two released MViTv2-L checkpoints differ in layout. The paper and the
# SlowFast model zoo give 217.6M parameters for the Kinetics-400 model and 213.1M
# for the SSv2 one; of the two layouts in SlowFast's L configs, the one with the
# width change in the MLP, Q pooled at stage starts only and K/V stride 2-4-4
# (configs/SSv2/MVITv2_L_40x3.yaml) counts 217.66M with 400 classes, the one with
# the width change in the attention and Q pooled in every block
# (configs/Kinetics/MVITv2_L_40x3_test.yaml) 213.13M with 174 classes. The
# parameter counts are what the checkpoints hold, so each variant takes the
# layout whose count matches its checkpoint (the YAML files appear swapped).
_L_COMMON = dict(num_frames=40, crop_size=312, embed_dim=144, num_heads=2, depths=(2, 6, 36, 4), drop_path_rate=0.75)


@register_model("mvitv2", num_frames=40, sampling_rate=3, crop_size=312, mean=IMAGENET_MEAN, std=IMAGENET_STD)
def mvitv2_l_40x3(**kwargs: Any) -> MViTv2:
    """MViTv2-L 40x3, 312 px: 144/2 heads, blocks 2-6-36-4, 217.7M params (K400 86.1 top-1)."""
    return _build(dict(_L_COMMON, dim_mul_in_att=False, q_pool_every_block=False, kv_stride_adaptive=(2, 4, 4)), kwargs)


@register_model("mvitv2", num_frames=40, sampling_rate=3, crop_size=312, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                channel_order="bgr", sampling="uniform")
def mvitv2_l_40x3_ssv2(**kwargs: Any) -> MViTv2:
    """MViTv2-L 40x3, 312 px, SSv2 checkpoint layout: 174 classes, 213.1M params (SSv2 73.3 top-1)."""
    return _build(dict(_L_COMMON, num_classes=174), kwargs)


# The ImageNet layout in 3-D (timm ``MultiScaleVitCfg`` defaults): no cls token,
# mean pooling, K/V stride 4 in stage 1 (divided by each Q stride), never
# pooling across time, so inflated image weights see each frame as an image.
# Drop-path rates are the MViTv2 ImageNet recipes'; they do not affect inference.
_IMAGE_LAYOUT = dict(num_frames=16, crop_size=224, use_cls_token=False, kv_stride_adaptive=(1, 4, 4),
                     q_stride=(1, 2, 2), num_classes=400)
_inflated = register_model("mvitv2", num_frames=16, sampling_rate=4, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@_inflated
def mvitv2_tiny_16x224(**kwargs: Any) -> MViTv2:
    """MViTv2-T video 16x4, 224 px, ImageNet layout: 96/1 heads, blocks 1-2-5-2, 23.8M params (inflate timm mvitv2_tiny)."""
    return _build(dict(_IMAGE_LAYOUT, embed_dim=96, num_heads=1, depths=(1, 2, 5, 2), drop_path_rate=0.1), kwargs)


@_inflated
def mvitv2_small_16x224(**kwargs: Any) -> MViTv2:
    """MViTv2-S video 16x4, 224 px, ImageNet layout: 96/1 heads, blocks 1-2-11-2, 34.5M params (inflate timm mvitv2_small)."""
    return _build(dict(_IMAGE_LAYOUT, embed_dim=96, num_heads=1, depths=(1, 2, 11, 2), drop_path_rate=0.1), kwargs)


@_inflated
def mvitv2_base_16x224(**kwargs: Any) -> MViTv2:
    """MViTv2-B video 16x4, 224 px, ImageNet layout: 96/1 heads, blocks 2-3-16-3, 51.2M params (inflate timm mvitv2_base)."""
    return _build(dict(_IMAGE_LAYOUT, embed_dim=96, num_heads=1, depths=(2, 3, 16, 3), drop_path_rate=0.3), kwargs)


@_inflated
def mvitv2_large_16x224(**kwargs: Any) -> MViTv2:
    """MViTv2-L video 16x4, 224 px, ImageNet layout: 144/2 heads, blocks 2-6-36-4, 217.6M params (inflate timm mvitv2_large).

    Unlike T/S/B, the width doubles in the MLP of each stage's last block (timm ``expand_attn=False``).
    """
    return _build(dict(_IMAGE_LAYOUT, embed_dim=144, num_heads=2, depths=(2, 6, 36, 4), dim_mul_in_att=False,
                       drop_path_rate=0.5), kwargs)


@register_model("mvitv2", num_frames=8, sampling_rate=8, crop_size=64, mean=KINETICS_MEAN, std=KINETICS_STD)
def mvitv2_xxs_8x64(**kwargs: Any) -> MViTv2:
    """MViTv2-XXS 8 frames, 64 px: 20/1 heads, blocks 1-1-2-1, 0.54M params (tests, small models)."""
    return _build(dict(num_frames=8, crop_size=64, embed_dim=20, num_heads=1, depths=(1, 1, 2, 1),
                       drop_path_rate=0.1), kwargs)
