"""The web UI (``videoapp serve``): one Gradio Blocks app with three pages.

- **Predict**: upload clips (or pick them from the library of uploaded clips),
  choose the model, see the video, the top-k labels and, for clips longer than
  one window, a timeline of the top classes; download the result JSON.
- **Label**: a queue of the uploaded clips; the model's suggestion is
  pre-selected, a person confirms it or picks another label from a label set,
  may narrow the segment, and saves (then the next clip to do comes up);
  previous / next / skip, and a click on the queue table, move around.
- **Dataset**: counts per label and per source, export (Kinetics CSV, with
  clips, class-per-folder tree), import (CSV with its videos, or a zip of an
  export), and fine-tuning on the labels in the background.

Everything the pages do is a method of :class:`VideoApp` that takes and returns
plain values (so the tests call them without a browser); :func:`build_ui`
wires them to Gradio components, and :func:`serve` launches the server.

Safety: binds 127.0.0.1 unless told otherwise; optional login; an upload
limit enforced by Gradio (``max_file_size``) and again by the store; uploads
that do not decode are refused with a message and nothing is kept (not even
Gradio's temporary copy); uploaded file names are kept as text only; Gradio's
telemetry and version check are off and it never creates share links.
"""
from __future__ import annotations

import os

# Before Gradio is imported anywhere: no telemetry, no version check against the internet.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_SHARE", "False")

import atexit
import contextlib
import html
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
import numpy as np

from videoapp.store import (
    ClipRecord,
    LabelStore,
    StoreError,
    UploadRefused,
    check_label,
    check_who,
    display_name,
    parse_label_list,
)
from videoapp.ui.finetune import FineTuneError, FineTuner, check_model_name

logger = logging.getLogger("videoapp")

UNTRAINED_KEY = "untrained"
UNTRAINED_MODEL = "mvitv2_xxs_8x64"
UNTRAINED_CLASSES = 10
MODEL_LABEL_SET = "model"  # value of the "labels of the selected model" entry in the label-set list
BROWSER_VIDEO_EXTS = (".mp4", ".webm", ".ogg")
QUEUE_HEADERS = ["#", "clip", "length (s)", "label", "source", "by", "status"]
EXPORT_FORMATS = ("Kinetics CSV (labels only)", "Kinetics CSV + clips (zip)", "Class folders (zip)")
FINETUNE_MODES = {"Linear probe (train the classifier only)": "linear", "Full fine-tune (all layers)": "full"}
_MAX_ZIP_MEMBERS = 10000


class UIError(Exception):
    """A request from the page that cannot be carried out; ``str()`` is the message shown."""


def _esc(text: Any) -> str:
    """Text safe inside Markdown/HTML (user-supplied names, labels)."""
    out = html.escape(str(text), quote=False)
    for ch in "\\`*_[]|~#":
        out = out.replace(ch, "\\" + ch)
    return out


def _n(count: int, word: str) -> str:
    """``"1 label"``, ``"2 labels"``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --------------------------------------------------------------------------- models
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
                                   UNTRAINED_MODEL, [f"untrained_{i}" for i in range(UNTRAINED_CLASSES)], False,
                                   "untrained"))
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
                import torch

                from videoapp.models.registry import create_model

                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    model = create_model(UNTRAINED_MODEL, num_classes=UNTRAINED_CLASSES)
                model.labels = list(choice.labels)
                pred = Predictor(model, device=self.device)
            else:
                pred = Predictor(choice.path, device=self.device)
            self._loaded[key] = (stamp, pred)
            while len(self._loaded) > self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))
            return pred


# --------------------------------------------------------------------------- results
@dataclass
class ClipResult:
    """One clip's prediction as the Predict page shows it."""

    sha256: str
    name: str
    video: str
    top_k: dict[str, float]
    payload: dict
    timeline: tuple[np.ndarray, np.ndarray, list[str]] | None = field(default=None, repr=False)

    @property
    def top1(self) -> str:
        return next(iter(self.top_k)) if self.top_k else ""


