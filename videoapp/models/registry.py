"""Model registry: small named factory functions over one config per family (as in timm).

A family module (``mvitv2.py``, ``hiera.py``, ...) declares its variants with
``@register_model(...)``; callers build them by name with :func:`create_model`.
Each registration also records the preprocessing the variant was trained with
(clip length, frame stride, crop size, normalisation) so that weights without
metadata still get sensible defaults.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Modules that register models on import; imported lazily on first registry use.
# The detectors come after the families: they look up their backbones' entries.
_FAMILY_MODULES = ("videoapp.models.mvitv2", "videoapp.models.hiera", "videoapp.models.twins", "videoapp.models.detector")


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one variant.

    ``data`` holds the preprocessing defaults: ``num_frames`` (frames per clip),
    ``sampling_rate`` (stride between sampled frames, in source frames),
    ``crop_size`` (pixels), ``mean``/``std`` (per channel, for inputs in [0, 1]).
    """

    name: str
    factory: Callable[..., nn.Module]
    family: str
    module: str
    data: dict[str, Any] = field(default_factory=dict)
    description: str = ""


class UnknownModelError(KeyError):
    """A model name that is not registered; ``args[0]`` is a one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register_model(
    family: str,
    *,
    num_frames: int = 16,
    sampling_rate: int = 4,
    crop_size: int = 224,
    mean: tuple[float, float, float] = KINETICS_MEAN,
    std: tuple[float, float, float] = KINETICS_STD,
    **extra: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(**kwargs) -> nn.Module`` under its function name."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        data = dict(
            num_frames=num_frames,
            sampling_rate=sampling_rate,
            crop_size=crop_size,
            mean=list(mean),
            std=list(std),
            **extra,
        )
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[fn.__name__] = ModelEntry(
            name=fn.__name__,
            factory=fn,
            family=family,
            module=fn.__module__,
            data=data,
            description=doc[0] if doc else "",
        )
        return fn

    return decorate


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _FAMILY_MODULES:
            importlib.import_module(mod)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a shell-style ``pattern``."""
    import fnmatch

    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def get_model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` for ``name``; :class:`UnknownModelError` with close matches if unknown."""
    import difflib

    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `videoapp models`)"
        raise UnknownModelError(f"unknown model '{name}'{hint}")
    return _REGISTRY[name]


def family_module(name: str):
    """The Python module that defines model ``name`` (holds its checkpoint converters)."""
    return importlib.import_module(get_model_entry(name).module)


def create_model(
    name: str,
    pretrained: str | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    ``pretrained`` is a path to our ``.safetensors`` or to any checkpoint that
    :func:`videoapp.weights.import_checkpoint` understands. With
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
        from videoapp.weights import import_checkpoint

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
            from videoapp.weights import CheckpointError

            raise CheckpointError(f"weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.labels = labels
    model.data_config = data_config
    model.model_name = name
    return model
