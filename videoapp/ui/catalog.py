"""The models on offer (shipped, fine-tuned, ``--weights``) and the untrained fallback, shared with the CLI.

While no trained weights exist (``weights/default.safetensors`` missing and no
``--weights``), ``videoapp predict`` and the UI fall back to the same untrained
tiny model (:func:`untrained_model`): seeded, so every process gets the same
random weights, with placeholder labels; both say so loudly.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoapp.ui.common import UIError

logger = logging.getLogger("videoapp")

UNTRAINED_KEY = "untrained"
UNTRAINED_MODEL = "mvitv2_xxs_8x64"
UNTRAINED_CLASSES = 10
UNTRAINED_SEED = 0


def untrained_labels(num_classes: int = UNTRAINED_CLASSES) -> list[str]:
    """The untrained model's placeholder labels: ``untrained_0`` ... ``untrained_{n-1}``."""
    return [f"untrained_{i}" for i in range(num_classes)]


def untrained_model(name: str = UNTRAINED_MODEL, num_classes: int = UNTRAINED_CLASSES):
    """The fallback when no trained weights exist: registered model ``name`` with random weights.

    Seeded with :data:`UNTRAINED_SEED` (without touching the global RNG), so
    the CLI and the UI, in any process, predict with the same weights; its
    ``pretrained_cfg.labels`` are :func:`untrained_labels`. Raises ``KeyError``-like registry
    errors for an unknown ``name``.
    """
    import torch

    from videoapp.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(UNTRAINED_SEED)
        model = create_model(name, num_classes=num_classes)
    model.pretrained_cfg = model.pretrained_cfg.replace(labels=tuple(untrained_labels(num_classes)))
    return model


@dataclass
class ModelChoice:
    """One entry of the model list: ``key`` is what the page sends back; ``path`` is never taken from the page."""

    key: str
    path: Path | None
    title: str
    model_name: str
    labels: list[str]
    trained: bool
    kind: str  # "shipped", "finetuned", "file", "untrained"


class ModelCatalog:
    """The models the UI offers, and loaded :class:`~videoapp.engine.predict.Predictor` objects.

    Lists ``weights_dir/*.safetensors`` (shipped), ``models_dir/*.safetensors``
    (fine-tuned from the UI) and ``extra`` (``--weights``); while
    ``weights_dir/default.safetensors`` is missing it also offers an untrained
    tiny model (as the CLI does), and says so in the page. The list is scanned
    on every call, so new weights appear without a restart.
    """

    def __init__(self, weights_dir: Path, models_dir: Path, extra: Path | None = None, device: str | None = None,
                 max_loaded: int = 2) -> None:
        import torch

        self.weights_dir = Path(weights_dir)
        self.models_dir = Path(models_dir)
        self.extra = Path(extra).resolve() if extra is not None else None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_loaded = max_loaded
        self._loaded: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    @property
    def default_missing(self) -> bool:
        return not (self.weights_dir / "default.safetensors").is_file()

    def _read(self, path: Path, kind: str, key: str) -> ModelChoice | None:
        from videoapp.weights import CheckpointError, read_metadata

        try:
            meta = read_metadata(path)
        except CheckpointError as exc:
            logger.warning("skipping %s: %s", path, exc)
            return None
        if meta.get("task") == "detection":
            return None  # an action detector (the Detect page's, see detector_path): not a clip classifier
        labels = [str(x) for x in (meta.get("labels") or [])]
        model = str(meta.get("model") or "?")
        where = {"shipped": "shipped", "finetuned": "fine-tuned here", "file": "--weights"}[kind]
        title = f"{path.stem} ({model}, {len(labels)} classes, {where})"
        return ModelChoice(key, path, title, model, labels, True, kind)

    def choices(self) -> list[ModelChoice]:
        """Every model on offer, the default first."""
        out: list[ModelChoice] = []
        if self.weights_dir.is_dir():
            files = sorted(self.weights_dir.glob("*.safetensors"), key=lambda p: (p.name != "default.safetensors", p.name))
            for p in files:
                c = self._read(p, "shipped", f"shipped:{p.name}")
                if c:
                    out.append(c)
        if self.extra is not None and self.extra.is_file() and not any(c.path.resolve() == self.extra for c in out):
            c = self._read(self.extra, "file", f"file:{self.extra.name}")
            if c:
                out.insert(0 if self.default_missing else 1, c)
        if self.models_dir.is_dir():
            for p in sorted(self.models_dir.glob("*.safetensors"), key=lambda p: -p.stat().st_mtime):
                c = self._read(p, "finetuned", f"finetuned:{p.name}")
                if c:
                    out.append(c)
        if self.default_missing:
            out.append(ModelChoice(UNTRAINED_KEY, None,
                                   f"untrained {UNTRAINED_MODEL} (no trained weights: predictions are meaningless)",
                                   UNTRAINED_MODEL, untrained_labels(), False, "untrained"))
        return out

    def default_key(self) -> str:
        """``--weights`` when given, else ``default.safetensors``, else any trained weights, else the untrained model."""
        cs = self.choices()
        if self.extra is not None:
            for c in cs:
                if c.path is not None and c.path.resolve() == self.extra:
                    return c.key
        if not self.default_missing:
            return cs[0].key
        for c in cs:
            if c.trained:
                return c.key
        return UNTRAINED_KEY

    def get(self, key: str | None) -> ModelChoice:
        for c in self.choices():
            if c.key == key:
                return c
        raise UIError("that model is no longer available: pick one from the list")

    def detector_path(self) -> Path | None:
        """The shipped action detector (``weights_dir/detector.safetensors``), or ``None`` when it is missing."""
        from videoapp.engine.detect import DEFAULT_DETECTOR_WEIGHTS_NAME

        path = self.weights_dir / DEFAULT_DETECTOR_WEIGHTS_NAME
        return path if path.is_file() else None

    def dropdown_choices(self) -> list[tuple[str, str]]:
        return [(c.title, c.key) for c in self.choices()]

    def predictor(self, key: str):
        """The Predictor for ``key`` (loaded once, reloaded when its file changes; at most ``max_loaded`` kept)."""
        from videoapp.engine.predict import Predictor

        choice = self.get(key)
        stamp = choice.path.stat().st_mtime if choice.path is not None else 0.0
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None and hit[0] == stamp:
                self._loaded[key] = self._loaded.pop(key)  # most recently used last
                return hit[1]
            if choice.path is None:
                pred = Predictor(untrained_model(choice.model_name), device=self.device)
            else:
                pred = Predictor(choice.path, device=self.device)
            self._loaded[key] = (stamp, pred)
            while len(self._loaded) > self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))
            return pred
