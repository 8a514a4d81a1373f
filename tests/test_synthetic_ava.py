"""The generated AVA-format detection data: labels follow each object's own motion, boxes its silhouette,
files round-trip through the AVA readers, scenes are deterministic."""
from __future__ import annotations

import math

import numpy as np
import pytest

from videoapp.data.ava import read_ava_csv, read_label_map
from videoapp.data.synthetic_ava import MOTIONS, label_map, render_scene, write_ava_scenes
from videoapp.data.video import VideoReader


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(i, "train", 3, seconds=2, size=(72, 96)) for i in range(5)]


def test_scene_is_deterministic(scenes):
    again = render_scene(2, "train", 3, seconds=2, size=(72, 96))
    np.testing.assert_array_equal(again.frames, scenes[2].frames)
    assert [o.actions for o in again.objects] == [o.actions for o in scenes[2].objects]
    other = render_scene(2, "test", 3, seconds=2, size=(72, 96))
    assert not np.array_equal(other.frames, scenes[2].frames)


def test_labels_follow_each_objects_own_motion(scenes):
    """Recompute every object's actions from the path it was drawn along (independently of the generator's choice)."""
    seen = set()
    for scene in scenes:
        assert scene.frames.shape == (60, 72, 96, 3) and scene.keyframes == [1.0]
        assert 1 <= len(scene.objects) <= 3
        for obj in scene.objects:
            n = len(obj.half_height)
            dx, dy = (obj.centre[-1] - obj.centre[0]) / (n - 1)  # mean pixels per frame
            growth = math.log(obj.half_height[-1] / obj.half_height[0]) / (n - 1)
            turn = abs(obj.angle[-1] - obj.angle[0]) / (n - 1)
            short = 72
            want = set()
            speed = math.hypot(dx, dy)
            if speed > 0.004 * short:  # moving: along one axis, within 8 degrees (wobble <= 0.3 % of the side)
                axis = "x" if abs(dx) > abs(dy) else "y"
                want.add({("x", True): "move_right", ("x", False): "move_left",
                          ("y", True): "move_down", ("y", False): "move_up"}[(axis, (dx if axis == "x" else dy) > 0)])
                assert min(abs(dx), abs(dy)) <= math.tan(math.radians(8)) * speed + 0.01 * short / (n - 1)
            else:
                assert speed < 0.0025 * short
            if abs(growth) > 0.005:
                want.add("approach" if growth > 0 else "recede")
            else:
                assert growth == 0
            if turn > math.radians(0.9):
                want.add("rotate")
            else:
                assert turn == 0
            assert set(obj.actions) == (want or {"still"}), (obj.actions, dx, dy, growth, turn)
            seen.update(obj.actions)
    assert len(seen) >= 4


def test_boxes_are_the_silhouettes_extent(scenes):
    for scene in scenes:
        h, w = scene.frames.shape[1:3]
        k = int(round(scene.keyframes[0] * scene.fps))
        boxes = [o.boxes[k] for o in scene.objects]
        for obj, box in zip(scene.objects, boxes):
            assert np.all((box >= 0) & (box <= 1)) and box[2] > box[0] and box[3] > box[1]
            inside = box[0] > 0 and box[1] > 0 and box[2] < 1 and box[3] < 1
            if inside:  # symmetric shapes: the box is centred on the object (to the pixel)
                cx, cy = (box[0] + box[2]) / 2 * w, (box[1] + box[3]) / 2 * h
                assert abs(cx - obj.centre[k, 0]) <= 1.0 and abs(cy - obj.centre[k, 1]) <= 1.0
                # The box's height is at least the object's (rotation only widens it), at most its diagonal.
                bh = (box[3] - box[1]) * h
                assert bh >= 2 * obj.half_height[k] * 0.9 - 1
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                inter = iw * ih
                union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                assert inter / union <= 0.3 + 1e-9


def test_written_dataset_round_trips(tmp_path):
    ds = write_ava_scenes(tmp_path / "d", 1, split="test", seed=9, seconds=3, size=(72, 96))
    assert read_label_map(ds.label_map) == label_map() == {i + 1: m for i, m in enumerate(MOTIONS)}
    rows = read_ava_csv(ds.groundtruth, "groundtruth")
    want = []
    for i, path in enumerate(ds.videos):
        scene = render_scene(i, "test", 9, seconds=3, size=(72, 96))
        want += scene.rows(path.stem)
        with VideoReader(str(path)) as r:
            assert (r.info.num_frames, r.info.height, r.info.width) == (90, 72, 96)
            assert r.info.fps == pytest.approx(30.0)
            frame = r.get_frames([30])[0].astype(np.float32)
        # H.264 (crf 23) of the rendered frame: lossy on these small noisy frames, but the same picture.
        assert np.corrcoef(frame.ravel(), scene.frames[30].ravel().astype(np.float32))[0, 1] > 0.95
    assert rows == want
    assert {r.person_id for r in rows} <= {0, 1, 2} and all(1 <= r.action_id <= 8 for r in rows)
    keys = read_ava_csv(ds.keyframes, "groundtruth")
    assert [(r.video_id, r.timestamp) for r in keys] == [(p.stem, t) for p in ds.videos for t in ("0001", "0002")]
    assert {r.timestamp for r in rows} <= {"0001", "0002"}
