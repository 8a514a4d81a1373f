"""Prediction heads. Heads return logits; softmax / sigmoid belong to the Predictor and the metrics."""
from __future__ import annotations

import torch
import torch.nn as nn


class ClassificationHead(nn.Module):
    """Dropout then a linear classifier: ``[B, D] -> [B, num_classes]`` logits.

    With ``num_classes=0`` the head is the identity (the model returns features).
    The classifier lives at ``head.fc`` in every model, so the class count of any
    of our state dicts is ``state_dict["head.fc.weight"].shape[0]``.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs."""
        self.num_classes = num_classes
        if num_classes > 0:
            self.fc = nn.Linear(self.in_features, num_classes)
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)
        else:
            self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


class AVAHead(nn.Module):
    """SlowFast's AVA detection head: per-box multi-label action logits from a feature map.

    ``forward(x, boxes, input_size)``: ``x`` is the last stage's map
    ``[B, C, T, H, W]`` (``C = in_features``), ``boxes`` ``[K, 5]`` rows
    ``[batch_index, x1, y1, x2, y2]`` in pixels of the network input, and
    ``input_size`` the input's ``(H_in, W_in)`` (or ``H_in``) in pixels. The
    map is averaged over time, each box is pooled with
    ``torchvision.ops.roi_align`` (``roi_size`` x ``roi_size`` bins,
    ``aligned=True``, ``sampling_ratio=0``, spatial scale = one over the map's
    stride in input pixels, measured on the input's short side: ``H / H_in``
    for landscape input; a long side that is not a multiple of the stride
    leaves a partial map cell that would skew it, so 224 x 398 -> 7 x 13 is
    1/32 as in SlowFast), max-pooled over the bins, then dropout
    and ``fc`` give logits ``[K, num_classes]``. Sigmoid belongs to the
    prediction and the metrics (train with BCE-with-logits).

    The classifier lives at ``head.fc`` like :class:`ClassificationHead`'s, so
    ``state_dict["head.fc.weight"].shape[0]`` is the action count of detectors too.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5, roi_size: int = 7) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"an AVA head needs at least one action, got num_classes={num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.roi_size = int(roi_size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs."""
        if num_classes < 1:
            raise ValueError(f"an AVA head needs at least one action, got num_classes={num_classes}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def spatial_scale(map_size: tuple[int, int], input_size: int | tuple[int, int]) -> float:
        """Feature-map pixels per input pixel along the input's short side (1/32 for 224 px -> 7).

        ``map_size`` and ``input_size`` are ``(H, W)``; an ``int`` input size is ``H`` (then H is used).
        """
        if isinstance(input_size, int):
            return float(map_size[0]) / float(input_size)
        axis = 0 if input_size[0] <= input_size[1] else 1
        return float(map_size[axis]) / float(input_size[axis])

    def pool(self, x: torch.Tensor, boxes: torch.Tensor, input_size: int | tuple[int, int]) -> torch.Tensor:
        """Pooled box features ``[K, C]``: temporal mean, RoIAlign, spatial max (the pre-logits)."""
        from torchvision.ops import roi_align

        if x.dim() != 5:
            raise ValueError(f"expected a feature map [B, C, T, H, W], got {tuple(x.shape)}")
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"expected boxes [K, 5] = [batch_index, x1, y1, x2, y2], got {tuple(boxes.shape)}")
        fmap = x.mean(dim=2).contiguous()  # [B, C, H, W]
        scale = self.spatial_scale((int(fmap.shape[-2]), int(fmap.shape[-1])), input_size)
        rois = roi_align(fmap, boxes.to(fmap.dtype), output_size=self.roi_size, spatial_scale=scale,
                         sampling_ratio=0, aligned=True)
        return rois.amax(dim=(2, 3))  # [K, C]

    def forward(self, x: torch.Tensor, boxes: torch.Tensor, input_size: int | tuple[int, int],
                pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, T, H, W]`` map + ``[K, 5]`` boxes (input pixels) -> logits ``[K, num_classes]``
        (``[K, C]`` pooled features with ``pre_logits``)."""
        pooled = self.pool(x, boxes, input_size)
        if pre_logits:
            return pooled
        return self.fc(self.dropout(pooled))