def timeline_figure(times: np.ndarray, scores: np.ndarray, labels: Sequence[str], title: str = "", max_classes: int = 5):
    """A matplotlib figure: probability over time of the ``max_classes`` classes that peak highest.

    ``times``: window centres in seconds ``[W]``; ``scores``: ``[W, C]``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    order = np.argsort(-scores.max(axis=0), kind="stable")[:max_classes]
    for c in order:
        ax.plot(times, scores[:, c], marker="o", markersize=3, linewidth=1.6, label=labels[c])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.02)
    if len(times):
        ax.set_xlim(float(times.min()) - 0.05, float(times.max()) + 0.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the application
class VideoApp:
    """Everything the pages do, as plain methods (the Gradio wiring is in :func:`build_ui`).

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

    # ------------------------------------------------------------------ Predict
    def select(self, files: Any, library: Sequence[str] | str | None, who: str | None = None
               ) -> tuple[list[ClipRecord], list[str]]:
        """The clips a prediction is for: the ``library`` picks (SHA-256s, in order), then the uploaded
        ``files`` (stored first, see :meth:`ingest`) not among them. Returns ``(clips, messages)``."""
        uploaded, messages = self.ingest(files, who)
        keys = [library] if isinstance(library, str) else list(library or [])
        clips: list[ClipRecord] = []
        for key in keys:
            clip = self.store.get_clip(str(key))
            if clip is None:
                messages.append("a library clip is gone (refresh the list)")
            elif all(c.sha256 != clip.sha256 for c in clips):
                clips.append(clip)
        clips += [c for c in uploaded if all(c.sha256 != x.sha256 for x in clips)]
        return clips, messages

    def prediction_key(self, clips: Sequence[ClipRecord], model_key: str, top_k: float = 5,
                       window_s: float | None = 0, stride_s: float | None = 0) -> tuple:
        """What decides a prediction's result: the clips, the model (and its file's version) and the options.

        The page compares it with the key of the result it shows, so a click that would give the same
        result again (a second click, a click queued behind the upload's own prediction) changes nothing.
        """
        choice = self.models.get(model_key)
        stamp = choice.path.stat().st_mtime_ns if choice.path is not None else 0
        return (tuple(c.sha256 for c in clips), choice.key, stamp, int(top_k or 5), float(window_s or 0),
                float(stride_s or 0))

    def predict(self, files: Any, library: Sequence[str] | str | None, model_key: str, top_k: float = 5,
                window_s: float | None = 0, stride_s: float | None = 0, who: str | None = None,
                progress: Callable | None = None) -> tuple[list[ClipResult], str, str | None]:
        """Predict uploaded ``files`` (stored first) and the ``library`` clips (SHA-256s).

        Returns ``(results, status markdown, JSON file path or None)``. The top
        label of each clip is also stored as the model's suggestion.
        """
        clips, messages = self.select(files, library, who)
        if not clips:
            if not messages:
                messages.append("Upload a video (or pick clips from the library), then predict.")
            return [], "\n\n".join(messages), None
        return self.predict_clips(clips, model_key, top_k, window_s, stride_s, messages=messages, progress=progress)

    def predict_clips(self, clips: Sequence[ClipRecord], model_key: str, top_k: float = 5,
                      window_s: float | None = 0, stride_s: float | None = 0, messages: Sequence[str] = (),
                      progress: Callable | None = None) -> tuple[list[ClipResult], str, str | None]:
        """Predict stored ``clips`` with the model ``model_key``; returns what :meth:`predict` returns.

        ``messages`` (e.g. about refused uploads) head the status.
        """
        messages = list(messages)
        choice = self.models.get(model_key)
        if progress:
            progress(0.0, desc=f"loading {choice.model_name}")
        predictor = self.models.predictor(choice.key)
        k = max(1, min(int(top_k or 5), len(predictor.labels)))
        results: list[ClipResult] = []
        for i, clip in enumerate(clips):
            if progress:
                progress((i, len(clips)), desc=f"clip {i + 1}/{len(clips)}: {clip.original_name}")
            try:
                results.append(self._predict_one(predictor, choice, clip, k, window_s, stride_s))
            except Exception as exc:  # a decoder error mid-file: report it, go on with the others
                logger.warning("prediction failed for %s: %s", clip.path, _first_line(exc))
                messages.append(f"**Failed** {_esc(clip.original_name)}: {_esc(_first_line(exc))}")
        if progress:
            progress(1.0, desc="done")
        for r in results:
            best = next(iter(r.top_k.items()))
            tl = f", timeline of {len(r.payload['windows'])} windows" if r.payload.get("windows") else ""
            messages.append(f"{_esc(r.name)}: **{_esc(best[0])}** ({best[1]:.2f}){tl}")
        messages.append(f"_Model: {_esc(choice.title)}_")
        json_path = self._write_results(results) if results else None
        return results, "\n\n".join(messages), json_path

    def _predict_one(self, predictor, choice: ModelChoice, clip: ClipRecord, k: int, window_s, stride_s) -> ClipResult:
        span_s = predictor.clip_span / max(clip.fps, 1e-6)
        win = float(window_s or 0)
        stride = float(stride_s or 0)
        if win <= 0:
            long_clip = predictor.sampling == "rate" and clip.duration_s > span_s * 1.05
            win = span_s if (long_clip or stride > 0) else 0.0
        if win > 0:
            pred = predictor.predict(clip.path, top_k=k, window=win, stride=stride if stride > 0 else win,
                                     progress=True)
        else:
            pred = predictor.predict(clip.path, top_k=k)
        payload = pred.to_dict()
        payload["video"] = clip.original_name
        payload["sha256"] = clip.sha256
        payload["model"] = choice.title
        timeline = None
        if pred.windows and len(pred.windows) > 1 and pred.window_scores is not None:
            centres = np.array([(w.start_s + w.end_s) / 2 for w in pred.windows])
            timeline = (centres, np.asarray(pred.window_scores), list(predictor.labels))
        top = {s.label: float(s.score) for s in pred.top_k}
        best = pred.top_k[0]
        prev = self.store.model_suggestion(clip, choice.key)
        if prev is None or prev.label != best.label:
            self.store.add_label(clip, best.label, source="model", labeled_by=f"model:{choice.key}",
                                 score=best.score, model=choice.key)
        return ClipResult(clip.sha256, clip.original_name, self.preview_path(clip), top, payload, timeline)

    def _write_results(self, results: Sequence[ClipResult]) -> str:
        folder = self.work_dir / "results" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        if len(results) == 1:
            path = folder / f"prediction-{results[0].sha256[:12]}.json"
            payload: Any = results[0].payload
        else:
            path = folder / "predictions.json"
            payload = [r.payload for r in results]
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        return str(path)

    def show_result(self, results: Sequence[ClipResult], sha: str | None) -> tuple[str | None, dict, Any]:
        """``(video path, {label: score}, timeline figure or None)`` of the result for ``sha``."""
        for r in results or []:
            if r.sha256 == sha:
                fig = timeline_figure(*r.timeline, title=r.name) if r.timeline else None
                return r.video, r.top_k, fig
        return None, {}, None

    # ------------------------------------------------------------------ Label
    def label_sets(self, model_key: str | None) -> list[tuple[str, str]]:
        """Label-set choices: the selected model's classes, then the stored sets."""
        out = []
        with contextlib.suppress(UIError):
            c = self.models.get(model_key)
            out.append((f"Classes of the model ({len(c.labels)})", MODEL_LABEL_SET))
        out += [(f"{s.name} ({len(s.labels)})", f"set:{s.name}") for s in self.store.label_sets()]
        return out

    def labels_for(self, set_key: str | None, model_key: str | None) -> list[str]:
        if set_key and set_key.startswith("set:"):
            s = self.store.get_label_set(set_key[4:])
            if s is not None:
                return list(s.labels)
        with contextlib.suppress(UIError):
            return list(self.models.get(model_key).labels)
        return []

    def save_label_set(self, name: str, text: str, who: str | None) -> tuple[str, str]:
        """Create or replace a label set from text (one label per line, or comma-separated).

        Returns ``(status markdown, the set's choice key)``.
        """
        try:
            labels = parse_label_list(text)
            s = self.store.save_label_set(name, labels, source="person", created_by=who)
        except StoreError as exc:
            raise UIError(str(exc)) from None
        return f"Saved label set **{_esc(s.name)}** with {len(s.labels)} labels.", f"set:{s.name}"

    def import_label_set(self, file: Any, who: str | None) -> tuple[str, str]:
        """A label set from an uploaded text file (one label per line), named after the file."""
        paths = self._paths(file)
        if not paths:
            raise UIError("choose a text file with one label per line")
        path = paths[0]
        try:
            try:
                text = Path(path).read_text(encoding="utf-8-sig")
            except (UnicodeDecodeError, OSError):
                raise UIError(f"{display_name(Path(path).name)}: not a UTF-8 text file") from None
            if len(text) > 1_000_000:
                raise UIError("label file too large (over 1 MB)")
            stem = display_name(Path(path).name).rsplit(".", 1)[0] or "imported"
            return self.save_label_set(stem, text, who)
        finally:
            self._discard_upload(path)

    def queue_rows(self) -> list[list[Any]]:
        """The label queue as table rows (see :data:`QUEUE_HEADERS`)."""
        rows = []
        for i, q in enumerate(self.store.queue(), 1):
            if q.person is not None:
                lab, src, by, status = q.person.label, "person", q.person.labeled_by, "done"
                if q.person.start_s is not None or q.person.end_s is not None:
                    seg = f" [{q.person.start_s or 0:.1f}-{q.person.end_s if q.person.end_s is not None else q.clip.duration_s:.1f} s]"
                    lab += seg
            elif q.model is not None:
                lab, src, by, status = q.model.label, "model", q.model.model or "", "suggested"
            else:
                lab, src, by, status = "", "", "", "to do"
            rows.append([i, q.clip.original_name, round(q.clip.duration_s, 2), lab, src, by, status])
        return rows

    def queue_summary(self) -> str:
        q = self.store.queue()
        done = sum(1 for x in q if x.done)
        return f"{done} of {len(q)} clips labelled" if q else "No clips yet: upload some on this page or on Predict."

    def _order(self) -> list[str]:
        return [c.sha256 for c in self.store.clips()]

    def navigate(self, sha: str | None, direction: str) -> str | None:
        """The clip to show after ``sha``: "prev", "next" (wrapping), "todo" (next not labelled by a person,
        wrapping; the current one counts last), "first_todo", or "stay"."""
        order = self._order()
        if not order:
            return None
        if direction == "first_todo" or sha not in order:
            todo = [q.clip.sha256 for q in self.store.queue() if not q.done]
            return todo[0] if todo else (sha if sha in order else order[0])
        i = order.index(sha)
        if direction == "stay":
            return sha
        if direction == "prev":
            return order[(i - 1) % len(order)]
        if direction == "next":
            return order[(i + 1) % len(order)]
        if direction == "todo":
            done = {q.clip.sha256 for q in self.store.queue() if q.done}
            for j in range(1, len(order) + 1):
                cand = order[(i + j) % len(order)]
                if cand not in done:
                    return cand
            return order[(i + 1) % len(order)]
        raise ValueError(f"unknown direction {direction!r}")

    def clip_view(self, sha: str | None, model_key: str | None, set_key: str | None, suggest: bool = True,
                  progress: Callable | None = None) -> dict[str, Any]:
        """What the Label page shows for clip ``sha``.

        Keys: ``sha``, ``video``, ``info`` (markdown), ``choices`` (labels of
        the set), ``value`` (pre-selected label: the person label, else the
        model's suggestion when it is in the set), ``start``, ``end``,
        ``suggestion`` (markdown), ``seen`` (id of the label row shown, to
        notice concurrent edits), ``messages``.
        """
        view: dict[str, Any] = {"sha": None, "video": None, "info": self.queue_summary(), "choices": [],
                                "value": None, "start": 0.0, "end": 0.0, "suggestion": "", "seen": None,
                                "messages": []}
        clip = self.store.get_clip(sha) if sha else None
        if clip is None:
            return view
        labels = self.labels_for(set_key, model_key)
        person = self.store.current_label(clip, include_model=False)
        suggestion = None
        model_choice = None
        with contextlib.suppress(UIError):
            model_choice = self.models.get(model_key)
        if model_choice is not None:
            suggestion = self.store.model_suggestion(clip, model_choice.key)
            if suggestion is None and suggest:
                if progress:
                    progress(0.2, desc="asking the model")
                try:
                    pred = self.models.predictor(model_choice.key).predict(clip.path, top_k=1)
                    best = pred.top_k[0]
                    suggestion = self.store.add_label(clip, best.label, source="model",
                                                      labeled_by=f"model:{model_choice.key}", score=best.score,
                                                      model=model_choice.key)
                except Exception as exc:
                    view["messages"].append(f"the model could not score this clip: {_esc(_first_line(exc))}")
        if suggestion is None:
            suggestion = self.store.model_suggestion(clip)
        order = self._order()
        pos = order.index(clip.sha256) + 1 if clip.sha256 in order else 0
        state = "labelled" if person else "to do"
        info = [f"**Clip {pos} of {len(order)}** · {_esc(clip.original_name)} · {clip.duration_s:.2f} s · "
                f"{clip.width}x{clip.height} · {state} · {self.queue_summary()}"]
        if person is not None:
            seg = ""
            if person.start_s is not None or person.end_s is not None:
                seg = f" for {person.start_s or 0:.2f}-{person.end_s if person.end_s is not None else clip.duration_s:.2f} s"
            info.append(f"Labelled **{_esc(person.label)}**{seg} by {_esc(person.labeled_by)} at "
                        f"{_esc(person.labeled_at[:19].replace('T', ' '))} UTC")
        sugg_md = ""
        if suggestion is not None:
            score = f" ({suggestion.score:.2f})" if suggestion.score is not None else ""
            sugg_md = f"Model suggests **{_esc(suggestion.label)}**{score}"
            if suggestion.label not in labels:
                sugg_md += " (not in this label set)"
        value = None
        if person is not None and person.label in labels:
            value = person.label
        elif suggestion is not None and suggestion.label in labels:
            value = suggestion.label
        start = person.start_s if person is not None and person.start_s is not None else 0.0
        end = person.end_s if person is not None and person.end_s is not None else round(clip.duration_s, 3)
        view.update(sha=clip.sha256, video=self.preview_path(clip), info="\n\n".join(info), choices=labels,
                    value=value, start=float(start), end=float(end), suggestion=sugg_md,
                    seen=person.id if person else None)
        return view

    def save_label(self, sha: str | None, label: str | None, start: float | None, end: float | None,
                   who: str | None, set_key: str | None = None, seen: int | None = None) -> str:
        """Store a person's label for clip ``sha``; returns the status markdown.

        ``seen``: id of the person label this page showed; when another session
        saved a newer one in between, the message says so (both rows are kept,
        this one is now current).
        """
        if not sha:
            raise UIError("no clip selected")
        clip = self.store.get_clip(sha)
        if clip is None:
            raise UIError("that clip is no longer in the store")
        if not label:
            raise UIError("pick a label first")
        try:
            label = check_label(label)
            before = self.store.current_label(clip, include_model=False)
            rec = self.store.add_label(clip, label, source="person", labeled_by=check_who(who), start_s=start,
                                       end_s=end, label_set=set_key[4:] if set_key and set_key.startswith("set:") else None)
        except StoreError as exc:
            raise UIError(str(exc)) from None
        seg = ""
        if rec.start_s is not None or rec.end_s is not None:
            seg = f" ({rec.start_s or 0:.2f}-{rec.end_s if rec.end_s is not None else clip.duration_s:.2f} s)"
        msg = f"Saved **{_esc(rec.label)}**{seg} for {_esc(clip.original_name)} (by {_esc(rec.labeled_by)})."
        if before is not None and before.id != seen:
            msg += (f" Note: {_esc(before.labeled_by)} had labelled it **{_esc(before.label)}** meanwhile; "
                    "both are kept and yours is now the current label.")
        return msg

    # ------------------------------------------------------------------ Dataset
    def counts_markdown(self) -> str:
        c = self.store.counts()
        return (f"**{c['clips']}** clips · **{c['labeled']}** labelled by a person · "
                f"**{c['suggested_only']}** with a model suggestion only · {_n(len(c['per_label']), 'label')}")

    def counts_rows(self) -> list[list[Any]]:
        c = self.store.counts()
        return [[lab, n["person"], n["model"]] for lab, n in c["per_label"].items()]

    def export(self, fmt: str, include_model: bool = False, progress: Callable | None = None) -> tuple[str, str]:
        """Export the labels; returns ``(file to download, status markdown)``."""
        if fmt not in EXPORT_FORMATS:
            raise UIError(f"unknown export format {fmt!r}")
        rows = self.store.current_labels(include_model=include_model)
        if not rows:
            raise UIError("nothing to export yet: label some clips first"
                          + ("" if include_model else " (or include the model's suggestions)"))
        if progress:
            progress(0.1, desc="writing the export")
        if fmt == EXPORT_FORMATS[0]:
            csv_path = self.store.export_kinetics(include_model=include_model, with_clips=False)
            return str(csv_path), (f"Exported {_n(len(rows), 'label')} as a Kinetics CSV "
                                   f"(kept in the data folder: `exports/{csv_path.parent.name}`).")
        if fmt == EXPORT_FORMATS[1]:
            csv_path = self.store.export_kinetics(include_model=include_model, with_clips=True)
            folder, what = csv_path.parent, "Kinetics CSV with the clips cut to their segments"
        else:
            folder = self.store.export_folder(include_model=include_model)
            what = "class-per-folder tree"
        if progress:
            progress(0.8, desc="zipping")
        archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
        return archive, f"Exported {_n(len(rows), 'label')} as a {what} (`exports/{Path(archive).name}`)."

    def _safe_extract(self, archive: str, dest: Path) -> Path:
        limit = 20 * self.store.max_clip_bytes if self.store.max_clip_bytes else None
        try:
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                if len(members) > _MAX_ZIP_MEMBERS:
                    raise UIError("zip has too many files")
                total = 0
                for m in members:
                    parts = Path(m.filename.replace("\\", "/")).parts
                    if m.is_dir() or not parts:
                        continue
                    if m.filename.startswith("/") or ".." in parts or any(":" in p for p in parts):
                        continue  # never write outside dest
                    total += m.file_size
                    if limit is not None and total > limit:
                        raise UIError(f"zip too large when unpacked (over {limit / 2**20:g} MB)")
                    target = dest.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        except zipfile.BadZipFile:
            raise UIError(f"{display_name(Path(archive).name)}: not a readable zip file") from None
        return dest

    def import_labels(self, csv_file: Any, videos: Any, label_set: str | None, who: str | None,
                      progress: Callable | None = None) -> str:
        """Import a Kinetics CSV (with its videos uploaded beside it, or clips already stored), or a zip
        of one of our exports (Kinetics CSV + clips, or a class-per-folder tree). Returns the status."""
        paths = self._paths(csv_file)
        video_paths = self._paths(videos)
        try:
            if not paths:
                raise UIError("choose a CSV file (or a zip of an export) to import")
            src = paths[0]
            name = display_name(Path(src).name)
            set_name = label_set.strip() if label_set and label_set.strip() else None
            if set_name:
                try:
                    check_label(set_name)
                except StoreError as exc:
                    raise UIError(f"label set name: {exc}") from None
            if progress:
                progress(0.1, desc="importing")
            try:
                if name.lower().endswith(".zip"):
                    work = Path(tempfile.mkdtemp(dir=self.store.tmp_dir, prefix="import-"))
                    try:
                        root = self._safe_extract(src, work)
                        csvs = sorted(root.rglob("labels.csv")) or sorted(root.rglob("*.csv"))
                        if csvs:
                            report = self.store.import_kinetics_csv(csvs[0], video_root=root, labeled_by=who,
                                                                    label_set=set_name)
                        else:
                            tops = [p for p in root.iterdir() if p.is_dir()]
                            tree = tops[0] if len(tops) == 1 and not any(
                                f.is_file() for f in tops[0].iterdir()) and _has_subdirs(tops[0]) else root
                            report = self.store.import_folder(tree, labeled_by=who, label_set=set_name)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                else:
                    mapping = {Path(display_name(Path(p).name)).stem: p for p in video_paths}
                    report = self.store.import_kinetics_csv(src, videos=mapping, labeled_by=who, label_set=set_name)
            except StoreError as exc:
                raise UIError(str(exc)) from None
        finally:
            for p in paths + video_paths:
                self._discard_upload(p)
        msg = f"Imported from {_esc(name)}: {_esc(report.summary())}."
        if report.refused:
            msg += "\n\n" + "\n\n".join(f"**Refused** {_esc(r)}" for r in report.refused[:10])
        if report.missing and not video_paths and not name.lower().endswith(".zip"):
            msg += "\n\nUpload the videos the CSV names (or a zip of the export) to import the missing rows."
        return msg

    def start_finetune(self, model_key: str, mode_title: str, epochs: float, name: str, who: str | None) -> str:
        mode = FINETUNE_MODES.get(mode_title, "linear")
        try:
            base = self.models.get(model_key)
            job = self.finetuner.start(base_weights=base.path, model_name=base.model_name,
                                       base_labels=base.labels if base.trained else None,
                                       name=check_model_name(name), mode=mode, epochs=int(epochs or 1),
                                       who=check_who(who), base_title=base.title)
        except (FineTuneError, StoreError) as exc:
            raise UIError(str(exc)) from None
        return f"Started: {_esc(job.describe())}"

    def finetune_status(self) -> tuple[str, float | None, bool]:
        """``(status markdown, fraction done or None when idle, still running)``."""
        job = self.finetuner.job
        if job is None:
            return "No fine-tune has run since the server started.", None, False
        return _esc(job.describe()), job.fraction, not job.finished

    def cancel_finetune(self) -> str:
        return "Cancelling the fine-tune." if self.finetuner.cancel() else "No fine-tune is running."

    def close(self) -> None:
        self.finetuner.shutdown()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _has_subdirs(p: Path) -> bool:
    return any(x.is_dir() for x in p.iterdir())


