"""``create_model``: a registered model by name, optionally with weights loaded strictly.

Layers (tests/test_layers.py): the factory sits on the registry (entries) and
the pretrained layer (import and strict checks); family modules never import
it, so neither it nor anything below it imports a family back. Callers use
``videoapp.models.create_model`` or ``videoapp.create_model``.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from videoapp.models.pretrained import import_checkpoint
from videoapp.models.registry import get_model_entry
from videoapp.weights import CheckpointError

__all__ = ["create_model"]


def create_model(
    name: str,
    pretrained: str | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    ``pretrained`` is a path to our ``.safetensors`` or to any checkpoint that
    :func:`videoapp.models.pretrained.import_checkpoint` understands. With
    ``num_classes=None`` the head takes its size from the weights (or the
    variant's default without weights). The model gets two attributes:
    ``labels`` (list of class names or ``None``) and ``data_config`` (the
    preprocessing dict, see :class:`ModelEntry`).
    """
    entry = get_model_entry(name)
    data_config = dict(entry.data)
    labels = None
    state_dict = None
    if pretrained is not None:
        state_dict, report = import_checkpoint(pretrained, name)
        labels = report.labels
        data_config.update(report.data_config)
        ckpt_classes = report.num_classes
        if num_classes is None:
            num_classes = ckpt_classes
        elif ckpt_classes is not None and num_classes != ckpt_classes:
            # A new head is requested: keep the backbone, drop the old classifier.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            labels = None
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    model = entry.factory(**overrides)
    if state_dict is not None:
        # import_checkpoint already checked names and shapes; only a replaced head may be absent.
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise CheckpointError(f"weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.labels = labels
    model.data_config = data_config
    model.model_name = name
    return model
