"""The Detect page: per-person actions at keyframes (AVA-style) for one clip.

Upload a clip (or pick it from the library), choose where the person boxes
come from (a box file: AVA CSV or our JSON; or OpenCV's HOG people detector),
and the detector weights (the shipped ``weights/detector.safetensors`` when it
exists, else an uploaded weights file: there is no untrained fallback, a
random detector's actions would be noise). The page shows every keyframe with
its boxes, person ids and actions drawn, plays the overlay video, and offers
the official AVA detection CSV (``video_id,timestamp,x1,y1,x2,y2,action_id,score``)
for download: the same rows ``videoapp detect`` writes for the original file.
"""
from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np

from videoapp.store import ClipRecord, display_name
from videoapp.ui.base import AppBase, Shared
from videoapp.ui.common import UIError, _esc, _first_line, _n

BOX_SOURCES = {"Box file (AVA CSV or JSON)": "file", "HOG people detector (OpenCV, offline, weak)": "hog"}
MAX_GALLERY = 60  # keyframe images drawn per result (a long video's gallery would be unusable anyway)


@dataclass
class DetectResult:
    """One Detect run as the page shows it.

    ``detections``: the engine's result; ``csv_path``: the AVA detection CSV
    (rows with score >= the threshold); ``overlay``: the H.264 overlay video;
    ``gallery``: ``(JPEG path, caption)`` per keyframe; ``status``: Markdown.
    """

    detections: Any = field(repr=False)
    csv_path: str
    overlay: str
    gallery: list[tuple[str, str]]
    status: str


