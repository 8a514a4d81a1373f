"""videoapp: video understanding (MViTv2, Hiera, Twins) with a CLI and a web UI.

The public Python entry points are imported lazily so that ``videoapp --help``
and the CLI's error paths start fast:

- :func:`create_model`, :func:`list_models` (model registry)
- :class:`Predictor` (weights + preprocessing -> predictions)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "Predictor", "Prediction", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from videoapp import models

        return getattr(models, name)
    if name in ("Predictor", "Prediction"):
        from videoapp.engine import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'videoapp' has no attribute {name!r}")
