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