def progress_html(fraction: float | None, text: str = "") -> str:
    """A plain HTML progress bar (the fine-tune's)."""
    if fraction is None:
        return ""
    pct = max(0.0, min(100.0, 100.0 * fraction))
    return (f'<div class="va-progress" role="progressbar" aria-valuenow="{pct:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100"><div style="width:{pct:.1f}%"></div></div>'
            f'<div class="va-progress-text">{pct:.0f}% {html.escape(text)}</div>')


# --------------------------------------------------------------------------- Gradio wiring
CSS = """
.va-progress {height: 12px; background: var(--neutral-200); border-radius: 6px; overflow: hidden; margin-top: 6px;}
.va-progress > div {height: 100%; background: var(--color-accent); transition: width 0.4s;}
.va-progress-text {font-size: 0.85em; color: var(--body-text-color-subdued); margin-top: 2px;}
#notice {border-left: 4px solid #d97706; padding-left: 10px; background: #fffbeb;}
#notice:empty {display: none;}
"""


def build_ui(app: VideoApp, *, auth_enabled: bool = False):
    """The Gradio Blocks of the three pages, wired to ``app``'s methods."""
    from gradio.utils import get_upload_folder

    app._upload_root = get_upload_folder()

    def who_of(name: str | None, request: gr.Request | None) -> str:
        user = getattr(request, "username", None) if request is not None else None
        return check_who(user or name)

    def fail(exc: Exception) -> str:
        # Everything a person can cause ends here as a message in the page, never a traceback.
        if isinstance(exc, UIError):
            return f"**Error:** {_esc(exc)}"
        logger.exception("unexpected error in the UI")
        return f"**Error:** something went wrong ({_esc(_first_line(exc))}); the server log has the details."

    default_key = app.models.default_key()

    with gr.Blocks(title="videoapp", analytics_enabled=False) as demo:
        gr.Markdown("# videoapp\nRecognise actions in your videos, label clips, export them and fine-tune a model.")
        notice = gr.Markdown(app.notice(default_key), elem_id="notice")
        with gr.Row():
            model = gr.Dropdown(app.models.dropdown_choices(), value=default_key, label="Model",
                                info="used by Predict, by the Label page's suggestions, and as the base to fine-tune",
                                elem_id="model", scale=4)
            who_box = gr.Textbox(label="Your name (recorded with your labels)", placeholder="anonymous",
                                 elem_id="who", scale=2, interactive=not auth_enabled,
                                 visible=True)

        results_state = gr.State([])  # the ClipResults the Predict page shows
        shown_key = gr.State(None)  # VideoApp.prediction_key of those results
        uploaded = gr.State(0)  # counts the Predict page's stored uploads; each new count starts a prediction
        # The clip the Label page shows (and the id of its person label shown), kept in the page rather than
        # in the server's session: a click is about what the person saw when clicking, even when an upload's
        # view arrives in between.
        label_state = gr.JSON({"sha": None, "seen": None}, visible="hidden", elem_id="label-state")

        with gr.Tabs():
            # ---------------------------------------------------------------- Predict
            with gr.Tab("Predict", id="predict"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label=f"Upload clips (up to {app.max_upload_mb:g} MB each)",
                                         file_count="multiple", elem_id="upload")
                        upload_status = gr.Markdown(elem_id="upload-status")
                        library = gr.Dropdown(app.library_choices(), value=[], multiselect=True,
                                              label="Clips to predict (uploads join the library; pick any)",
                                              elem_id="library")
                        predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                        with gr.Accordion("Options", open=False, elem_id="options"):
                            top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k classes", elem_id="top-k")
                            window = gr.Number(0, label="Timeline window (s), 0 = one clip span", minimum=0,
                                               elem_id="window")
                            stride = gr.Number(0, label="Timeline step (s), 0 = the window", minimum=0,
                                               elem_id="stride")
                    with gr.Column(scale=2):
                        predict_status = gr.Markdown(elem_id="predict-status")
                        # allow_custom_value: a choice the page still offers while a newer prediction replaces
                        # the list is not an error (the pick then changes nothing).
                        result_pick = gr.Dropdown([], label="Result shown", visible=False, elem_id="result-pick",
                                                  allow_custom_value=True)
                        video = gr.Video(label="Video", interactive=False, elem_id="video", height=300)
                        top_labels = gr.Label(num_top_classes=10, label="Top classes", elem_id="top-labels")
                        timeline = gr.Plot(label="Timeline", visible=False, elem_id="timeline")
                        result_file = gr.File(label="Result JSON", interactive=False, elem_id="result-json")

            # ---------------------------------------------------------------- Label
            with gr.Tab("Label", id="label") as label_tab:
                label_info = gr.Markdown(elem_id="label-info")
                with gr.Row():
                    with gr.Column(scale=3):
                        label_video = gr.Video(label="Clip", interactive=False, elem_id="label-video", height=300)
                    with gr.Column(scale=2):
                        label_set = gr.Dropdown(app.label_sets(default_key), value=MODEL_LABEL_SET,
                                                label="Label set", elem_id="label-set")
                        suggestion = gr.Markdown(elem_id="suggestion")
                        # allow_custom_value: a label picked just before the set changed reaches on_save (which
                        # checks it against the set) instead of failing in Gradio with an error toast.
                        label_pick = gr.Dropdown([], label="Label", elem_id="label-pick", allow_custom_value=True)
                        with gr.Row():
                            seg_start = gr.Number(0, label="Start (s)", minimum=0, elem_id="seg-start")
                            seg_end = gr.Number(0, label="End (s)", minimum=0, elem_id="seg-end")
                        with gr.Row():
                            prev_btn = gr.Button("◀ Previous", elem_id="prev-btn")
                            save_btn = gr.Button("Save label", variant="primary", elem_id="save-btn")
                            skip_btn = gr.Button("Skip ▶", elem_id="skip-btn")
                        suggest_box = gr.Checkbox(True, label="Ask the model for a suggestion")
                        label_status = gr.Markdown(elem_id="label-status")
                queue = gr.Dataframe(headers=QUEUE_HEADERS, value=app.queue_rows() or None, interactive=False,
                                     label="Queue (click a row to open that clip)", elem_id="queue", wrap=True)
                with gr.Accordion("Add clips to the queue", open=False, elem_id="label-add"):
                    label_upload = gr.File(label="Upload clips", file_count="multiple", elem_id="label-upload")
                with gr.Accordion("Label sets", open=False):
                    set_name = gr.Textbox(label="Name", elem_id="set-name")
                    set_text = gr.Textbox(label="Labels (one per line, or comma-separated)", lines=4,
                                          elem_id="set-text")
                    with gr.Row():
                        set_save = gr.Button("Save label set", elem_id="set-save")
                        set_upload = gr.UploadButton("Import a label file (.txt)", file_types=[".txt"],
                                                     elem_id="set-upload")
                    set_status = gr.Markdown()

            # ---------------------------------------------------------------- Dataset
            with gr.Tab("Dataset", id="dataset") as dataset_tab:
                counts_md = gr.Markdown(app.counts_markdown(), elem_id="counts")
                counts_tbl = gr.Dataframe(headers=["label", "person", "model suggestions"],
                                          value=app.counts_rows() or None, interactive=False, elem_id="counts-table")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Export")
                        export_fmt = gr.Radio(list(EXPORT_FORMATS), value=EXPORT_FORMATS[0], label="Format",
                                              elem_id="export-format")
                        export_model = gr.Checkbox(False, label="Include model suggestions no person has confirmed")
                        export_btn = gr.Button("Export", elem_id="export-btn")
                        export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
                        export_status = gr.Markdown(elem_id="export-status")
                    with gr.Column():
                        gr.Markdown("### Import")
                        import_csv = gr.File(label="Kinetics CSV, or a zip of an export", elem_id="import-csv")
                        import_videos = gr.File(label="Its videos (named <youtube_id>_<start>_<end>.mp4)",
                                                file_count="multiple", elem_id="import-videos")
                        import_set = gr.Textbox(label="Also save its labels as a label set named (optional)")
                        import_btn = gr.Button("Import", elem_id="import-btn")
                        import_status = gr.Markdown(elem_id="import-status")
                gr.Markdown("### Fine-tune on my labels\nTrains a copy of the selected model on the clips people "
                            "labelled (cut to their segments) in the background; the result joins the model list.")
                with gr.Row():
                    ft_mode = gr.Radio(list(FINETUNE_MODES), value=next(iter(FINETUNE_MODES)), label="Mode",
                                       elem_id="ft-mode")
                    ft_epochs = gr.Number(20, label="Epochs", minimum=1, maximum=1000, precision=0)
                    ft_name = gr.Textbox(value=lambda: time.strftime("finetuned-%Y%m%d-%H%M"), label="Name of the new model",
                                         elem_id="ft-name")
                with gr.Row():
                    ft_start = gr.Button("Start fine-tuning", variant="primary", elem_id="ft-start")
                    ft_cancel = gr.Button("Cancel", elem_id="ft-cancel")
                ft_progress = gr.HTML(elem_id="ft-progress")
                ft_status = gr.Markdown(elem_id="ft-status")
                ft_timer = gr.Timer(2.0, active=False)

        # -------------------------------------------------------------------- callbacks
        def on_model_change(model_key, set_key):
            sets = app.label_sets(model_key)
            keys = [v for _, v in sets]
            return app.notice(model_key), gr.Dropdown(choices=sets, value=set_key if set_key in keys else MODEL_LABEL_SET)


        # Predict page. A drop stores the files, lists them in the library and selects them (on_upload, quick,
        # beside a running prediction), then the new count in `uploaded` starts the prediction of the selection.
        # That prediction and the Predict button are one event: a click while it runs is deferred
        # ("always_last") and then sent with the page's values of that moment. A click that would give the
        # result shown again changes nothing; a request with nothing to predict never clears a result.
        def on_upload(files, count, name, request: gr.Request):
            try:
                clips, msgs = app.ingest(files, who_of(name, request))
            except Exception as exc:
                return gr.skip(), None, fail(exc), gr.skip()
            if not clips:
                return gr.Dropdown(choices=app.library_choices()), None, "\n\n".join(msgs), gr.skip()
            names = ", ".join(_esc(c.original_name) for c in clips)
            msgs.insert(0, f"Added {names} to the library (selected below).")
            selected = gr.Dropdown(choices=app.library_choices(), value=[c.sha256 for c in clips], multiselect=True)
            return selected, None, "\n\n".join(msgs), (count or 0) + 1

        upload.upload(on_upload, [upload, uploaded, who_box], [library, upload, upload_status, uploaded],
                      trigger_mode="multiple", concurrency_id="ingest", concurrency_limit=1,
                      show_progress_on=[upload])

        def run_predict(files, lib, model_key, k, win, step, name, results, key, request: gr.Request,
                        progress=gr.Progress(track_tqdm=True)):
            keep = (gr.skip(),) * 8
            try:
                clips, msgs = app.select(files, lib, who_of(name, request))
                if not clips:
                    if msgs or not results:
                        text = "\n\n".join(msgs) or "Upload a video (or pick clips from the library), then predict."
                        return keep[:2] + (text,) + keep[3:]
                    return keep
                new_key = app.prediction_key(clips, model_key, k, win, step)
                if new_key == key and not msgs:
                    return keep
                results, status, json_path = app.predict_clips(clips, model_key, k, win, step, messages=msgs,
                                                               progress=progress)
            except Exception as exc:
                return keep[:2] + (fail(exc),) + keep[3:]
            first = results[0].sha256 if results else None
            vid, top, fig = app.show_result(results, first)
            pick = gr.Dropdown(choices=[(r.name, r.sha256) for r in results], value=first,
                               visible=len(results) > 1)
            return (results, new_key, status, pick, vid, top, gr.Plot(value=fig, visible=fig is not None),
                    json_path)

        gr.on([predict_btn.click, uploaded.change], run_predict,
              [upload, library, model, top_k, window, stride, who_box, results_state, shown_key],
              [results_state, shown_key, predict_status, result_pick, video, top_labels, timeline, result_file],
              trigger_mode="always_last", concurrency_id="model", concurrency_limit=1)

        def on_pick(results, sha):
            if all(r.sha256 != sha for r in results or []):
                return gr.skip(), gr.skip(), gr.skip()
            vid, top, fig = app.show_result(results, sha)
            return vid, top, gr.Plot(value=fig, visible=fig is not None)

        result_pick.input(on_pick, [results_state, result_pick], [video, top_labels, timeline])

        # Label page
        label_outputs = [label_state, label_info, label_video, label_pick, seg_start, seg_end, suggestion, queue,
                         label_status]

        def render(sha, model_key, set_key, suggest, status="", progress=None):
            view = app.clip_view(sha, model_key, set_key, suggest, progress=progress)
            msgs = ([status] if status else []) + view["messages"]
            return ({"sha": view["sha"], "seen": view["seen"]}, view["info"], view["video"],
                    gr.Dropdown(choices=view["choices"], value=view["value"]), view["start"], view["end"],
                    view["suggestion"], gr.Dataframe(value=app.queue_rows() or None), "\n\n".join(msgs))

        def label_error(exc):
            return (gr.skip(),) * (len(label_outputs) - 1) + (fail(exc),)

        def go(direction):
            def handler(state, model_key, set_key, suggest, progress=gr.Progress()):
                try:
                    sha = app.navigate((state or {}).get("sha"), direction)
                    return render(sha, model_key, set_key, suggest, progress=progress)
                except Exception as exc:
                    return label_error(exc)
            return handler

        nav_inputs = [label_state, model, label_set, suggest_box]
        # A new model: new notice, its classes in the label-set list, its suggestion for the clip shown.
        def refresh_shown(state, model_key, set_key, suggest, progress=gr.Progress()):
            if not (state or {}).get("sha"):
                return (gr.update(),) * len(label_outputs)  # the Label page has not been opened yet
            return go("stay")(state, model_key, set_key, suggest, progress)

        model.change(on_model_change, [model, label_set], [notice, label_set]).then(
            refresh_shown, nav_inputs, label_outputs, trigger_mode="always_last", concurrency_id="model",
            concurrency_limit=1)
        label_tab.select(go("stay"), nav_inputs, label_outputs, concurrency_id="model", concurrency_limit=1)
        prev_btn.click(go("prev"), nav_inputs, label_outputs, concurrency_id="model", concurrency_limit=1)
        skip_btn.click(go("next"), nav_inputs, label_outputs, concurrency_id="model", concurrency_limit=1)
        label_set.change(go("stay"), nav_inputs, label_outputs, concurrency_id="model", concurrency_limit=1)

        def on_save(state, label, start, end, name, model_key, set_key, suggest, request: gr.Request,
                    progress=gr.Progress()):
            state = state or {}
            try:
                if label and label not in app.labels_for(set_key, model_key):
                    raise UIError(f"{label} is not in the label set: pick a label from the list")
                msg = app.save_label(state.get("sha"), label, start, end, who_of(name, request), set_key,
                                     state.get("seen"))
                nxt = app.navigate(state.get("sha"), "todo")
                return render(nxt, model_key, set_key, suggest, status=msg, progress=progress)
            except Exception as exc:
                return label_error(exc)

        save_btn.click(on_save, [label_state, label_pick, seg_start, seg_end, who_box, model, label_set, suggest_box],
                       label_outputs, concurrency_id="model", concurrency_limit=1)

        def on_queue_select(state, model_key, set_key, suggest, evt: gr.SelectData, progress=gr.Progress()):
            try:
                row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
                order = app._order()
                sha = order[int(row)] if 0 <= int(row) < len(order) else (state or {}).get("sha")
                return render(sha, model_key, set_key, suggest, progress=progress)
            except Exception as exc:
                return label_error(exc)

        queue.select(on_queue_select, nav_inputs, label_outputs, concurrency_id="model", concurrency_limit=1)

        def on_label_upload(files, state, model_key, set_key, suggest, name, request: gr.Request,
                            progress=gr.Progress()):
            try:
                clips, msgs = app.ingest(files, who_of(name, request))
                sha = clips[0].sha256 if clips else (state or {}).get("sha") or app.navigate(None, "first_todo")
                if clips:
                    msgs.append(f"Added {len(clips)} clip(s) to the queue.")
                out = render(sha, model_key, set_key, suggest, status="\n\n".join(msgs), progress=progress)
            except Exception as exc:
                out = label_error(exc)
            return out + (None, gr.Dropdown(choices=app.library_choices()))

        # "multiple": a second drop while the first is stored and shown is stored too (never skipped).
        label_upload.upload(on_label_upload, [label_upload] + nav_inputs + [who_box], label_outputs + [label_upload, library],
                            trigger_mode="multiple", concurrency_id="model", concurrency_limit=1)

        def on_set_save(name, text, who_name, model_key, request: gr.Request):
            try:
                msg, key = app.save_label_set(name, text, who_of(who_name, request))
                return msg, gr.Dropdown(choices=app.label_sets(model_key), value=key)
            except Exception as exc:
                return fail(exc), gr.update()

        set_save.click(on_set_save, [set_name, set_text, who_box, model], [set_status, label_set])

        def on_set_upload(file, who_name, model_key, request: gr.Request):
            try:
                msg, key = app.import_label_set(file, who_of(who_name, request))
                return msg, gr.Dropdown(choices=app.label_sets(model_key), value=key)
            except Exception as exc:
                return fail(exc), gr.update()

        set_upload.upload(on_set_upload, [set_upload, who_box, model], [set_status, label_set])

        # Dataset page
        def refresh_dataset(model_key):
            status, frac, running = app.finetune_status()
            return (app.counts_markdown(), gr.Dataframe(value=app.counts_rows() or None), status,
                    progress_html(frac), gr.Timer(active=running),
                    gr.Dropdown(choices=app.models.dropdown_choices(), value=model_key))

        dataset_outputs = [counts_md, counts_tbl, ft_status, ft_progress, ft_timer, model]
        dataset_tab.select(refresh_dataset, [model], dataset_outputs)

        def on_export(fmt, include_model, progress=gr.Progress()):
            try:
                path, msg = app.export(fmt, include_model, progress=progress)
                return path, msg
            except Exception as exc:
                return None, fail(exc)

        export_btn.click(on_export, [export_fmt, export_model], [export_file, export_status],
                         concurrency_id="io", concurrency_limit=1)

        def on_import(csv_file, vids, set_label, who_name, model_key, request: gr.Request, progress=gr.Progress()):
            try:
                msg = app.import_labels(csv_file, vids, set_label, who_of(who_name, request), progress=progress)
            except Exception as exc:
                msg = fail(exc)
            return (msg, None, None, app.counts_markdown(), gr.Dataframe(value=app.counts_rows() or None),
                    gr.Dropdown(choices=app.library_choices()),
                    gr.Dropdown(choices=app.label_sets(model_key)))

        import_btn.click(on_import, [import_csv, import_videos, import_set, who_box, model],
                         [import_status, import_csv, import_videos, counts_md, counts_tbl, library, label_set],
                         concurrency_id="io", concurrency_limit=1)

        def on_ft_start(model_key, mode, epochs, name, who_name, request: gr.Request):
            try:
                msg = app.start_finetune(model_key, mode, epochs, name, who_of(who_name, request))
            except Exception as exc:
                return fail(exc), gr.update(), gr.Timer(active=app.finetuner.running())
            _, frac, _ = app.finetune_status()
            return msg, progress_html(frac or 0.0, "preparing"), gr.Timer(active=True)

        ft_start.click(on_ft_start, [model, ft_mode, ft_epochs, ft_name, who_box], [ft_status, ft_progress, ft_timer])

        def on_ft_cancel():
            return app.cancel_finetune()

        ft_cancel.click(on_ft_cancel, None, [ft_status])

        def on_tick(model_key):
            status, frac, running = app.finetune_status()
            return (status, progress_html(frac), gr.Timer(active=running),
                    gr.Dropdown(choices=app.models.dropdown_choices(), value=model_key))

        ft_timer.tick(on_tick, [model], [ft_status, ft_progress, ft_timer, model])

        def on_load(model_key):
            return (gr.Dropdown(choices=app.models.dropdown_choices(), value=model_key),
                    gr.Dropdown(choices=app.library_choices()), app.notice(model_key))

        demo.load(on_load, [model], [model, library, notice])

        def on_load_user(request: gr.Request):
            user = getattr(request, "username", None)
            return gr.Textbox(value=user) if user else gr.update()

        if auth_enabled:
            demo.load(on_load_user, None, [who_box])
    return demo


