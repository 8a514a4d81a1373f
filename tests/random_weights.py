"""Random weights for parity and identity tests (imported by test_hiera.py and test_inflate.py).

Every parameter gets a fresh random value, with norms, biases and position
embeddings clearly away from their neutral defaults (weight 1 / bias 0 / zero
table), so a parameter mapped to the wrong place changes the output.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter of ``model`` with seeded random values; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" in name or "rel_pos" in name:
                mean, std = 0.0, 0.2
            elif "norm" in name and name.endswith("weight"):
                mean, std = 1.0, 0.2
            elif p.dim() == 1:
                mean, std = 0.0, 0.1
            elif name.startswith("head."):
                mean, std = 0.0, 0.05
            else:
                mean, std = 0.0, 0.02
            p.normal_(mean, std, generator=g)
    return model.eval()


def random_model(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """``factory()`` built on the meta device (skipping its slow init), materialised and randomised."""
    with torch.device("meta"):
        model = factory()
    return randomise(model.to_empty(device="cpu"), seed)


def with_state(factory: Callable[[], nn.Module], state: dict[str, torch.Tensor]) -> nn.Module:
    """``factory()`` built on the meta device carrying ``state`` (strict), in eval mode."""
    with torch.device("meta"):
        model = factory()
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |got - ref| / max |ref|``."""
    return ((got - ref).abs().max() / ref.abs().max()).item()
