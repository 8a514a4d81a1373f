"""The pretrained layer: checkpoint sniffing, conversion and strict loading.

Reads any checkpoint we understand (our own ``.safetensors``, torchvision state
dicts, SlowFast ``.pyth``, official Hiera ``.pth``, timm), recognises its
format with the ``detect_source`` that its model family registered, converts
it with the family's converters (:func:`videoapp.models.registry.register_converters`,
declared beside each family) and checks it strictly against the model's
parameter names and shapes. Dataset rules that go with a checkpoint (labels
from the class count, SSv2 SlowFast preprocessing) live here too.

Layers (tests/test_layers.py): ``videoapp.weights`` (our file format) <-
``models.registry`` <- ``models.pretrained`` (this module) <- ``models.factory``
(``create_model``) <- ``engine`` <- ``cli`` / ``ui``. This module imports the
registry and the file format, never a family module or the factory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from videoapp.labels import DATASET_BY_NUM_CLASSES, load_labels
from videoapp.models.registry import UnknownModelError, get_converters, get_model_entry
from videoapp.files import first_line
from videoapp.weights import DATA_KEYS, CheckpointError, load_weights

__all__ = [
    "ImportReport",
    "check_state_dict",
    "expected_shapes",
    "import_checkpoint",
    "load_raw_checkpoint",
    "metadata_for",
    "read_and_convert",
    "size_kwargs",
    "ssv2_slowfast_preprocessing",
]


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` found and did.

    ``source`` is the detected format ("videoapp", "torchvision", "slowfast", ...);
    ``num_classes`` the classifier size in the checkpoint (``None`` without a
    head); ``labels`` the class names if known; ``data_config`` preprocessing
    overrides (see :data:`videoapp.weights.DATA_KEYS`); ``metadata`` the file's raw metadata;
    ``notes`` human-readable remarks (e.g. labels inferred from the class count);
    ``model_kwargs`` the factory keywords the weights need beyond the variant's
    defaults: ``num_frames`` / ``crop_size`` of weights trained at another clip
    size (their position tables have other shapes), from the metadata.
    """

    source: str
    model: str
    num_classes: int | None
    labels: list[str] | None
    data_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def size_kwargs(model_name: str, meta: Mapping[str, Any]) -> dict[str, int]:
    """``num_frames`` / ``crop_size`` from weights metadata ``meta`` where they differ from the variant's.

    Only the differing ones: an image variant (one frame) takes no ``num_frames``
    keyword, and a variant's own size needs none.
    """
    defaults = get_model_entry(model_name).data
    out: dict[str, int] = {}
    for key in ("num_frames", "crop_size"):
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) != defaults.get(key):
            out[key] = int(value)
    return out


def metadata_for(report: ImportReport, **extra: Any) -> dict[str, Any]:
    """Our metadata for weights imported as ``report`` describes (model, labels, preprocessing)."""
    meta: dict[str, Any] = {"model": report.model}
    meta.update(get_model_entry(report.model).data)
    meta.update(report.data_config)
    if report.labels is not None:
        meta["labels"] = list(report.labels)
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def _is_safetensors(path: Path) -> bool:
    # An 8-byte little-endian header length followed by a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_raw_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported checkpoint file into ``(flat state dict, metadata)``.

    Pickled files are read with ``torch.load(weights_only=True)`` (no code runs)
    and unwrapped from the usual containers: ``model_state`` (SlowFast, official
    Hiera), ``state_dict``, ``model``, ``module.`` prefixes (DDP).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if _is_safetensors(path):
        return load_weights(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(exc)})") from None
    for key in ("model_state", "state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found in the checkpoint")
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        state[k[len("module."):] if k.startswith("module.") else k] = v
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return state, {}


