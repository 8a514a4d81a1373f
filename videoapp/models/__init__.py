"""Model families (MViTv2, ...) behind one registry: ``create_model("mvitv2_s_16x4")``."""
from __future__ import annotations

from videoapp.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
