"""Official class-name lists shipped with the package.

``kinetics400`` / ``kinetics600`` / ``kinetics700`` / ``ssv2``: one name per line,
line number = class id. ``ava``: the 60 evaluated AVA v2.2 actions as
``{action_id: name}`` with the official 1-based ids.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

_FILES = {
    "kinetics400": "kinetics400.txt",
    "kinetics600": "kinetics600.txt",
    "kinetics700": "kinetics700.txt",
    "ssv2": "ssv2.txt",
}

# Standard datasets recognised from a checkpoint's class count alone.
DATASET_BY_NUM_CLASSES = {400: "kinetics400", 600: "kinetics600", 700: "kinetics700", 174: "ssv2"}


@lru_cache(maxsize=None)
def load_labels(name: str) -> tuple[str, ...]:
    """Class names of dataset ``name`` (one of kinetics400/600/700, ssv2), indexed by class id."""
    if name not in _FILES:
        raise KeyError(f"unknown label set '{name}' (known: {', '.join(sorted(_FILES))})")
    text = resources.files(__package__).joinpath(_FILES[name]).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


@lru_cache(maxsize=None)
def load_ava_labels() -> dict[int, str]:
    """The 60 AVA v2.2 evaluated actions, ``{official 1-based action id: name}``."""
    text = resources.files(__package__).joinpath("ava_v2.2_eval60.txt").read_text(encoding="utf-8")
    out: dict[int, str] = {}
    for line in text.splitlines():
        if line.strip():
            idx, name = line.split(":", 1)
            out[int(idx)] = name.strip()
    return out