class DetectPage(AppBase):
    """The Detect page's methods (plain values in and out)."""

    _det_cache: tuple[tuple[str, int], Any] | None = None
    _det_lock = threading.Lock()

    def detector_weights_notice(self) -> str:
        """Markdown about the detector weights: the shipped default, or that weights must be uploaded."""
        path = self.models.detector_path()
        if path is None:
            return ("**Detector weights needed.** The shipped action detector (`weights/detector.safetensors`) is "
                    "missing, so upload detection weights below: the `.safetensors` of a `*_ava` model "
                    "(`task: detection`), e.g. from `videoapp train` with an AVA config.")
        return f"Detector: shipped `{_esc(path.name)}` (upload other detection weights below to use them instead)."

    def _detector_weights(self, weights_file: Any) -> Path:
        paths = self._paths(weights_file)
        if paths:
            path = Path(paths[0])
            if not path.is_file():
                raise UIError("the uploaded weights file is gone: upload it again")
            return path
        shipped = self.models.detector_path()
        if shipped is None:
            raise UIError("detector weights are needed: the shipped weights/detector.safetensors is missing, so "
                          "upload detection weights (a *_ava model's .safetensors)")
        return shipped

    def detection_predictor(self, weights: Path):
        """The :class:`~videoapp.engine.detect.DetectionPredictor` of ``weights`` (the last one is kept loaded)."""
        from videoapp.engine.detect import DetectError, DetectionPredictor
        from videoapp.weights import CheckpointError

        key = (str(weights.resolve()), weights.stat().st_mtime_ns)
        with self._det_lock:
            if self._det_cache is not None and self._det_cache[0] == key:
                return self._det_cache[1]
            try:
                pred = DetectionPredictor(weights, device=self.models.device)
            except (DetectError, CheckpointError, KeyError, ValueError) as exc:
                raise UIError(f"{display_name(weights.name)}: {_first_line(exc)}") from None
            self._det_cache = (key, pred)
            return pred

    def _named_copy(self, clip: ClipRecord, folder: Path) -> Path:
        """A link to the stored clip under its original name: the AVA ``video_id`` is the file name's stem,
        so rows match box files written for the original file and the CLI's output on it."""
        stem = Path(display_name(clip.original_name)).stem or clip.sha256[:12]
        link = folder / f"{stem}{clip.ext}"
        try:
            os.symlink(clip.path, link)
        except OSError:  # no symlinks here (some filesystems): a copy does as well
            import shutil

            shutil.copyfile(clip.path, link)
        return link

    def detect(self, clip_key: str | None, source: str, box_file: Any = None, weights_file: Any = None,
               keyframe_fps: float = 1.0, box_threshold: float = 0.8, threshold: float = 0.0,
               time_offset: float = 0.0, progress: Callable | None = None) -> DetectResult:
        """Detect per-person actions in the stored clip ``clip_key`` (SHA-256).

        ``source``: a :data:`BOX_SOURCES` title or value (``"file"``: boxes from
        ``box_file``; ``"hog"``: OpenCV's people detector every
        ``1 / keyframe_fps`` s). ``box_threshold`` drops person boxes scored
        below it; the CSV holds every (box, action) scoring at least
        ``threshold``; pictures and overlay show the top 3 actions scoring at
        least ``max(threshold, 0.5)`` (as ``videoapp detect --overlay``).
        ``time_offset`` (s) is subtracted from box-file timestamps.
        """
        from videoapp.data.ava import AVAFormatError, write_ava_csv
        from videoapp.data.video import VideoError
        from videoapp.engine.detect import DetectError, HOGPersonDetector, read_person_boxes, write_overlay

        mode = BOX_SOURCES.get(source, source)
        if mode not in ("file", "hog"):
            raise UIError("choose where the person boxes come from")
        clip = self.store.get_clip(str(clip_key)) if clip_key else None
        if clip is None:
            raise UIError("upload a clip (or pick one from the library) first")
        rows = None
        if mode == "file":
            paths = self._paths(box_file)
            if not paths:
                raise UIError("upload a box file (AVA CSV or JSON), or choose the HOG people detector")
            try:
                rows = read_person_boxes(paths[0])
            except (AVAFormatError, ValueError, OSError) as exc:
                raise UIError(f"{display_name(Path(paths[0]).name)}: {_first_line(exc)}") from None
        weights = self._detector_weights(weights_file)
        if progress:
            progress(0.0, desc="loading the detector")
        predictor = self.detection_predictor(weights)
        kf_fps = float(keyframe_fps or 1.0)
        if kf_fps <= 0:
            raise UIError("keyframes per second must be above 0")
        threshold = float(threshold or 0.0)
        offset = float(time_offset or 0.0) if mode == "file" else 0.0
        folder = self.work_dir / "detect" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        video = self._named_copy(clip, folder)
        try:
            if progress:
                progress(0.2, desc=f"detecting in {clip.original_name}")
            det = predictor.detect(video, rows, None if rows is not None else HOGPersonDetector(),
                                   keyframe_fps=kf_fps, box_threshold=float(0.8 if box_threshold is None else box_threshold),
                                   time_offset=offset, progress=False)
            if progress:
                progress(0.7, desc="drawing")
            shown = max(threshold, 0.5)
            overlay = write_overlay(folder / f"{video.stem}_overlay.mp4", det, threshold=shown,
                                    keyframe_fps=kf_fps if rows is None else 1.0, time_offset=offset, progress=False)
            gallery = self._keyframe_images(det, folder, shown, offset)
        except (DetectError, VideoError) as exc:
            raise UIError(_first_line(exc)) from None
        csv_path = folder / f"{video.stem}_detections.csv"
        out_rows = det.rows(threshold)
        write_ava_csv(csv_path, out_rows)
        people = len({b.person.person_id for b in det.boxes})
        status = (f"{_esc(clip.original_name)}: {_n(len(det.keyframes), 'keyframe')}, {len(det.boxes)} box{'es' if len(det.boxes) != 1 else ''} "
                  f"({people} {'person' if people == 1 else 'people'}), {_n(len(out_rows), 'row')} in the CSV (actions scoring at least "
                  f"{threshold:g}). _Detector: {_esc(predictor.model_name)}, {len(predictor.labels)} actions, "
                  f"weights {_esc(display_name(weights.name))}._")
        if not det.boxes:
            status += ("\n\nNo person box" + (" scored at least the box threshold." if mode == "file" else
                       ": HOG finds only upright people at least about 128 px tall; try a box file."))
        if progress:
            progress(1.0, desc="done")
        return DetectResult(det, str(csv_path), str(overlay), gallery, status)

    def _keyframe_images(self, det, folder: Path, threshold: float, offset: float) -> list[tuple[str, str]]:
        """Each keyframe (at most :data:`MAX_GALLERY`) as a JPEG with its boxes drawn, and a caption."""
        import cv2

        from videoapp.data.video import VideoReader
        from videoapp.engine.detect import draw_box, keyframe_index

        by_kf: dict[str, list] = {}
        for b in det.boxes:
            by_kf.setdefault(b.person.timestamp, []).append(b)
        keys = det.keyframes[:MAX_GALLERY]
        if not keys:
            return []
        out = []
        with VideoReader(det.video) as reader:
            info = reader.info
            idx = [keyframe_index(float(k) - offset, info.fps, info.num_frames) for k in keys]
            for i, (k, frame) in enumerate(zip(keys, reader.get_frames(idx))):
                img = np.ascontiguousarray(frame)
                h, w = img.shape[:2]
                parts = []
                for b in by_kf.get(k, []):
                    draw_box(cv2, img, b, det.labels, threshold, 3, w, h)
                    order = [int(j) for j in np.argsort(-b.scores, kind="stable")[:3] if b.scores[j] >= threshold]
                    acts = ", ".join(f"{det.labels[j]} {b.scores[j]:.2f}" for j in order) or "no action"
                    parts.append(f"#{b.person.person_id}: {acts}")
                path = folder / f"keyframe_{i:04d}.jpg"
                cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                out.append((str(path), f"{k} s · " + ("; ".join(parts) if parts else "no person")))
        return out


