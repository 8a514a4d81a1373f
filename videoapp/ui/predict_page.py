"""The Predict page: upload clips (or pick them from the library), choose the model, see the video,
the top-k labels and, for clips longer than one window, a timeline of the top classes; download the
result JSON."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gradio as gr
import numpy as np

from videoapp.store import ClipRecord
from videoapp.ui.base import AppBase, Shared
from videoapp.ui.catalog import ModelChoice
from videoapp.ui.common import _esc, _first_line, logger


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

class PredictPage(AppBase):
    """The Predict page's methods (plain values in and out)."""

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


def build_states(ui: Shared) -> None:
    """The Predict page's per-browser state (created before the tabs)."""
    ui.state["results_state"] = gr.State([])  # the ClipResults the Predict page shows
    ui.state["shown_key"] = gr.State(None)  # VideoApp.prediction_key of those results
    ui.state["uploaded"] = gr.State(0)  # counts the Predict page's stored uploads; each new count starts a prediction


def build_tab(app: PredictPage, ui: Shared) -> None:
    """The Predict tab and its callbacks; sets ``ui.library``."""
    model = ui.model
    who_box = ui.who_box
    fail = ui.fail
    who_of = ui.who_of
    results_state, shown_key, uploaded = (ui.state[k] for k in ("results_state", "shown_key", "uploaded"))
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
    ui.library = library

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
