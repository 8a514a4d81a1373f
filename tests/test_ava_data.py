"""AVA-format readers and writers (videoapp.data.ava): columns, round trips, timestamps, errors."""
from __future__ import annotations

import io
import json

import pytest

from videoapp.data.ava import (
    AVAFormatError,
    AVARow,
    canonical_timestamp,
    format_timestamp,
    keyframe_key,
    keyframe_times,
    read_ava_csv,
    read_boxes_json,
    read_exclusions,
    read_label_map,
    unique_boxes,
    write_ava_csv,
    write_boxes_json,
)
from videoapp.labels import load_ava_labels


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# Rows as AVA v2.2 distributes them (ava_val_v2.2.csv: 8 columns with person_id) and the
# current official ground truth's 2-column "listed keyframe, no box" rows.
GT_TEXT = (
    "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n"
    "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,9,1\n"
    "-5KQ66BBWC4,0903,0.226,0.032,0.366,0.497,12,0\n"
    "-5KQ66BBWC4,0904\n"
    "1j20qq1JyX4,1798,0.0,0.0,1.0,1.0,14\n"
)


def test_groundtruth_columns_and_exact_round_trip(tmp_path):
    path = _write(tmp_path, "gt.csv", GT_TEXT)
    rows = read_ava_csv(path, "groundtruth")
    assert rows[0] == AVARow("-5KQ66BBWC4", "0902", (0.077, 0.151, 0.283, 0.811), 80, 1, None)
    assert rows[3] == AVARow("-5KQ66BBWC4", "0904")  # listed keyframe without boxes
    assert rows[4] == AVARow("1j20qq1JyX4", "1798", (0.0, 0.0, 1.0, 1.0), 14, None, None)
    assert rows[2].seconds == 903.0
    # 8-column rows need person_ids=True to come back with their person id; the text is unchanged
    # except that repr() writes 0.0 / 1.0 for "0.0"/"1.0" (already so here).
    out = tmp_path / "gt2.csv"
    write_ava_csv(out, rows[:4], person_ids=True)
    assert out.read_text() == "".join(GT_TEXT.splitlines(keepends=True)[:4])
    assert read_ava_csv(out, "groundtruth") == rows[:4]


def test_detections_8_and_9_columns_round_trip_bit_exact(tmp_path):
    x = 0.1 + 0.2  # 0.30000000000000004: needs repr to survive
    rows = [
        AVARow("vid", "0902", (x, 1 / 3, 0.5, 2 / 3), 12, 3, 0.123456789012345678),
        AVARow("vid", "902.5", (0.0, 0.25, 1.0, 0.75), 80, 0, 1e-7),
    ]
    buf = io.StringIO()
    write_ava_csv(buf, rows)
    assert buf.getvalue().splitlines()[1] == "vid,902.5,0.0,0.25,1.0,0.75,80,1e-07"
    p8 = _write(tmp_path, "d8.csv", buf.getvalue())
    back = read_ava_csv(p8, "detections")
    assert [(r.box, r.score, r.person_id, r.timestamp) for r in back] == [(r.box, r.score, None, r.timestamp) for r in rows]
    p9 = tmp_path / "d9.csv"
    write_ava_csv(p9, rows, person_ids=True)
    assert p9.read_text().splitlines()[0].split(",")[6:] == ["12", "3", repr(rows[0].score)]
    assert read_ava_csv(p9, "detections") == rows


