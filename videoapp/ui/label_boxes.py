"""Person boxes on the Label page (AVA-style labels): draw or adjust boxes on a keyframe, tick their actions, save.

The drawing is the ``gradio-image-annotation`` component (works with Gradio
6): the keyframe with the clip's current boxes on it, each named ``#<id>``
(its store id); a box drawn anew is named ``person``. Saving compares the
drawing with the store: a new box is added with the ticked actions, a moved or
resized one is stored as a new version (``replace_box``; it takes the ticked
actions, or keeps its own when none are ticked), an untouched one stays as it
is, and one removed from the drawing is deleted; each version records who and ``source="person"``. The
boxes of every clip export as an AVA ground-truth CSV with its label map
(:meth:`~videoapp.store.LabelStore.export_ava`).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import gradio as gr
import numpy as np

from videoapp.store import BoxRecord, ClipRecord, StoreError, check_who
from videoapp.ui.base import AppBase, Shared
from videoapp.ui.common import UIError, _esc

NEW_BOX = "person"  # the annotator's name for a box drawn anew
BOX_HEADERS = ["id", "time (s)", "x1", "y1", "x2", "y2", "actions", "source", "by"]
_ID = re.compile(r"#(\d+)$")


class BoxLabelling(AppBase):
    """The Label page's box methods (plain values in and out)."""

    def _clip(self, sha: str | None) -> ClipRecord:
        clip = self.store.get_clip(sha) if sha else None
        if clip is None:
            raise UIError("open a clip first (upload one, or pick one in the queue)")
        return clip

    def keyframe(self, sha: str | None, time_s: float | None) -> tuple[dict, float, str]:
        """The annotator's value for the keyframe of clip ``sha`` nearest ``time_s`` seconds.

        Returns ``({"image": uint8 RGB [H, W, 3], "boxes": [...]}, keyframe time
        in seconds (that frame's time, ``index / fps``), Markdown)``; the boxes
        are the clip's current boxes at that time, in pixels, named ``#<id>``.
        """
        from videoapp.data.video import VideoReader, VideoError

        clip = self._clip(sha)
        t = float(time_s or 0.0)
        try:
            with VideoReader(clip.path) as reader:
                info = reader.info
                i = min(max(int(round(t * info.fps)), 0), info.num_frames - 1)
                frame = np.ascontiguousarray(reader.get_frames([i])[0])
        except VideoError as exc:
            raise UIError(str(exc)) from None
        t = round(i / info.fps, 6)  # the frame's own time: boxes saved at it come back at it
        h, w = frame.shape[:2]
        boxes = [{"xmin": b.box[0] * w, "ymin": b.box[1] * h, "xmax": b.box[2] * w, "ymax": b.box[3] * h,
                  "label": f"#{b.id}"} for b in self.store.boxes_of(clip, t)]
        msg = (f"Keyframe {t:g} s of {_esc(clip.original_name)} (frame {i}): {len(boxes)} box"
               f"{'es' if len(boxes) != 1 else ''}. Draw a box (▭ tool), tick its actions, save.")
        return {"image": frame, "boxes": boxes}, t, msg

    def save_boxes(self, sha: str | None, time_s: float | None, drawing: dict | None, actions: Sequence[str] | None,
                   who: str | None) -> str:
        """Store the drawing of the keyframe at ``time_s`` (see the module docstring); returns a summary.

        ``drawing``: the annotator's value, boxes in pixels of ``drawing["image"]``.
        """
        clip = self._clip(sha)
        if not drawing or drawing.get("image") is None:
            raise UIError("show a keyframe first")
        img = np.asarray(drawing["image"])
        h, w = img.shape[:2]
        t = float(time_s or 0.0)
        ticked = [a for a in (actions or [])]
        current = {b.id: b for b in self.store.boxes_of(clip, t)}
        who = check_who(who)
        added, adjusted, kept = [], [], set()
        try:
            for d in drawing.get("boxes") or []:
                box = (float(d["xmin"]) / w, float(d["ymin"]) / h, float(d["xmax"]) / w, float(d["ymax"]) / h)
                box = tuple(min(max(v, 0.0), 1.0) for v in box)
                m = _ID.search(str(d.get("label") or ""))
                old = current.get(int(m.group(1))) if m else None
                if old is None:
                    added.append(self.store.add_box(clip, t, box, ticked, source="person", labeled_by=who))
                    continue
                kept.add(old.id)
                moved = max(abs(a - b) for a, b in zip(box, old.box)) * max(w, h) > 0.5  # half a pixel
                if moved:  # untouched boxes keep their actions: the ticks are for what is drawn now
                    adjusted.append(self.store.replace_box(old.id, box, ticked or list(old.actions),
                                                           source="person", labeled_by=who))
            deleted = [self.store.delete_box(i, labeled_by=who) for i in current if i not in kept]
        except StoreError as exc:
            raise UIError(str(exc)) from None
        parts = []
        if added:
            parts.append(f"{len(added)} new ({_esc(', '.join(ticked)) or 'no action yet'})")
        if adjusted:
            parts.append(f"{len(adjusted)} changed")
        if deleted:
            parts.append(f"{len(deleted)} deleted")
        return (f"Saved the boxes at {t:g} s of {_esc(clip.original_name)}: {', '.join(parts)}." if parts
                else "Nothing changed on this keyframe.")

    def box_rows(self, sha: str | None) -> list[list[Any]]:
        """The current boxes of clip ``sha`` as table rows (see :data:`BOX_HEADERS`)."""
        clip = self.store.get_clip(sha) if sha else None
        if clip is None:
            return []
        return [_row(b) for b in self.store.boxes_of(clip)]

    def export_boxes(self) -> tuple[list[str], str]:
        """Every clip's current person boxes as an AVA ground-truth CSV and its ``.pbtxt`` label map."""
        if not any(b.actions and not b.source.startswith("model:") for b in self.store.all_boxes()):
            raise UIError("no person box with an action yet: draw boxes on the Label page, tick actions, save")
        try:
            path = self.store.export_ava()
        except StoreError as exc:
            raise UIError(str(exc)) from None
        n = sum(1 for line in path.read_text().splitlines() if line.strip())
        files = [str(path)] + [str(p) for p in sorted(path.parent.glob("*.pbtxt"))]
        msg = (f"Exported {n} row{'s' if n != 1 else ''} (one per box and action; boxes without an action are left "
               "out): `video_id` is the clip's short id (16 hex digits of its SHA-256).")
        return files, msg


