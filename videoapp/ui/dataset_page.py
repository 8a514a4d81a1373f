"""The Dataset page: counts per label and per source, export (Kinetics CSV, with clips, class-per-folder
tree), import (CSV with its videos, or a zip of an export), and fine-tuning on the labels in the
background."""
from __future__ import annotations

import html
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from videoapp.store import StoreError, check_label, check_who, display_name
from videoapp.ui.base import AppBase, Shared
from videoapp.ui.common import UIError, _MAX_ZIP_MEMBERS, _esc, _n
from videoapp.ui.finetune import FineTuneError, check_model_name

EXPORT_FORMATS = ("Kinetics CSV (labels only)", "Kinetics CSV + clips (zip)", "Class folders (zip)")
FINETUNE_MODES = {"Linear probe (train the classifier only)": "linear", "Full fine-tune (all layers)": "full"}


class DatasetPage(AppBase):
    """The Dataset page's methods (plain values in and out)."""

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


def build_tab(app: DatasetPage, ui: Shared) -> None:
    """The Dataset tab and its callbacks."""
    model = ui.model
    who_box = ui.who_box
    library = ui.library
    label_set = ui.label_set
    fail = ui.fail
    who_of = ui.who_of
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
