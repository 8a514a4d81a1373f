"""`videoapp detect`: person boxes (file, HOG, torchvision), person ids, keyframe clips, AVA output, overlay."""
from __future__ import annotations

import csv
import io
import json
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videoapp.cli import main
from videoapp.data.ava import read_ava_csv
from videoapp.data.video import VideoReader
from videoapp.engine.detect import (
    HOGPersonDetector,
    TorchvisionPersonDetector,
    keyframe_clip_indices,
    link_person_ids,
)
from videoapp.models import create_model
from videoapp.weights import CheckpointError, save_weights
from videos import write_test_video

DET = "mvitv2_xxs_8x64_ava"
LABELS = ["stand", "sit", "walk", "talk"]

# Proposal-style box file (8 columns: ...,action_id,score). The 0.5 box is below
# the default box threshold (0.8); the "other" video must be ignored.
BOXES_CSV = """\
clip,0001,0.1,0.2,0.5,0.9,-1,0.95
clip,0001,0.55,0.1,0.95,0.85,-1,0.5
clip,0002,0.123,0.25,0.6,0.975,-1,0.99
clip,0002,0.6,0.05,0.9,0.7,-1,0.81
other,0001,0.1,0.1,0.2,0.2,-1,0.99
"""
KEPT = [("0001", (0.1, 0.2, 0.5, 0.9)), ("0002", (0.123, 0.25, 0.6, 0.975)), ("0002", (0.6, 0.05, 0.9, 0.7))]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    model = create_model(DET, num_classes=len(LABELS))
    weights = save_weights(d / "det.safetensors", model.state_dict(), {"model": DET, **model.pretrained_cfg.data_config(), "labels": LABELS})
    classifier = create_model("mvitv2_xxs_8x64", num_classes=3)
    cls_weights = save_weights(d / "cls.safetensors", classifier.state_dict(), {"model": "mvitv2_xxs_8x64"})
    clip = write_test_video(d / "clip.mp4", num_frames=90, fps=30, width=160, height=120)
    boxes = d / "boxes.csv"
    boxes.write_text(BOXES_CSV)
    return {"dir": d, "weights": str(weights), "cls_weights": str(cls_weights), "clip": clip, "boxes": str(boxes)}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(text: str) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text)) if r]


# --------------------------------------------------------------------------- building blocks
def test_keyframe_clip_indices_follow_slowfast_get_sequence():
    # centre - 8 * 8 // 2 + 8k, clamped to the video (90 frames)
    assert keyframe_clip_indices(30, 8, 8, 90).tolist() == [0, 6, 14, 22, 30, 38, 46, 54]
    assert keyframe_clip_indices(75, 8, 8, 90).tolist() == [43, 51, 59, 67, 75, 83, 89, 89]
    assert keyframe_clip_indices(10, 4, 2, 90).tolist() == [6, 8, 10, 12]


def test_link_person_ids_follows_hand_made_tracks():
    a = [(0.10, 0.10, 0.30, 0.90), (0.12, 0.10, 0.32, 0.90), (0.14, 0.10, 0.34, 0.90), (0.16, 0.1, 0.36, 0.9)]
    b = [(0.60, 0.20, 0.80, 0.95), (0.58, 0.20, 0.78, 0.95), (0.56, 0.2, 0.76, 0.95)]
    c = (0.40, 0.00, 0.50, 0.30)
    keyframes = [
        [a[0], b[0]],
        [b[1], a[1]],        # order swapped: ids follow the boxes, not the order
        [a[2], c],           # b missed for one keyframe, a newcomer c
        [c, b[2], a[3]],     # b comes back within max_gap=1 and keeps its id
        [],                  # nobody
        [],
        [(0.57, 0.2, 0.77, 0.95)],  # at b's place, but 3 keyframes later: a new person
    ]
    assert link_person_ids(keyframes) == [[0, 1], [1, 0], [0, 2], [2, 1, 0], [], [], [3]]
    # A box overlapping two tracks goes to the better one; the other track stays free.
    assert link_person_ids([[a[0], a[2]], [a[1]]]) == [[0, 1], [0]]