# --------------------------------------------------------------------------- serving
def make_app(data_dir: str | os.PathLike | None = None, *, weights: str | os.PathLike | None = None,
             weights_dir: str | os.PathLike | None = None, max_upload_mb: float = 200.0) -> VideoApp:
    """A :class:`VideoApp` on the store in ``data_dir`` with the model list of ``weights_dir`` (default: ``weights/``)."""
    from videoapp.weights import WEIGHTS_DIR

    store = LabelStore(data_dir, max_clip_bytes=int(max_upload_mb * 2**20))
    models = ModelCatalog(Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR, store.models_dir,
                          extra=Path(weights) if weights is not None else None)
    return VideoApp(store, models, max_upload_mb=max_upload_mb)


def serve(data_dir: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = 7860,
          auth: tuple[str, str] | None = None, max_upload_mb: float = 200.0,
          weights: str | os.PathLike | None = None, quiet: bool = False) -> None:
    """Build the app and serve it until interrupted (``videoapp serve``)."""
    app = make_app(data_dir, weights=weights, max_upload_mb=max_upload_mb)
    demo = build_ui(app, auth_enabled=auth is not None)
    atexit.register(app.close)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, auth=auth,
        auth_message="videoapp: log in to label and predict" if auth else None,
        max_file_size=int(max_upload_mb * 2**20),
        allowed_paths=[str(app.store.clips_dir), str(app.store.exports_dir), str(app.work_dir)],
        show_error=False, quiet=quiet, ssr_mode=False, mcp_server=False, pwa=False,
        footer_links=["gradio", "settings"], css=CSS,
    )


__all__ = ["VideoApp", "ModelCatalog", "ModelChoice", "ClipResult", "UIError", "build_ui", "make_app", "serve",
           "timeline_figure", "progress_html", "EXPORT_FORMATS", "FINETUNE_MODES", "UNTRAINED_KEY"]
