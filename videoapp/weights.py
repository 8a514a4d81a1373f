"""Weights on disk: our safetensors file format (the lowest layer of the model stack).

Our format is a ``.safetensors`` file whose header metadata describes the
model completely (DESIGN.md, "Files"): ``model`` (registry name), ``labels``
(JSON list), ``num_frames``, ``sampling_rate``, ``crop_size``, ``mean``,
``std``, ``channel_order``, ``sampling``, ``source``, ``metrics``. Values are
stored as JSON strings because safetensors metadata is ``str -> str``.

Layers (tests/test_layers.py): this module imports no other videoapp module;
``videoapp.models`` builds on it (``models.pretrained`` reads foreign
checkpoints, converts them with the families' converters and checks them
strictly: ``import_checkpoint`` lives there), ``videoapp.engine`` on the models,
the CLI and the UI on the engine.

Shipped weights (``default.safetensors`` and friends) live in the checkout's
``weights/`` folder; the wheel carries the same files as ``videoapp/_weights``
(pyproject.toml maps the folder into the package), found with
:mod:`importlib.resources`.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from videoapp.files import atomic_path, first_line

# Metadata keys whose values are JSON (everything else is a plain string).
_JSON_KEYS = {
    "labels", "num_frames", "sampling_rate", "crop_size", "mean", "std", "metrics", "train",
}
# Metadata that describes preprocessing and is handed to the model's data_config.
DATA_KEYS = ("num_frames", "sampling_rate", "crop_size", "mean", "std", "channel_order", "sampling")


def _shipped_weights_dir() -> Path:
    """Where the shipped weights are: ``VIDEOAPP_WEIGHTS_DIR``, else the installed package's
    ``videoapp/_weights`` (from a wheel), else the checkout's ``weights/`` folder."""
    if os.environ.get("VIDEOAPP_WEIGHTS_DIR"):
        return Path(os.environ["VIDEOAPP_WEIGHTS_DIR"])
    # A wheel installs plain files (never a zip), so the resource is a real directory.
    packaged = Path(str(resources.files("videoapp") / "_weights"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "weights"


# Shipped weights (see _shipped_weights_dir).
WEIGHTS_DIR = _shipped_weights_dir()
DEFAULT_WEIGHTS_NAME = "default.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model. ``str()`` is one line."""


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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        # safetensors creates the file 0600; weights are meant to be shared like any output file.
        # (A fixed mode: reading the umask means setting it, which races with other threads.)
        os.chmod(tmp, 0o644)
    return path


def default_weights() -> Path | None:
    """The shipped default weights file, or ``None`` while none is shipped."""
    path = WEIGHTS_DIR / DEFAULT_WEIGHTS_NAME
    return path if path.is_file() else None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded header metadata of one of our ``.safetensors`` files (no tensors loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
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