def _silhouette(img: np.ndarray, cx: float, top: float, height: float) -> tuple[float, float, float, float]:
    """Draw a dark standing person (head, torso, arms, legs); returns its bounding box in pixels."""
    u = height / 8.0
    col = (40, 40, 40)
    cv2.ellipse(img, (int(cx), int(top + u * 0.55)), (int(u * 0.42), int(u * 0.55)), 0, 0, 360, col, -1)
    cv2.line(img, (int(cx), int(top + u * 1.1)), (int(cx), int(top + u * 1.3)), col, int(u * 0.3))
    torso = np.array([[cx - u * 0.95, top + u * 1.3], [cx + u * 0.95, top + u * 1.3],
                      [cx + u * 0.7, top + u * 4.2], [cx - u * 0.7, top + u * 4.2]], np.int32)
    cv2.fillPoly(img, [torso], col)
    for s in (-1, 1):
        cv2.line(img, (int(cx + s * u * 0.9), int(top + u * 1.5)), (int(cx + s * u * 1.15), int(top + u * 4.3)), col, int(u * 0.35))
        cv2.line(img, (int(cx + s * u * 0.4), int(top + u * 4.1)), (int(cx + s * u * 0.6), int(top + u * 7.9)), col, int(u * 0.45))
    return cx - 1.3 * u, top, cx + 1.3 * u, top + 8 * u


def test_hog_finds_a_standing_silhouette():
    img = np.full((240, 320, 3), 200, np.uint8)
    x1, y1, x2, y2 = _silhouette(img, 160, 30, 180)
    found = HOGPersonDetector()(img)
    assert found, "HOG found nobody"
    (bx1, by1, bx2, by2), score = max(found, key=lambda f: f[1])
    assert score > 0.8
    assert 0 <= bx1 < bx2 <= 1 and 0 <= by1 < by2 <= 1
    # The detection window contains the figure (HOG windows carry a margin around the person).
    assert bx1 * 320 <= x1 + 4 and bx2 * 320 >= x2 - 4 and by1 * 240 <= y1 + 4 and by2 * 240 >= y2 - 12
    assert HOGPersonDetector()(np.full((240, 320, 3), 200, np.uint8)) == []


def test_torchvision_detector_from_a_weights_file(tmp_path):
    from torchvision.models import get_model_builder

    torch.manual_seed(0)
    model = get_model_builder("ssdlite320_mobilenet_v3_large")(weights=None, weights_backbone=None)
    state = model.state_dict()
    # Random weights spread the scores over all 91 COCO classes; lift class 1
    # (person) in the classification biases so the kept boxes are persons.
    for key, value in state.items():
        if re.fullmatch(r"head\.classification_head\.module_list\.\d+\.1\.bias", key):  # the class convs
            value.view(-1, 91)[:, 1] += 5.0
    path = tmp_path / "ssd.pth"
    torch.save(state, path)
    det = TorchvisionPersonDetector("ssdlite320_mobilenet_v3_large", path)
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    found = det(frame)
    assert found
    for (x1, y1, x2, y2), score in found:
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 and 0 <= score <= 1
        assert all(round(v, 4) == v for v in (x1, y1, x2, y2))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(CheckpointError, match="not weights of torchvision ssdlite320"):
        TorchvisionPersonDetector("ssdlite320_mobilenet_v3_large", wrong)


# --------------------------------------------------------------------------- the command
def _independent_scores(files, centre_frames: dict[str, list[int]]) -> dict[tuple, np.ndarray]:
    """Sigmoid scores of each kept box, computed without the detect engine."""
    model = create_model(DET, pretrained=files["weights"]).eval()
    out = {}
    with VideoReader(files["clip"]) as reader:
        for ts, idx in centre_frames.items():
            frames = torch.from_numpy(reader.get_frames(idx)).permute(3, 0, 1, 2).float() / 255  # [3, 8, 120, 160]
            x = F.interpolate(frames, size=(64, 85), mode="bilinear", align_corners=False)  # short side 64
            x = ((x - 0.45) / 0.225)[None]
            boxes = [b for t, b in KEPT if t == ts]
            rois = torch.tensor([[0, b[0] * 85, b[1] * 64, b[2] * 85, b[3] * 64] for b in boxes])
            with torch.no_grad():
                probs = model(x, rois).sigmoid().numpy()
            for b, p in zip(boxes, probs):
                out[(ts, b)] = p
    return out


