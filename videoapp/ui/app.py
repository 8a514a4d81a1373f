"""The web UI (``videoapp serve``): one Gradio Blocks app with four pages, one module each.

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
- **Detect**: per-person actions at keyframes (AVA-style) for a clip, with
  boxes from a file or the HOG people detector; keyframe pictures, the
  overlay video and the AVA detection CSV.

Everything the pages do is a method of :class:`VideoApp` that takes and returns
plain values (so the tests call them without a browser). Each page's methods
and its Gradio wiring (``build_tab``) live in its module (``predict_page``,
``label_page``, ``dataset_page``, ``detect_page``; what they share in ``base``
and ``common``; the model list, shared with the CLI, in ``catalog``);
:func:`build_ui` composes the tabs, and :func:`serve` launches the server.

Safety: binds 127.0.0.1 unless told otherwise; optional login; an upload
limit enforced by Gradio (``max_file_size``) and again by the store; uploads
that do not decode are refused with a message and nothing is kept (not even
Gradio's temporary copy); uploaded file names are kept as text only; Gradio's
telemetry and version check are off and it never creates share links.
"""
from __future__ import annotations

import atexit
import os
from pathlib import Path

import gradio as gr

from videoapp.store import LabelStore, check_who
from videoapp.ui import dataset_page, detect_page, label_page, predict_page
from videoapp.ui.base import Shared
from videoapp.ui.catalog import UNTRAINED_KEY, ModelCatalog, ModelChoice
from videoapp.ui.common import MODEL_LABEL_SET, UIError, _esc, _first_line, logger
from videoapp.ui.detect_page import BOX_SOURCES, DetectPage, DetectResult
from videoapp.ui.dataset_page import EXPORT_FORMATS, FINETUNE_MODES, DatasetPage, progress_html
from videoapp.ui.label_page import QUEUE_HEADERS, LabelPage
from videoapp.ui.predict_page import ClipResult, PredictPage, timeline_figure


class VideoApp(PredictPage, LabelPage, DatasetPage, DetectPage):
    """Everything the pages do, as plain methods (the Gradio wiring is in :func:`build_ui`).

    ``who`` arguments are the labeller's name: the logged-in user when the
    server has ``--auth``, else what the person typed (``anonymous`` when empty).
    """


# --------------------------------------------------------------------------- Gradio wiring
CSS = """
.va-progress {height: 12px; background: var(--neutral-200); border-radius: 6px; overflow: hidden; margin-top: 6px;}
.va-progress > div {height: 100%; background: var(--color-accent); transition: width 0.4s;}
.va-progress-text {font-size: 0.85em; color: var(--body-text-color-subdued); margin-top: 2px;}
#notice {border-left: 4px solid #d97706; padding-left: 10px; background: #fffbeb;}
#notice:empty {display: none;}
"""


def build_ui(app: VideoApp, *, auth_enabled: bool = False):
    """The Gradio Blocks of the pages, wired to ``app``'s methods (each page's ``build_tab``)."""
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

        ui = Shared(model=model, who_box=who_box, notice=notice, default_key=default_key, who_of=who_of, fail=fail)
        predict_page.build_states(ui)
        label_page.build_states(ui)
        with gr.Tabs():
            predict_page.build_tab(app, ui)
            label_page.build_tab(app, ui)
            dataset_page.build_tab(app, ui)
            detect_page.build_tab(app, ui)
        library = ui.library

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
           "timeline_figure", "progress_html", "EXPORT_FORMATS", "FINETUNE_MODES", "UNTRAINED_KEY", "MODEL_LABEL_SET",
           "QUEUE_HEADERS", "BOX_SOURCES", "DetectResult"]
