"""Model families (MViTv2, Hiera, Twins, AVA detectors) behind one registry: ``create_model("mvitv2_s_16x4")``.

Importing the package registers every family (Python runs this file before any
``videoapp.models.*`` submodule), so the registry never imports a family back.
The detectors come after the families: they look up their backbones' entries.
Inside ``videoapp.models`` modules import the submodules they need
(``models.registry``, ``models.factory``, ...), never this package, which
imports them all (tests/test_layers.py).
"""
from __future__ import annotations

from videoapp.models import mvitv2, hiera, twins, detector  # noqa: F401  (registration)
from videoapp.models.factory import create_model
from videoapp.models.registry import (
    ModelConfig,
    ModelEntry,
    UnknownModelError,
    get_model_entry,
    get_pretrained_cfg,
    list_models,
    register_converters,
    register_model,
)

__all__ = [
    "ModelConfig",
    "ModelEntry",
    "UnknownModelError",
    "create_model",
    "get_model_entry",
    "get_pretrained_cfg",
    "list_models",
    "register_converters",
    "register_model",
]
