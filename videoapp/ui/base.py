"""The part of the UI application every page uses (store, models, uploads, library) and the wiring context."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from videoapp.store import ClipRecord, LabelStore, UploadRefused, display_name
from videoapp.ui.catalog import UNTRAINED_KEY, ModelCatalog
from videoapp.ui.common import BROWSER_VIDEO_EXTS, _esc
from videoapp.ui.finetune import FineTuner


class AppBase:
    """What every page uses: the store, the model catalog, uploads and the clip library.

    Each page adds its methods in a subclass (``PredictPage``, ``LabelPage``, ...);
    :class:`videoapp.ui.app.VideoApp` combines them.

    ``who`` arguments are the labeller's name: the logged-in user when the
    server has ``--auth``, else what the person typed (``anonymous`` when empty).
    """

    def __init__(self, store: LabelStore, models: ModelCatalog, *, max_upload_mb: float = 200.0,
                 work_dir: Path | None = None, finetuner: FineTuner | None = None) -> None:
        self.store = store
        self.models = models
        self.max_upload_mb = float(max_upload_mb)
        self.store.max_clip_bytes = int(self.max_upload_mb * 2**20)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="videoapp-ui-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.finetuner = finetuner or FineTuner(store)
        self._upload_root = None  # Gradio's upload folder, set by build_ui
        # Gradio's upload path -> SHA-256 of the stored clip (None: refused). A page sends the path of an upload
        # it still shows (a click queued before the upload's own event ran): the copy is gone by then, but the
        # clip is known. Bounded: only the most recent uploads matter.
        self._ingested: dict[str, str | None] = {}
        self._ingest_lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def notice(self, model_key: str | None) -> str:
        """The banner above the pages: a warning while the selected model is the untrained fallback, else empty."""
        lines = []
        if model_key == UNTRAINED_KEY:
            lines.append("**Untrained model.** No trained weights were found (`weights/default.safetensors` is "
                         "missing), so the page uses an untrained model: its labels are placeholders and its "
                         "predictions are meaningless. Import or train weights, or pick another model.")
        return "\n\n".join(lines)

    def _temp_upload(self, path: str) -> bool:
        """Whether ``path`` is a temporary copy Gradio made of an upload (ours to delete)."""
        root = self._upload_root
        if not root:
            return False
        try:
            return Path(path).resolve().is_relative_to(Path(root).resolve())
        except OSError:
            return False

    def _discard_upload(self, path: str) -> None:
        if self._temp_upload(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
            parent = Path(path).resolve().parent
            if parent != Path(self._upload_root).resolve():  # Gradio keeps each upload in its own folder
                with contextlib.suppress(OSError):
                    parent.rmdir()

    @staticmethod
    def _paths(files: Any) -> list[str]:
        if files is None:
            return []
        if isinstance(files, (str, os.PathLike)):
            return [os.fspath(files)]
        out = []
        for f in files:
            if f is None:
                continue
            out.append(os.fspath(getattr(f, "path", None) or getattr(f, "name", None) or f))
        return out

    def ingest(self, files: Any, who: str | None = None) -> tuple[list[ClipRecord], list[str]]:
        """Store uploaded files; returns ``(stored clips, messages)``. Refused files leave nothing behind.

        An upload this app has handled before (the same Gradio path, sent again
        by a page that still showed it) gives its stored clip again, without a
        message; one that was refused before is skipped silently (it was said).
        """
        clips, messages = [], []
        for path in self._paths(files):
            name = display_name(Path(path).name)
            with self._ingest_lock:  # the same upload from two events at once: stored once, by the first
                if path in self._ingested:
                    sha = self._ingested[path]
                    clip = self.store.get_clip(sha) if sha else None
                    if clip is not None and all(c.sha256 != clip.sha256 for c in clips):
                        clips.append(clip)
                    continue
                try:
                    clip, created = self.store.add_clip(path, original_name=name, added_by=who)
                except UploadRefused as exc:
                    self._remember(path, None)
                    messages.append(f"**Refused** {_esc(exc)}")
                    continue
                finally:
                    self._discard_upload(path)
                self._remember(path, clip.sha256)
            if all(c.sha256 != clip.sha256 for c in clips):
                clips.append(clip)
            if not created:
                messages.append(f"{_esc(name)}: already in the library (as {_esc(clip.original_name)})")
        return clips, messages

    def _remember(self, path: str, sha: str | None) -> None:
        if not self._temp_upload(path):
            return  # only Gradio's own upload copies are deleted, so only they can come back gone
        self._ingested[path] = sha
        while len(self._ingested) > 1000:
            self._ingested.pop(next(iter(self._ingested)))

    def library_choices(self) -> list[tuple[str, str]]:
        """``(title, sha256)`` of every stored clip, newest first."""
        return [(f"{c.original_name} · {c.duration_s:.1f} s · {c.sha256[:8]}", c.sha256)
                for c in reversed(self.store.clips())]

    def preview_path(self, clip: ClipRecord) -> str:
        """A file the browser can play for ``clip``: the stored file, or an MP4 made once for other containers."""
        if clip.ext in BROWSER_VIDEO_EXTS:
            return str(clip.path)
        out = self.work_dir / "previews" / f"{clip.sha256}.mp4"
        if not out.exists():
            self.store.write_segment(clip, 0.0, clip.duration_s + 1.0, out)  # forces a re-encode
        return str(out)

    def close(self) -> None:
        """Stop a running fine-tune and delete the app's temporary files."""
        self.finetuner.shutdown()
        shutil.rmtree(self.work_dir, ignore_errors=True)


@dataclass
class Shared:
    """Components and helpers the pages' Gradio wiring shares (built by :func:`videoapp.ui.app.build_ui`).

    Pages built earlier fill in what later pages use (``library`` by Predict,
    ``label_set`` by Label).
    """

    model: Any
    who_box: Any
    notice: Any
    default_key: str
    who_of: Callable[[str | None, Any], str]
    fail: Callable[[Exception], str]
    library: Any = None
    label_set: Any = None
    state: dict[str, Any] = field(default_factory=dict)  # per-browser gr.State / hidden components, by name