def test_boxes_kind_column_layouts(tmp_path):
    # SlowFast's ava_val_predicted_boxes.csv: empty action, score 8th.
    props = _write(tmp_path, "props.csv", "vid,0902,0.1,0.2,0.3,0.4,,0.998\nvid,0903,0.1,0.2,0.3,0.4,-1,0.5\n")
    rows = read_ava_csv(props, "boxes")
    assert [(r.action_id, r.person_id, r.score) for r in rows] == [(None, None, 0.998), (None, None, 0.5)]
    # Ground truth as boxes: the 8th column is an integer in every 8-column row -> person_id.
    gt = _write(tmp_path, "gt.csv", GT_TEXT)
    rows = read_ava_csv(gt, "boxes")
    assert [(r.action_id, r.person_id, r.score) for r in rows] == [(80, 1, None), (9, 1, None), (12, 0, None), (None, None, None), (14, None, None)]
    # One decimal 8th column makes the whole file's 8th column a score (detection/proposal layout).
    mixed = _write(tmp_path, "mixed.csv", "vid,1,0.1,0.2,0.3,0.4,5,1\nvid,1,0.1,0.2,0.3,0.4,5,0.75\n")
    assert [(r.person_id, r.score) for r in read_ava_csv(mixed, "boxes")] == [(None, 1.0), (None, 0.75)]
    # 6 columns (bare box) and 9 columns (detect --person-ids output).
    other = _write(tmp_path, "o.csv", "vid,7,0.1,0.2,0.3,0.4\nvid,7,0.1,0.2,0.3,0.4,5,2,0.9\n")
    assert read_ava_csv(other, "boxes") == [
        AVARow("vid", "7", (0.1, 0.2, 0.3, 0.4)),
        AVARow("vid", "7", (0.1, 0.2, 0.3, 0.4), 5, 2, 0.9),
    ]
    # Boxes past the frame are kept as written (detect clips them with a warning) ...
    out = _write(tmp_path, "out.csv", "vid,7,-0.05,0.2,1.2,0.4\n")
    assert read_ava_csv(out, "boxes")[0].box == (-0.05, 0.2, 1.2, 0.4)
    # ... but are an error in ground truth and detections.
    with pytest.raises(AVAFormatError, match=r"out\.csv:1: x1=-0\.05 is outside \[0, 1\]"):
        read_ava_csv(_write(tmp_path, "out.csv", "vid,7,-0.05,0.2,1.2,0.4,5\n"), "groundtruth")


@pytest.mark.parametrize(
    "kind, text, message",
    [
        ("groundtruth", "v,0902,0.1,0.2,0.3,0.4,5\n\nv,0903,0.1,0.2\n", r"g\.csv:3: 4 columns; ground truth has 2"),
        ("detections", "v,0902,0.1,0.2,0.3,0.4,5\n", r"g\.csv:1: 7 columns; detections have 8"),
        ("boxes", "v,0902,0.1,0.2,0.3\n", r"g\.csv:1: 5 columns; person boxes have 6 to 9"),
        ("detections", "v,0902,0.1,0.2,0.3,0.4,5,high\n", r"g\.csv:1: score 'high' is not a number"),
        ("detections", "v,0902,0.1,0.2,0.3,0.4,5,nan\n", r"g\.csv:1: score 'nan' is not a finite number"),
        ("groundtruth", "v,0902,0.1,0.2,0.3,0.4,walk\n", r"g\.csv:1: action_id 'walk' is not an integer"),
        ("groundtruth", "v,0902,0.1,0.2,0.3,0.4,0\n", r"g\.csv:1: action_id 0 is not an AVA action id"),
        ("groundtruth", "v,0902,0.1,0.2,0.3,0.4,5,p1\n", r"g\.csv:1: person_id 'p1' is not an integer"),
        ("groundtruth", "v,09:02,0.1,0.2,0.3,0.4,5\n", r"g\.csv:1: timestamp '09:02' is not a number"),
        ("groundtruth", "v,0902,0.5,0.2,0.3,0.4,5\n", r"g\.csv:1: x2=0\.3 is left of x1=0\.5"),
        ("groundtruth", "v,0902,0.1,0.5,0.3,0.4,5\n", r"g\.csv:1: y2=0\.4 is above y1=0\.5"),
        ("groundtruth", "v,0902,0.1,0.2,0.3,1.5,5\n", r"g\.csv:1: y2=1\.5 is outside \[0, 1\]"),
        ("groundtruth", ",0902\n", r"g\.csv:1: empty video_id"),
        ("boxes", "v,0902,0.1,0.2,0.3,x\n", r"g\.csv:1: y2 'x' is not a number"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, kind, text, message):
    path = _write(tmp_path, "g.csv", text)
    with pytest.raises(AVAFormatError, match=message) as info:
        read_ava_csv(path, kind)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path) + ":")
    assert isinstance(info.value, ValueError)


def test_unreadable_files(tmp_path):
    with pytest.raises(AVAFormatError, match=r"missing\.csv:0: no such file"):
        read_ava_csv(tmp_path / "missing.csv", "groundtruth")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00v,1\n")
    with pytest.raises(AVAFormatError, match=r"bin\.csv:0: not a text \(UTF-8\) file"):
        read_ava_csv(tmp_path / "bin.csv", "groundtruth")
    with pytest.raises(ValueError, match="unknown AVA CSV kind"):
        read_ava_csv(tmp_path / "bin.csv", "proposals")


