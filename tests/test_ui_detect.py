"""The Detect page's callbacks (videoapp.ui.detect_page) without a browser: its CSV must hold exactly the rows
a direct DetectionPredictor call gives for the original file; test_browser.py drives the same page."""
from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from videoapp.data.ava import write_ava_csv
from videoapp.data.synthetic import write_video
from videoapp.data.video import VideoReader
from videoapp.engine.detect import DetectionPredictor, HOGPersonDetector, read_person_boxes
from videoapp.models import create_model
from videoapp.ui.app import BOX_SOURCES, UIError, build_ui, make_app
from videoapp.weights import save_weights
from test_detect import _silhouette
from videos import write_test_video

DET = "mvitv2_xxs_8x64_ava"
ACTIONS = ["stand", "sit", "walk", "talk"]
# Keyframes 1 and 2 of "walk"; a second video the page must ignore; one box below the 0.8 box threshold.
BOXES_CSV = """\
walk,1,0.1,0.2,0.5,0.9,-1,0.95
walk,1,0.55,0.1,0.95,0.85,-1,0.5
walk,2,0.123,0.25,0.6,0.975,-1,0.99
walk,2,0.6,0.05,0.9,0.7,-1,0.81
other,1,0.1,0.1,0.2,0.2,-1,0.99
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ui-detect")
    torch.manual_seed(0)
    model = create_model(DET, num_classes=len(ACTIONS))
    det = save_weights(d / "det.safetensors", model.state_dict(), {"model": DET, **model.pretrained_cfg.data_config(), "labels": ACTIONS})
    cls = create_model("mvitv2_xxs_8x64", num_classes=3)
    cls_w = save_weights(d / "cls.safetensors", cls.state_dict(), {"model": "mvitv2_xxs_8x64", "labels": ["a", "b", "c"]})
    clip = write_test_video(d / "walk.mp4", num_frames=75, fps=25, width=160, height=120)
    boxes = d / "boxes.csv"
    boxes.write_text(BOXES_CSV)

    def person_frames():  # a standing figure HOG finds, walking right
        for i in range(50):
            img = np.full((240, 320, 3), 200, np.uint8)
            _silhouette(img, 120 + i, 30, 180)
            yield img

    person = write_video(d / "person.mp4", person_frames(), fps=25)
    return {"dir": d, "det": str(det), "cls": str(cls_w), "clip": clip, "boxes": str(boxes), "person": str(person)}


@pytest.fixture
def app(tmp_path):
    a = make_app(tmp_path / "data", weights_dir=tmp_path / "weights")
    a._upload_root = str(tmp_path / "uploads")
    yield a
    a.close()


def upload(app, src: str) -> str:
    """A copy of ``src`` where Gradio would have put an upload."""
    d = Path(app._upload_root) / uuid.uuid4().hex
    d.mkdir(parents=True)
    return str(shutil.copy(src, d / Path(src).name))


def add_clip(app, src: str) -> str:
    clips, msgs = app.ingest(upload(app, src), "ann")
    assert len(clips) == 1, msgs
    return clips[0].sha256


def csv_text(rows) -> str:
    buf = io.StringIO()
    write_ava_csv(buf, rows)
    return buf.getvalue()


def test_box_file_rows_match_a_direct_detection(app, files):
    sha = add_clip(app, files["clip"])
    direct = DetectionPredictor(files["det"]).detect(files["clip"], boxes=read_person_boxes(files["boxes"]),
                                                     progress=False)
    for thr in (0.0, 0.45):
        r = app.detect(sha, "Box file (AVA CSV or JSON)", upload(app, files["boxes"]), upload(app, files["det"]),
                       threshold=thr)
        text = Path(r.csv_path).read_text()
        assert text == csv_text(direct.rows(thr))
        assert text.startswith("walk,1,")  # video_id is the uploaded file's name, not the store's
    assert len(direct.rows(0.0)) == 3 * len(ACTIONS)  # 3 boxes kept (the 0.5 one dropped) x 4 actions
    # One picture per keyframe, captioned with its time and each person's actions.
    assert [c for _, c in r.gallery][0].startswith("1 s · #")
    assert len(r.gallery) == 2 and all(Path(p).is_file() for p, _ in r.gallery)
    img = cv2.imread(r.gallery[0][0])
    with VideoReader(files["clip"]) as reader:
        frame = reader.get_frames([25])[0]
        n = reader.info.num_frames
    assert img.shape == frame.shape and np.abs(img[..., ::-1].astype(int) - frame).max() > 50  # boxes drawn on it
    with VideoReader(r.overlay) as ov:
        assert ov.info.num_frames == n and Path(r.overlay).suffix == ".mp4"
    assert f"2 keyframes, 3 boxes (2 people), {len(direct.rows(0.45))} rows in the CSV" in r.status


def test_hog_rows_match_a_direct_detection(app, files):
    sha = add_clip(app, files["person"])
    r = app.detect(sha, "hog", None, upload(app, files["det"]), keyframe_fps=1.0, box_threshold=0.0)
    direct = DetectionPredictor(files["det"]).detect(files["person"], person_detector=HOGPersonDetector(),
                                                     box_threshold=0.0, progress=False)
    assert direct.boxes  # HOG finds the figure, so the rows say something
    assert Path(r.csv_path).read_text() == csv_text(direct.rows(0.0))
    assert len(r.gallery) == len(direct.keyframes) == 2


def test_detector_weights_needed_then_shipped(app, files):
    sha = add_clip(app, files["clip"])
    assert "Detector weights needed" in app.detector_weights_notice()
    with pytest.raises(UIError, match="detector weights are needed"):
        app.detect(sha, "file", upload(app, files["boxes"]), None)
    with pytest.raises(UIError, match="detection"):  # classifier weights are refused, never run as a detector
        app.detect(sha, "file", upload(app, files["boxes"]), upload(app, files["cls"]))
    # A shipped detector is used without an upload, and never offered as a clip classifier.
    app.models.weights_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["det"], app.models.weights_dir / "detector.safetensors")
    shutil.copy(files["cls"], app.models.weights_dir / "default.safetensors")
    assert "shipped `detector.safetensors`" in app.detector_weights_notice()
    assert [c.key for c in app.models.choices()] == ["shipped:default.safetensors"]
    r = app.detect(sha, "file", upload(app, files["boxes"]), None)
    direct = DetectionPredictor(files["det"]).detect(files["clip"], boxes=read_person_boxes(files["boxes"]),
                                                     progress=False)
    assert Path(r.csv_path).read_text() == csv_text(direct.rows(0.0))


def test_detect_errors_are_messages(app, files, tmp_path):
    sha = add_clip(app, files["clip"])
    w = files["det"]
    with pytest.raises(UIError, match="upload a clip"):
        app.detect(None, "file", files["boxes"], w)
    with pytest.raises(UIError, match="upload a box file"):
        app.detect(sha, "file", None, w)
    other = tmp_path / "other.csv"
    other.write_text("other,1,0.1,0.1,0.5,0.5\n")
    with pytest.raises(UIError, match="no box for video 'walk'"):
        app.detect(sha, "file", str(other), w)
    bad = tmp_path / "bad.csv"
    bad.write_text("walk,1,0.1,0.1\n")
    with pytest.raises(UIError, match="bad.csv"):
        app.detect(sha, "file", str(bad), w)
    with pytest.raises(UIError, match="choose where"):
        app.detect(sha, "nowhere", None, w)


def test_detect_wiring_reports_errors_in_the_page(app, files):
    demo = build_ui(app)
    fns = {f.name: f for f in demo.fns.values()}
    on_detect, on_upload = fns["on_detect"].fn, fns["on_detect_upload"].fn
    status, *rest = on_detect(None, next(iter(BOX_SOURCES)), None, None, 1.0, 0.8, 0.0, 0.0,
                              progress=lambda *a, **k: None)
    assert status.startswith("**Error:**") and all(x == {"__type__": "update"} for x in rest)

    class Req:
        username = None

    pick, cleared, msg = on_upload(upload(app, files["clip"]), "ann", Req())
    (clip,) = app.store.clips()
    assert pick.value == clip.sha256 and cleared is None and "walk.mp4" in msg
    status, gallery, video, csv_path = on_detect(clip.sha256, "Box file (AVA CSV or JSON)", upload(app, files["boxes"]),
                                                 upload(app, files["det"]), 1.0, 0.8, 0.0, 0.0,
                                                 progress=lambda *a, **k: None)
    assert len(gallery) == 2 and Path(video).is_file() and Path(csv_path).read_text().startswith("walk,1,")