def test_detect_with_file_boxes_round_trips_boxes_and_matches_the_model(files, capsys):
    code, out, err = run_cli(capsys, "detect", files["clip"], "--boxes", files["boxes"], "--weights", files["weights"])
    assert code == 0, err
    rows = _rows(out)
    assert all(len(r) == 8 for r in rows)
    assert len(rows) == len(KEPT) * len(LABELS)  # threshold 0: every action of every kept box
    # Boxes and keyframes come back exactly as written.
    got = {(r[1], tuple(float(v) for v in r[2:6])) for r in rows}
    assert got == set(KEPT)
    text = {(r[1], ",".join(r[2:6])) for r in rows}
    assert text == {(line.split(",")[1], ",".join(line.split(",")[2:6])) for line in BOXES_CSV.splitlines()
                    if line.startswith("clip,") and not line.endswith("0.5")}
    assert {r[0] for r in rows} == {"clip"}
    # Scores: keyframe t -> centre frame round(30 t); 8 frames every 8th from centre - 32.
    expected = _independent_scores(files, {"0001": [0, 6, 14, 22, 30, 38, 46, 54],
                                           "0002": [28, 36, 44, 52, 60, 68, 76, 84]})
    for r in rows:
        p = expected[(r[1], tuple(float(v) for v in r[2:6]))]
        assert int(r[6]) in range(1, len(LABELS) + 1)
        assert float(r[7]) == pytest.approx(float(p[int(r[6]) - 1]), abs=2e-6)


def test_detect_person_ids_json_and_threshold(files, capsys, tmp_path):
    code, out, err = run_cli(capsys, "detect", files["clip"], "--boxes", files["boxes"], "--weights", files["weights"],
                             "--person-ids")
    assert code == 0, err
    rows = _rows(out)
    assert all(len(r) == 9 for r in rows)
    ids = {(r[1], tuple(float(v) for v in r[2:6])): int(r[7]) for r in rows}
    # The first two boxes overlap (IoU ~0.7): the same person across keyframes.
    assert ids == {KEPT[0]: 0, KEPT[1]: 0, KEPT[2]: 1}
    scores = {(r[1], tuple(float(v) for v in r[2:6]), int(r[6])): float(r[8]) for r in rows}
    # The evaluation's reader takes the file as it is (9-column detections).
    (tmp_path / "dets9.csv").write_text(out)
    back = read_ava_csv(tmp_path / "dets9.csv", kind="detections")
    assert {(r.timestamp, r.box, r.action_id): r.score for r in back} == scores
    assert {(r.timestamp, r.box): r.person_id for r in back} == ids

    out_json = tmp_path / "det.json"
    code, _, err = run_cli(capsys, "detect", files["clip"], "--boxes", files["boxes"], "--weights", files["weights"],
                           "--format", "json", "--threshold", "0.5", "--out", out_json)
    assert code == 0, err
    entries = json.loads(out_json.read_text())["boxes"]
    assert [(e["timestamp"], tuple(e["box"])) for e in entries] == KEPT  # every box, even without actions >= T
    for e in entries:
        key = (e["timestamp"], tuple(e["box"]))
        assert e["video_id"] == "clip" and e["person_id"] == ids[key]
        assert e["score"] in (0.95, 0.99, 0.81)
        want = {a for (t, b, a), s in scores.items() if (t, b) == key and s >= 0.5}
        assert {a["action_id"] for a in e["actions"]} == want
        for a in e["actions"]:
            assert a["name"] == LABELS[a["action_id"] - 1]
            assert a["score"] == scores[(*key, a["action_id"])]


def test_detect_clips_boxes_outside_the_frame_with_one_warning(files, capsys, caplog, tmp_path):
    boxes = tmp_path / "clip.json"  # the JSON box format; ids given for every box are kept
    boxes.write_text(json.dumps({"boxes": [
        {"video_id": "clip", "timestamp": 1, "box": [-0.2, 0.1, 0.4, 1.3], "person_id": 7},
        {"video_id": "clip", "timestamp": 1, "box": [0.5, 0.5, 0.7, 0.9], "person_id": 3},
    ]}))
    with caplog.at_level("WARNING", logger="videoapp"):
        code, out, err = run_cli(capsys, "detect", files["clip"], "--boxes", boxes, "--weights", files["weights"],
                                 "--person-ids", "--threshold", "0")
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "1 box outside the frame clipped" in warnings[0]
    got = {(r[1], tuple(float(v) for v in r[2:6]), int(r[7])) for r in _rows(out)}
    assert got == {("1", (0.0, 0.1, 0.4, 1.0), 7), ("1", (0.5, 0.5, 0.7, 0.9), 3)}