def test_timestamps_compare_by_value():
    assert canonical_timestamp("0902") == canonical_timestamp("902") == canonical_timestamp(902.0) == "902"
    assert canonical_timestamp("1.50") == canonical_timestamp(1.5) == "1.5"
    assert canonical_timestamp("0") == "0" and canonical_timestamp("900") == "900"
    # Resolved to the microsecond, as the official "%.6f" key.
    assert canonical_timestamp("3.0000001") == "3" and canonical_timestamp("3.000001") == "3.000001"
    assert AVARow("v", "0902").key == AVARow("v", "902.000").key == keyframe_key("v", 902) == ("v", "902")
    for bad in ("-1", "abc", "inf"):
        with pytest.raises(ValueError):
            canonical_timestamp(bad)
    assert format_timestamp(902) == "0902" and format_timestamp(12.0) == "0012" and format_timestamp(2.5) == "2.5"
    assert canonical_timestamp(format_timestamp(1 / 3)) == canonical_timestamp(1 / 3)


def test_keyframe_times():
    ks = keyframe_times()
    assert len(ks) == 1798 - 902 + 1 == 897 and ks[0] == 902 and ks[-1] == 1798
    assert ks == [float(t) for t in range(902, 1799)]
    assert keyframe_times(0, 2, fps=2) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert keyframe_times(1.0, 1.9) == [1.0]
    # 0.1 steps: start + i / fps, never accumulated (0.1 * 3 would be 0.30000000000000004).
    assert keyframe_times(0, 0.3, fps=10) == [0.0, 0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="before it starts"):
        keyframe_times(5, 4)
    with pytest.raises(ValueError, match="> 0"):
        keyframe_times(0, 4, fps=0)


def test_label_maps_pbtxt_both_layouts_and_plain(tmp_path):
    # The 60-class evaluation subset (item/id) and the 80-class list (label/label_id/label_type).
    item = _write(tmp_path, "eval.pbtxt", 'item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\nitem {\n  name: "crouch/kneel"\n  id: 3\n}\n')
    assert read_label_map(item) == {1: "bend/bow (at the waist)", 3: "crouch/kneel"}
    full = _write(tmp_path, "full.pbtxt", 'label {\n  name: "crawl"\n  label_id: 2\n  label_type: PERSON_MOVEMENT\n}\n'
                  'label { name: "talk to (e.g., self, a person, a group)" label_id: 79 label_type: PERSON_INTERACTION }\n')
    assert read_label_map(full) == {2: "crawl", 79: "talk to (e.g., self, a person, a group)"}
    # The packaged plain list reads to what videoapp.labels serves.
    from importlib import resources

    plain = resources.files("videoapp.labels").joinpath("ava_v2.2_eval60.txt")
    assert read_label_map(str(plain)) == load_ava_labels() and len(load_ava_labels()) == 60
    # Written back as pbtxt it reads the same.
    pb = _write(tmp_path, "60.pbtxt", "".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in load_ava_labels().items()))
    assert read_label_map(pb) == load_ava_labels()
    with pytest.raises(AVAFormatError, match=r"dup\.pbtxt:5: action id 1 appears twice"):
        read_label_map(_write(tmp_path, "dup.pbtxt", 'item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n  id: 1\n}\n'))
    with pytest.raises(AVAFormatError, match=r"noid\.pbtxt:1: label map item without an id"):
        read_label_map(_write(tmp_path, "noid.pbtxt", 'item {\n  name: "a"\n}\n'))
    with pytest.raises(AVAFormatError, match=r"junk\.txt:2: expected"):
        read_label_map(_write(tmp_path, "junk.txt", "1: walk\nwalk\n"))


def test_exclusions_by_value(tmp_path):
    path = _write(tmp_path, "ex.csv", "-5KQ66BBWC4,0902\n-5KQ66BBWC4,903\n\n")
    ex = read_exclusions(path)
    assert ex == {("-5KQ66BBWC4", "902"), ("-5KQ66BBWC4", "903")}
    assert AVARow("-5KQ66BBWC4", "902").key in ex and AVARow("-5KQ66BBWC4", "0903").key in ex
    with pytest.raises(AVAFormatError, match=r"bad\.csv:1: 3 columns; excluded timestamps have 2"):
        read_exclusions(_write(tmp_path, "bad.csv", "v,0902,1\n"))