def expected_shapes(model_name: str, num_classes: int | None, **model_kwargs: Any) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer names and shapes of ``model_name`` built with ``model_kwargs`` (on the meta device, no memory)."""
    entry = get_model_entry(model_name)
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.device("meta"):
        model = entry.factory(**kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raise :class:`CheckpointError` naming the first missing / unexpected / mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        lacks_time = [k for k in expected if k in state and len(state[k].shape) + 1 == len(expected[k])
                      and tuple(state[k].shape[2:]) == tuple(expected[k][3:])]
        hint = " (a 2-D image checkpoint: use 'videoapp weights inflate')" if lacks_time else ""
        raise CheckpointError(f"{what}: " + "; ".join(problems) + hint)


def ssv2_slowfast_preprocessing(model_name: str) -> dict[str, Any]:
    """Preprocessing that reproduces SlowFast's SSv2 test pipeline for ``model_name``.

    SlowFast samples SSv2 uniformly (one frame per segment, ``get_seq_frames``).
    Its SSv2 loader decodes frames with OpenCV (BGR) and ``REVERSE_INPUT_CHANNEL``
    flips them back, so the network sees RGB: our RGB frames need no flip.
    The flip happens *after* normalisation, though, so per-channel mean/std
    (ImageNet stats in the L config) were applied in BGR order: the effective
    RGB statistics are the configured ones reversed. (``INV_UNIFORM_SAMPLE``
    only changes training scale jitter, nothing at test time.)
    """
    data = get_model_entry(model_name).data
    return {
        "sampling": "uniform",
        "channel_order": "rgb",
        "mean": list(reversed(data["mean"])),
        "std": list(reversed(data["std"])),
    }


def read_and_convert(
    path: str | os.PathLike, model_name: str, source: str = "auto"
) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """Read ``path`` and map its keys to ours with the converter of ``model_name``'s family.

    ``source`` is a format the family registered (``register_converters``) or
    "auto" (our own files are recognised by their metadata, others by the
    family's ``detect_source``).
    Returns ``(state_dict, source, metadata)``; nothing is checked against the
    model's shapes here (import and inflation check differently).
    """
    try:
        get_model_entry(model_name)
    except UnknownModelError as exc:
        raise CheckpointError(str(exc)) from None
    raw, meta = load_raw_checkpoint(path)
    family = get_converters(model_name)
    converters = family.convert
    if source == "auto":
        source = "videoapp" if meta.get("model") else family.detect_source(raw)
        if source is None:
            raise CheckpointError(
                f"{path}: cannot tell the checkpoint format from its keys "
                f"(e.g. {', '.join(list(raw)[:3])}); pass --source ({', '.join(sorted(converters))})"
            )
    if source not in converters:
        raise CheckpointError(
            f"{path}: {model_name} cannot read '{source}' checkpoints (known: {', '.join(sorted(converters))})"
        )
    try:
        state = converters[source](dict(raw))
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a {source} checkpoint for {model_name} (missing key {exc})") from None
    return state, source, meta


def import_checkpoint(
    path: str | os.PathLike, model_name: str, source: str = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Read ``path`` and convert it into a state dict for registry model ``model_name``.

    ``source`` names the checkpoint's format ("videoapp", "torchvision",
    "slowfast", ... as registered by the family's converters) or "auto" to
    sniff it from the key names. The result is checked strictly against the
    model built with the clip size in the weights' metadata (``num_frames`` /
    ``crop_size``, see :func:`size_kwargs`; the variant's own size when the
    weights fit that instead) updated by ``model_kwargs`` (the
    factory keywords the caller will build with; ``num_classes`` is taken from
    the weights): a missing or unexpected key or a shape mismatch raises
    :class:`CheckpointError` naming them. Returns ``(state_dict, report)``;
    ``report.model_kwargs`` holds the size keywords to build the model with.
    """
    state, source, meta = read_and_convert(path, model_name, source)
    if meta.get("model") and meta["model"] != model_name:
        raise CheckpointError(f"{path}: weights are for '{meta['model']}', not '{model_name}'")
    head = state.get("head.fc.weight")
    num_classes = int(head.shape[0]) if head is not None else None
    asked = {k: v for k, v in dict(model_kwargs or {}).items() if k != "num_classes"}
    # The metadata's clip size first (weights trained at that size: other position-table shapes); then
    # the variant's own, for weights whose metadata only states the sampling protocol (MViTv2 and Twins
    # run any clip size with tables of the built size).
    sizes = size_kwargs(model_name, meta)
    candidates = [sizes, {}] if sizes else [sizes]
    first_error: CheckpointError | None = None
    for sizes in candidates:
        try:
            check_state_dict(state, expected_shapes(model_name, num_classes, **{**sizes, **asked}),
                             f"{path} does not fit {model_name}")
            break
        except CheckpointError as exc:
            first_error = first_error or exc
    else:
        assert first_error is not None
        raise first_error

    report = ImportReport(source=source, model=model_name, num_classes=num_classes, labels=None, metadata=meta,
                          model_kwargs=sizes)
    report.data_config = {k: meta[k] for k in DATA_KEYS if k in meta}
    if isinstance(meta.get("labels"), list):
        report.labels = [str(x) for x in meta["labels"]]
    elif num_classes in DATASET_BY_NUM_CLASSES:
        dataset = DATASET_BY_NUM_CLASSES[num_classes]
        report.labels = list(load_labels(dataset))
        report.notes.append(f"labels assumed from the class count: {dataset}")
        if dataset == "ssv2" and source == "slowfast":
            report.data_config.update(ssv2_slowfast_preprocessing(model_name))
            report.notes.append("SSv2 SlowFast checkpoint: uniform temporal sampling over the whole video")
    if report.labels is not None and num_classes is not None and len(report.labels) != num_classes:
        raise CheckpointError(f"{path}: {len(report.labels)} labels for a {num_classes}-class head")
    return state, report