def test_detect_with_hog_boxes_links_one_person(files, capsys, tmp_path):
    from videoapp.data.synthetic import write_video

    frames = []
    for i in range(75):  # 2.5 s at 30 fps: a figure walking right, 1 px per frame
        img = np.full((240, 320, 3), 200, np.uint8)
        _silhouette(img, 110 + i, 30, 180)
        frames.append(img)
    video = write_video(tmp_path / "walker.mp4", frames, fps=30)
    code, out, err = run_cli(capsys, "detect", video, "--detector", "hog", "--weights", files["weights"],
                             "--person-ids", "--threshold", "0.0")
    assert code == 0, err
    rows = _rows(out)
    assert {r[1] for r in rows} == {"0000", "0001", "0002"}  # keyframes at 1 fps
    assert {r[0] for r in rows} == {"walker"} and {r[7] for r in rows} == {"0"}
    for r in rows:
        x1, y1, x2, y2 = (float(v) for v in r[2:6])
        centre = (110 + 30 * int(r[1])) / 320
        assert x1 < centre < x2 and y1 < 0.5 < y2


def test_detect_overlay_decodes_with_every_frame(files, capsys, tmp_path):
    overlay = tmp_path / "overlay.mp4"
    code, _, err = run_cli(capsys, "detect", files["clip"], "--boxes", files["boxes"], "--weights", files["weights"],
                           "--overlay", overlay, "--out", tmp_path / "dets.csv")
    assert code == 0, err
    with VideoReader(overlay) as drawn, VideoReader(files["clip"]) as source:
        assert drawn.info.num_frames == source.info.num_frames == 90
        assert (drawn.info.width, drawn.info.height) == (160, 120)
        d, s = drawn.get_frames([5, 30]).astype(int), source.get_frames([5, 30]).astype(int)
    assert np.abs(d[0] - s[0]).mean() < 4  # t = 0.17 s: no keyframe within 0.5 s, nothing drawn
    # t = 1 s: the 0001 box's left edge (x = round(0.1 * 159) = 16) is drawn in person 0's colour.
    edge = d[1, 60:100, 16]
    assert np.abs(edge - np.array([230, 25, 75])).mean() < 40
    assert np.abs(edge - s[1, 60:100, 16]).mean() > 40


@pytest.mark.parametrize("case", ["other-video", "no-weights", "classifier", "no-boxes", "after-end", "bad-csv",
                                  "not-a-video", "torchvision-no-weights"])
def test_detect_bad_input_exits_2_with_one_line(files, capsys, tmp_path, monkeypatch, case):
    import videoapp.weights

    d = tmp_path
    args = [files["clip"], "--boxes", files["boxes"], "--weights", files["weights"]]
    want = ""
    if case == "other-video":
        other = d / "o.csv"
        other.write_text("other,0001,0.1,0.1,0.2,0.2\nthird,0001,0.1,0.1,0.2,0.2\n")
        args, want = [files["clip"], "--boxes", other, "--weights", files["weights"]], "no box for video 'clip' (its videos: other, third)"
    elif case == "no-weights":
        monkeypatch.setattr(videoapp.weights, "WEIGHTS_DIR", d)
        args, want = [files["clip"], "--boxes", files["boxes"]], "the shipped detector weights/detector.safetensors is missing"
    elif case == "classifier":
        args, want = [files["clip"], "--boxes", files["boxes"], "--weights", files["cls_weights"]], "detection weights"
    elif case == "no-boxes":
        args, want = [files["clip"], "--weights", files["weights"]], "--boxes FILE or --detector"
    elif case == "after-end":
        late = d / "late.csv"
        late.write_text("clip,0902,0.1,0.1,0.2,0.2\n")
        args, want = [files["clip"], "--boxes", late, "--weights", files["weights"]], "--time-offset 900"
    elif case == "bad-csv":
        bad = d / "bad.csv"
        bad.write_text("clip,0001,0.1,zero,0.2,0.2\n")
        args, want = [files["clip"], "--boxes", bad, "--weights", files["weights"]], "bad.csv:1: y1 'zero' is not a number"
    elif case == "not-a-video":
        text = d / "clip.mp4"
        text.write_text("not a video\n")
        args, want = [text, "--boxes", files["boxes"], "--weights", files["weights"]], "not a video"
    elif case == "torchvision-no-weights":
        args, want = [files["clip"], "--detector", "torchvision:ssdlite320_mobilenet_v3_large", "--weights",
                      files["weights"]], "needs --detector-weights"
    code, out, err = run_cli(capsys, "detect", *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videoapp: error: ") and want in lines[0], err