def _row(b: BoxRecord) -> list[Any]:
    return [b.id, round(b.timestamp_s, 3), *(round(v, 4) for v in b.box), ", ".join(b.actions), b.source,
            b.labeled_by]


def build_section(app: BoxLabelling, ui: Shared, label_state, label_set, model) -> None:
    """The "Person boxes" accordion of the Label tab and its callbacks (inside the tab's layout)."""
    from gradio_image_annotation import image_annotator

    fail, who_of, who_box = ui.fail, ui.who_of, ui.who_box
    with gr.Accordion("Person boxes (AVA-style: who does what)", open=False, elem_id="boxes-section"):
        with gr.Row():
            box_time = gr.Number(0.0, label="Keyframe (s)", minimum=0, elem_id="box-time")
            box_show = gr.Button("Show keyframe", elem_id="box-show")
        annot = image_annotator(label_list=[NEW_BOX], use_default_label=True, sources=[], image_type="numpy",
                                label="Keyframe: draw or adjust person boxes", show_download_button=False,
                                elem_id="box-annotator", height=360)
        box_actions = gr.CheckboxGroup([], label="Actions of the boxes drawn or moved now (none ticked: a moved box keeps its own)",
                                       elem_id="box-actions")
        with gr.Row():
            box_save = gr.Button("Save boxes", variant="primary", elem_id="box-save")
            box_export = gr.Button("Export boxes (AVA CSV)", elem_id="box-export")
        box_status = gr.Markdown(elem_id="box-status")
        box_table = gr.Dataframe(headers=BOX_HEADERS, value=None, interactive=False, label="Boxes of this clip",
                                 elem_id="box-table")
        box_file = gr.File(label="AVA boxes", file_count="multiple", interactive=False, elem_id="box-file")
    # The clip and keyframe the drawing shows: a save is about them, even after the Label page moved to another
    # clip or the time box was edited without showing that keyframe.
    box_shown = gr.State({"sha": None, "t": None})

    def on_box_show(state, t, set_key, model_key):
        try:
            sha = (state or {}).get("sha")
            value, t, msg = app.keyframe(sha, t)
            labels = app.labels_for(set_key, model_key)
            return ({"sha": sha, "t": t}, value, t, gr.CheckboxGroup(choices=labels, value=[]), msg,
                    app.box_rows(sha) or None)
        except Exception as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), fail(exc), gr.skip()

    box_show.click(on_box_show, [label_state, box_time, label_set, model],
                   [box_shown, annot, box_time, box_actions, box_status, box_table])

    def on_box_save(shown, drawing, acts, name, request: gr.Request):
        try:
            sha, t = (shown or {}).get("sha"), (shown or {}).get("t")
            if sha is None:
                raise UIError("show a keyframe first")
            msg = app.save_boxes(sha, t, drawing, acts, who_of(name, request))
            value, _, _ = app.keyframe(sha, t)
            return value, gr.CheckboxGroup(value=[]), msg, app.box_rows(sha) or None
        except Exception as exc:
            return gr.skip(), gr.skip(), fail(exc), gr.skip()

    box_save.click(on_box_save, [box_shown, annot, box_actions, who_box],
                   [annot, box_actions, box_status, box_table], concurrency_id="boxes", concurrency_limit=1)

    def on_box_export():
        try:
            files, msg = app.export_boxes()
            return files, msg
        except Exception as exc:
            return None, fail(exc)

    box_export.click(on_box_export, None, [box_file, box_status], concurrency_id="io", concurrency_limit=1)