def test_boxes_json_round_trip_and_grouping(tmp_path):
    rows = [
        AVARow("clip", "0902", (0.1 + 0.2, 0.2, 0.5, 0.9), 12, 0, 0.91),
        AVARow("clip", "902", (0.1 + 0.2, 0.2, 0.5, 0.9), 17, 0, 0.4),  # same box, same keyframe by value
        AVARow("clip", "903.5", (0.0, 0.0, 1.0, 1.0), 12, 1, 0.6),
    ]
    path = tmp_path / "d.json"
    write_boxes_json(path, rows, label_map={12: "stand", 17: "carry/hold (an object)"})
    data = json.loads(path.read_text())
    assert len(data["boxes"]) == 2
    assert data["boxes"][0]["actions"] == [
        {"action_id": 12, "name": "stand", "score": 0.91},
        {"action_id": 17, "name": "carry/hold (an object)", "score": 0.4},
    ]
    back = read_boxes_json(path)
    assert back == [AVARow("clip", "0902", rows[0].box, None, 0, None), AVARow("clip", "903.5", (0.0, 0.0, 1.0, 1.0), None, 1, None)]
    # A bare list, numeric timestamps keep their spelling, a person score, boxes past the frame kept.
    p2 = _write(tmp_path, "b.json", '[{"video_id": "v", "timestamp": 1.50, "box": [-0.1, 0, 1, 1.2], "score": 0.8},\n'
                '{"video_id": "v", "timestamp": 902, "box": [0.1, 0.1, 0.2, 0.2]}]')
    assert read_boxes_json(p2) == [AVARow("v", "1.50", (-0.1, 0.0, 1.0, 1.2), None, None, 0.8), AVARow("v", "902", (0.1, 0.1, 0.2, 0.2))]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"video_id": "v",\n "timestamp": 1, "box": [0, 0, 1]', r"b\.json:2: not valid JSON"),
        ('{"people": []}', r"b\.json:1: a JSON object here needs a 'boxes' list"),
        ('[{"video_id": "v", "timestamp": 1}]', r"b\.json: entry 0: missing 'box'"),
        ('[{"video_id": "v", "timestamp": 1, "box": [0, 0, 1]}]', r"entry 0: box must be a list of 4 numbers"),
        ('[{"video_id": "v", "timestamp": 1, "box": [0.5, 0, 0.4, 1]}]', r"entry 0: x2=0\.4 is left of x1=0\.5"),
        ('[{"video_id": "v", "timestamp": "x", "box": [0, 0, 1, 1]}]', r"entry 0: timestamp 'x' is not a number"),
        ('[{"video_id": "v", "timestamp": 1, "box": [0, 0, 1, 1], "person_id": 1.5}]', r"entry 0: person_id must be an integer"),
    ],
)
def test_boxes_json_errors(tmp_path, text, message):
    with pytest.raises(AVAFormatError, match=message) as info:
        read_boxes_json(_write(tmp_path, "b.json", text))
    assert "\n" not in str(info.value)


def test_unique_boxes_collapses_actions():
    rows = [
        AVARow("v", "0902", (0.1, 0.1, 0.5, 0.5), 12, 3, 0.2),
        AVARow("v", "902", (0.1, 0.1, 0.5, 0.5), 17, 3, 0.7),
        AVARow("v", "0903", (0.1, 0.1, 0.5, 0.5), 12, None, None),
        AVARow("v", "0904"),
    ]
    assert unique_boxes(rows) == [AVARow("v", "0902", (0.1, 0.1, 0.5, 0.5), None, 3, 0.7), AVARow("v", "0903", (0.1, 0.1, 0.5, 0.5))]


def test_writer_refuses_rows_it_cannot_write():
    buf = io.StringIO()
    with pytest.raises(ValueError, match="mix detections"):
        write_ava_csv(buf, [AVARow("v", "1", (0, 0, 1, 1), 1, None, 0.5), AVARow("v", "1", (0, 0, 1, 1), 1)])
    with pytest.raises(ValueError, match="no person_id"):
        write_ava_csv(buf, [AVARow("v", "1", (0, 0, 1, 1), 1, None, 0.5)], person_ids=True)
    with pytest.raises(ValueError, match="no action_id"):
        write_ava_csv(buf, [AVARow("v", "1", (0, 0, 1, 1))])


def test_label_map_round_trips_names_with_quotes_and_backslashes(tmp_path):
    from videoapp.data.ava import read_label_map, write_label_map

    labels = {1: 'say "hi"', 2: "back\\slash", 7: 'end\\', 80: "watch (a person)"}
    path = write_label_map(tmp_path / "map.pbtxt", labels)
    assert read_label_map(path) == labels
    assert list(read_label_map(path)) == [1, 2, 7, 80]
