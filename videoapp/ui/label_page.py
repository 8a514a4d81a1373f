"""The Label page: a queue of the uploaded clips; the model's suggestion is pre-selected, a person
confirms it or picks another label from a label set, may narrow the segment, and saves (then the next
clip to do comes up); previous / next / skip, and a click on the queue table, move around."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from videoapp.store import StoreError, check_label, check_who, display_name, parse_label_list
from videoapp.ui import label_boxes
from videoapp.ui.base import Shared
from videoapp.ui.common import MODEL_LABEL_SET, UIError, _esc, _first_line

QUEUE_HEADERS = ["#", "clip", "length (s)", "label", "source", "by", "status"]


class LabelPage(label_boxes.BoxLabelling):
    """The Label page's methods (plain values in and out); its person boxes in :mod:`videoapp.ui.label_boxes`."""

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


def build_states(ui: Shared) -> None:
    """The Label page's per-browser state (created before the tabs)."""
    # The clip the Label page shows (and the id of its person label shown), kept in the page rather than
    # in the server's session: a click is about what the person saw when clicking, even when an upload's
    # view arrives in between.
    ui.state["label_state"] = gr.JSON({"sha": None, "seen": None}, visible="hidden", elem_id="label-state")


def build_tab(app: LabelPage, ui: Shared) -> None:
    """The Label tab and its callbacks; sets ``ui.label_set``."""
    model = ui.model
    who_box = ui.who_box
    notice = ui.notice
    library = ui.library
    default_key = ui.default_key
    fail = ui.fail
    who_of = ui.who_of
    label_state = ui.state["label_state"]
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
        label_boxes.build_section(app, ui, label_state, label_set, model)
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
    ui.label_set = label_set

    def on_model_change(model_key, set_key):
        sets = app.label_sets(model_key)
        keys = [v for _, v in sets]
        return app.notice(model_key), gr.Dropdown(choices=sets, value=set_key if set_key in keys else MODEL_LABEL_SET)

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
