"""Model registry: small named factory functions over one config per family (as in timm).

A family module (``mvitv2.py``, ``hiera.py``, ...) declares its variants with
``@register_model(...)`` and its checkpoint converters with
:func:`register_converters`; callers build models by name with
:func:`videoapp.models.create_model` (``models/factory.py``). Each registration
also records the preprocessing the variant was trained with (clip length,
frame stride, crop size, normalisation) so that weights without metadata still
get sensible defaults.

Layering (tests/test_layers.py checks it): this module imports no other
videoapp module. The family modules import it to register themselves, and
``videoapp/models/__init__.py`` imports the families (Python runs a package's
``__init__`` before any of its submodules, so the registry is always full);
the registry never imports them back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: A checkpoint converter: a state dict in some format -> the same weights under our key names.
Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


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


@dataclass(frozen=True)
class ModelConfig:
    """What a built model was made for: the ``pretrained_cfg`` attribute :func:`create_model` sets.

    One typed record (timm's ``pretrained_cfg``, torchvision's weights
    ``meta``) instead of loose attributes: the registry entry's clip protocol,
    overridden by the weights' metadata, then by ``create_model``'s
    ``num_frames`` / ``crop_size``, so it always describes the module as built.

    Fields: ``model_name`` (registry name); ``num_frames`` (frames per clip);
    ``sampling_rate`` (stride between sampled frames, in source frames);
    ``crop_size`` (pixels); ``mean`` / ``std`` (per channel, for inputs in
    [0, 1]); ``channel_order`` ("rgb" or "bgr", the order the network expects);
    ``sampling`` ("rate": clips of ``num_frames`` every ``sampling_rate``
    frames, "uniform": one clip spread over the whole video, SSv2);
    ``task`` ("classification" or "detection"); ``backbone`` (a detector's
    backbone registry name, else ``None``); ``labels`` (class or action names
    indexed like the logits, ``None`` when unknown). Immutable: derive a
    changed copy with :meth:`replace`.
    """

    model_name: str
    num_frames: int
    sampling_rate: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "rgb"
    sampling: str = "rate"
    task: str = "classification"
    backbone: str | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Normalise what JSON metadata and YAML give (lists, strings of numbers) so that
        # equal protocols compare equal and nothing mutable hides in a frozen record.
        set_ = object.__setattr__
        for key in ("num_frames", "sampling_rate", "crop_size"):
            set_(self, key, int(getattr(self, key)))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "channel_order", str(self.channel_order).lower())
        if self.labels is not None:
            set_(self, "labels", tuple(str(x) for x in self.labels))

    @classmethod
    def from_data(cls, model_name: str, data: Mapping[str, Any],
                  labels: Sequence[str] | None = None) -> "ModelConfig":
        """A config from a registry ``data`` dict / weights metadata (unknown keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"model_name", "labels"}
        return cls(model_name=model_name, labels=None if labels is None else tuple(labels),
                   **{k: v for k, v in data.items() if k in known and v is not None})

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` applied (e.g. ``labels=...`` after a new head, ``num_frames=...``)."""
        return dataclasses.replace(self, **changes)

    def data_config(self) -> dict[str, Any]:
        """The clip protocol as a plain dict, in the form our weights metadata stores it.

        Keys ``num_frames``, ``sampling_rate``, ``crop_size``, ``mean``, ``std``
        (lists), ``channel_order``, ``sampling``; detectors also ``task`` and
        ``backbone``. Handy for ``save_weights(path, state, {"model": ..., **cfg.data_config()})``.
        """
        out: dict[str, Any] = {
            "num_frames": self.num_frames, "sampling_rate": self.sampling_rate, "crop_size": self.crop_size,
            "mean": list(self.mean), "std": list(self.std), "channel_order": self.channel_order,
            "sampling": self.sampling,
        }
        if self.task != "classification":
            out["task"] = self.task
        if self.backbone is not None:
            out["backbone"] = self.backbone
        return out


def get_pretrained_cfg(model: Any) -> ModelConfig:
    """``model.pretrained_cfg``, or a one-line ``ValueError`` for a module that was not built by ``create_model``."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"{type(model).__name__} has no pretrained_cfg (a ModelConfig): build models with "
                         "videoapp.create_model, or set model.pretrained_cfg")
    return cfg


class UnknownModelError(KeyError):
    """A model name that is not registered; ``args[0]`` is a one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Converters:
    """The checkpoint formats one family module reads (see :func:`register_converters`).

    ``convert`` maps a format name ("videoapp", "torchvision", "slowfast",
    "official", "timm", ...) to its converter; ``detect_source(state_dict)``
    names the format of a state dict from its keys, or ``None``.
    """

    convert: Mapping[str, Converter]
    detect_source: Callable[[Mapping[str, torch.Tensor]], str | None]


_REGISTRY: dict[str, ModelEntry] = {}
# Keyed by the registering module, not the family name: the AVA detectors share
# their backbones' family names but read their own (detector) state dicts.
_CONVERTERS: dict[str, Converters] = {}


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


def keep_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The converter for our own state dicts (format ``videoapp``): a shallow copy, keys unchanged."""
    return dict(state_dict)


def register_converters(
    module: str,
    *,
    detect_source: Callable[[Mapping[str, torch.Tensor]], str | None],
    convert: Mapping[str, Converter],
) -> None:
    """Declare the checkpoint formats that the variants registered by ``module`` read.

    Called once at module level by each family (``register_converters(__name__,
    detect_source=detect_source, convert=CONVERTERS)``); the pretrained layer
    (``models/pretrained.py``) finds them through :func:`get_converters`.
    """
    _CONVERTERS[module] = Converters(convert=dict(convert), detect_source=detect_source)


def get_converters(name: str) -> Converters:
    """The :class:`Converters` of registered model ``name`` (only our own format if its family declares none)."""
    entry = get_model_entry(name)
    found = _CONVERTERS.get(entry.module)
    if found is None:
        return Converters(convert={"videoapp": dict}, detect_source=lambda state: None)
    return found


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a shell-style ``pattern``."""
    import fnmatch

    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def get_model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` for ``name``; :class:`UnknownModelError` with close matches if unknown."""
    import difflib

    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `videoapp models`)"
        raise UnknownModelError(f"unknown model '{name}'{hint}")
    return _REGISTRY[name]
