"""Weights on disk: our safetensors format, and import of reference checkpoints.

Our format is a ``.safetensors`` file whose header metadata describes the
model completely (DESIGN.md, "Files"): ``model`` (registry name), ``labels``
(JSON list), ``num_frames``, ``sampling_rate``, ``crop_size``, ``mean``,
``std``, ``channel_order``, ``sampling``, ``source``, ``metrics``. Values are
stored as JSON strings because safetensors metadata is ``str -> str``.

:func:`import_checkpoint` reads any checkpoint we understand (our own files,
torchvision state dicts, SlowFast ``.pyth``, official Hiera ``.pth``, timm),
converts it with the converter that lives beside the model family, and checks
it strictly against the model's parameter names and shapes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from videoapp.labels import DATASET_BY_NUM_CLASSES, load_labels

# Metadata keys whose values are JSON (everything else is a plain string).
_JSON_KEYS = {
    "labels", "num_frames", "sampling_rate", "crop_size", "mean", "std", "metrics", "train",
}
# Metadata that describes preprocessing and is handed to the model's data_config.
DATA_KEYS = ("num_frames", "sampling_rate", "crop_size", "mean", "std", "channel_order", "sampling")
# Shipped weights: the repository's weights/ folder (VIDEOAPP_WEIGHTS_DIR overrides).
WEIGHTS_DIR = Path(os.environ.get("VIDEOAPP_WEIGHTS_DIR", Path(__file__).resolve().parent.parent / "weights"))
DEFAULT_WEIGHTS_NAME = "default.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model. ``str()`` is one line."""


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` found and did.

    ``source`` is the detected format ("videoapp", "torchvision", "slowfast", ...);
    ``num_classes`` the classifier size in the checkpoint (``None`` without a
    head); ``labels`` the class names if known; ``data_config`` preprocessing
    overrides (see :data:`DATA_KEYS`); ``metadata`` the file's raw metadata;
    ``notes`` human-readable remarks (e.g. labels inferred from the class count).
    """

    source: str
    model: str
    num_classes: int | None
    labels: list[str] | None
    data_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``state_dict`` and ``metadata`` to a ``.safetensors`` file atomically.

    ``metadata`` must contain ``model`` (a registry name). Tensors are saved
    contiguous and detached on the CPU. The file is written beside its target
    and renamed into place, so a crash never leaves a half-written weights file.
    """
    from safetensors.torch import save_file

    if "model" not in metadata:
        raise ValueError("weights metadata needs a 'model' entry (registry name)")
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    header = {k: (json.dumps(v) if k in _JSON_KEYS or not isinstance(v, str) else v) for k, v in metadata.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    # safetensors creates the file 0600; weights are meant to be shared like any output file.
    # (A fixed mode: reading the umask means setting it, which races with other threads.)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def default_weights() -> Path | None:
    """The shipped default weights file, or ``None`` while none is shipped."""
    path = WEIGHTS_DIR / DEFAULT_WEIGHTS_NAME
    return path if path.is_file() else None


def metadata_for(report: "ImportReport", **extra: Any) -> dict[str, Any]:
    """Our metadata for weights imported as ``report`` describes (model, labels, preprocessing)."""
    from videoapp.models.registry import get_model_entry

    meta: dict[str, Any] = {"model": report.model}
    meta.update(get_model_entry(report.model).data)
    meta.update(report.data_config)
    if report.labels is not None:
        meta["labels"] = list(report.labels)
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded header metadata of one of our ``.safetensors`` files (no tensors loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    return _decode_metadata(raw)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load one of our ``.safetensors`` files: ``(state_dict, metadata)`` on the CPU."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    return load_file(str(path), device="cpu"), meta


def _decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _JSON_KEYS:
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        else:
            out[k] = v
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None
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


def expected_shapes(model_name: str, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer names and shapes of ``model_name`` (built on the meta device, no memory)."""
    from videoapp.models.registry import get_model_entry

    entry = get_model_entry(model_name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
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
    from videoapp.models.registry import get_model_entry

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

    ``source`` is a key of the family's ``CONVERTERS`` or "auto" (our own files
    are recognised by their metadata, others by the family's ``detect_source``).
    Returns ``(state_dict, source, metadata)``; nothing is checked against the
    model's shapes here (import and inflation check differently).
    """
    from videoapp.models.registry import UnknownModelError, family_module, get_model_entry

    try:
        get_model_entry(model_name)
    except UnknownModelError as exc:
        raise CheckpointError(str(exc)) from None
    raw, meta = load_raw_checkpoint(path)
    family = family_module(model_name)
    converters: dict = getattr(family, "CONVERTERS", {})
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
    path: str | os.PathLike, model_name: str, source: str = "auto"
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Read ``path`` and convert it into a state dict for registry model ``model_name``.

    ``source`` names the checkpoint's format ("videoapp", "torchvision",
    "slowfast", ... as offered by the family's ``CONVERTERS``) or "auto" to
    sniff it from the key names. The result is checked strictly: a missing or
    unexpected key or a shape mismatch raises :class:`CheckpointError` naming
    them. Returns ``(state_dict, report)``.
    """
    state, source, meta = read_and_convert(path, model_name, source)
    if meta.get("model") and meta["model"] != model_name:
        raise CheckpointError(f"{path}: weights are for '{meta['model']}', not '{model_name}'")
    head = state.get("head.fc.weight")
    num_classes = int(head.shape[0]) if head is not None else None
    check_state_dict(state, expected_shapes(model_name, num_classes), f"{path} does not fit {model_name}")

    report = ImportReport(source=source, model=model_name, num_classes=num_classes, labels=None, metadata=meta)
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