def build_tab(app: DetectPage, ui: Shared) -> None:
    """The Detect tab and its callbacks."""
    fail, who_of, who_box = ui.fail, ui.who_of, ui.who_box
    with gr.Tab("Detect", id="detect") as detect_tab:
        gr.Markdown("Per-person actions at keyframes (AVA-style): each person box gets a score for every action.")
        with gr.Row():
            with gr.Column(scale=1):
                det_upload = gr.File(label=f"Upload a clip (up to {app.max_upload_mb:g} MB)", elem_id="det-upload")
                det_clip = gr.Dropdown(app.library_choices(), value=None, label="Clip (uploads join the library)",
                                       elem_id="det-clip")
                det_source = gr.Radio(list(BOX_SOURCES), value=next(iter(BOX_SOURCES)), label="Person boxes from",
                                      elem_id="det-source")
                det_boxes = gr.File(label="Box file (AVA CSV: video_id,timestamp,x1,y1,x2,y2,...; or JSON)",
                                    file_types=[".csv", ".json"], elem_id="det-boxes")
                det_weights_md = gr.Markdown(app.detector_weights_notice(), elem_id="det-weights-notice")
                det_weights = gr.File(label="Detector weights (.safetensors, task: detection)",
                                      file_types=[".safetensors"], elem_id="det-weights")
                with gr.Accordion("Options", open=False, elem_id="det-options"):
                    det_kf_fps = gr.Number(1.0, label="Keyframes per second (HOG)", minimum=0.01,
                                           elem_id="det-kf-fps")
                    det_box_thr = gr.Number(0.8, label="Drop person boxes scoring below (HOG scores are SVM "
                                            "margins, about 0-3)", elem_id="det-box-thr")
                    det_thr = gr.Number(0.0, label="CSV: actions scoring at least (pictures: at least 0.5)",
                                        minimum=0, maximum=1, elem_id="det-thr")
                    det_offset = gr.Number(0.0, label="Box file: seconds subtracted from its timestamps "
                                           "(900 for AVA's 15-minute clips)", elem_id="det-offset")
                det_btn = gr.Button("Detect", variant="primary", elem_id="det-btn")
            with gr.Column(scale=2):
                det_status = gr.Markdown(elem_id="det-status")
                det_gallery = gr.Gallery(label="Keyframes", columns=3, height=360, object_fit="contain",
                                         elem_id="det-gallery")
                det_video = gr.Video(label="Overlay", interactive=False, elem_id="det-video", height=300)
                det_csv = gr.File(label="AVA detection CSV", interactive=False, elem_id="det-csv")

    def on_detect_upload(files, name, request: gr.Request):
        try:
            clips, msgs = app.ingest(files, who_of(name, request))
        except Exception as exc:
            return gr.skip(), None, fail(exc)
        pick = gr.Dropdown(choices=app.library_choices(), value=clips[0].sha256 if clips else None)
        if clips:
            msgs.insert(0, f"Added {_esc(clips[0].original_name)} to the library (selected).")
        return pick, None, "\n\n".join(msgs)

    det_upload.upload(on_detect_upload, [det_upload, who_box], [det_clip, det_upload, det_status],
                      concurrency_id="ingest", concurrency_limit=1)

    def on_detect(clip_key, source, boxes, weights, kf_fps, box_thr, thr, offset, progress=gr.Progress()):
        try:
            r = app.detect(clip_key, source, boxes, weights, kf_fps, box_thr, thr, offset, progress=progress)
        except Exception as exc:
            return fail(exc), gr.skip(), gr.skip(), gr.skip()
        return r.status, r.gallery, r.overlay, r.csv_path

    det_btn.click(on_detect, [det_clip, det_source, det_boxes, det_weights, det_kf_fps, det_box_thr, det_thr,
                              det_offset], [det_status, det_gallery, det_video, det_csv],
                  concurrency_id="model", concurrency_limit=1)

    def on_detect_tab():
        return gr.Dropdown(choices=app.library_choices()), app.detector_weights_notice()

    detect_tab.select(on_detect_tab, None, [det_clip, det_weights_md])
