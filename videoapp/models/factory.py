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
from videoapp.models.registry import ModelConfig, get_model_entry
from videoapp.weights import CheckpointError

__all__ = ["create_model"]


def _square(value: Any) -> int | None:
    """A square clip side from a ``crop_size`` / spatial ``input_size`` keyword: ``int``, or ``None`` if not square."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    sides = {int(v) for v in value}
    return sides.pop() if len(sides) == 1 else None


def _size_from_kwargs(kwargs: dict[str, Any]) -> dict[str, int]:
    """``num_frames`` / ``crop_size`` that factory keywords build the model for (they change its clip).

    Hiera's ``input_size`` ((T, H, W) video, (H, W) image) counts too; a
    non-square crop keeps the configured ``crop_size`` (the transforms crop squares).
    """
    out: dict[str, int] = {}
    size = kwargs.get("input_size")
    if size is not None:
        size = tuple(size)
        if len(size) == 3:
            out["num_frames"] = int(size[0])
        side = _square(size[-2:])
        if side is not None:
            out["crop_size"] = side
    if kwargs.get("num_frames") is not None:
        out["num_frames"] = int(kwargs["num_frames"])
    if kwargs.get("crop_size") is not None:
        side = _square(kwargs["crop_size"])
        if side is not None:
            out["crop_size"] = side
    return out


def create_model(
    name: str,
    pretrained: str | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    ``pretrained`` is a path to our ``.safetensors`` or to any checkpoint that
    :func:`videoapp.models.pretrained.import_checkpoint` understands; weights
    trained at another clip size than the variant's (``num_frames`` /
    ``crop_size`` in their metadata) build the model at that size, so they load
    strictly. With ``num_classes=None`` the head takes its size from the
    weights (or the variant's default without weights). ``overrides`` go to the
    variant's factory (``num_frames``, ``crop_size``, ``drop_path_rate``, ...).

    The model gets one attribute, ``pretrained_cfg``
    (:class:`~videoapp.models.registry.ModelConfig`): its registry name,
    labels (``None`` when unknown or a new head was asked for) and clip
    protocol: the registry entry's, overridden by the weights' metadata, then
    by the ``num_frames`` / ``crop_size`` it was built with.
    """
    entry = get_model_entry(name)
    data = dict(entry.data)
    labels = None
    state_dict = None
    build = dict(overrides)
    if pretrained is not None:
        state_dict, report = import_checkpoint(pretrained, name, model_kwargs=overrides)
        labels = report.labels
        data.update(report.data_config)
        # The weights' own clip size (their position tables' shapes), unless the caller asks for another.
        build = {**report.model_kwargs, **overrides}
        ckpt_classes = report.num_classes
        if num_classes is None:
            num_classes = ckpt_classes
        elif ckpt_classes is not None and num_classes != ckpt_classes:
            # A new head is requested: keep the backbone, drop the old classifier.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            labels = None
    if num_classes is not None:
        build["num_classes"] = num_classes
    model = entry.factory(**build)
    if state_dict is not None:
        # import_checkpoint already checked names and shapes; only a replaced head may be absent.
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise CheckpointError(f"weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    data.update(_size_from_kwargs(build))
    model.pretrained_cfg = ModelConfig.from_data(name, data, labels)
    return model
