"""AVA frame-mAP@0.5 (videoapp.engine.ava_metrics): hand-computed cases and SlowFast's copy of the official evaluator."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from videoapp.data.ava import AVAFormatError, AVARow, write_ava_csv
from videoapp.engine.ava_metrics import average_precision_voc, evaluate_ava, format_ava_table

LABELS = {1: "bend", 2: "walk", 3: "talk"}
A = (0.0, 0.0, 0.5, 0.5)
B = (0.5, 0.5, 1.0, 1.0)


def gt(ts, box, action, person=0):
    return AVARow("vid", ts, box, action, person)


def det(ts, box, action, score):
    return AVARow("vid", ts, box, action, None, score)


def test_perfect_detector_is_one():
    g = [gt("0902", A, 1), gt("0902", A, 2), gt("0902", B, 2, 1), gt("0903", B, 3)]
    # Same keyframes written differently ("902" for "0902"): compared by value.
    d = [det(str(int(r.timestamp)), r.box, r.action_id, 0.9 - 0.1 * i) for i, r in enumerate(g)]
    report = evaluate_ava(g, d, LABELS)
    assert report["map"] == 1.0 and report["per_class_ap"] == {"bend": 1.0, "walk": 1.0, "talk": 1.0}
    assert report["num_keyframes"] == 2 and report["num_detections"] == 4 and report["num_groundtruth"] == 4
    assert report["keyframes"] == "all" and report["num_classes_evaluated"] == 3
    # The same detections one keyframe late score nothing.
    late = [det(str(int(r.timestamp) + 1), r.box, r.action_id, r.score) for r in d]
    assert evaluate_ava(g, late, LABELS)["map"] == 0.0


def test_iou_threshold_is_inclusive_and_without_plus_one():
    g = [gt("1", A, 1)]
    # Half of A: IoU exactly 0.5 in binary floating point -> a true positive (>= 0.5).
    assert evaluate_ava(g, [det("1", (0.0, 0.0, 0.5, 0.25), 1, 0.9)], LABELS)["map"] == 1.0
    # Shifted by 0.2: intersection 0.3*0.5 = 0.15, union 0.35, IoU 0.43 -> a false positive, AP 0.
    # (With the pixel "+1" convention on these normalised numbers the IoU would be ~0.92.)
    report = evaluate_ava(g, [det("1", (0.2, 0.0, 0.7, 0.5), 1, 0.9)], LABELS)
    assert report["map"] == 0.0 and report["per_class"][0]["num_true_positives"] == 0


def test_duplicates_are_false_positives():
    g = [gt("1", A, 1), gt("2", A, 1)]
    d = [det("1", A, 1, 0.9), det("1", A, 1, 0.8), det("2", A, 1, 0.7)]
    # Ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2*1 + 1/2*2/3.
    assert evaluate_ava(g, d, LABELS)["map"] == pytest.approx(0.5 + 1 / 3, abs=1e-15)


def test_no_falling_back_to_the_second_best_box():
    b2 = (0.125, 0.0, 0.625, 0.5)  # overlaps A
    g = [gt("1", A, 1), gt("1", b2, 1, 1)]
    # The second detection overlaps A best (IoU 0.88, already taken) and b2 with IoU 0.68:
    # officially a false positive, so AP = 1/2 (recall stops at 1/2), not 1.
    d = [det("1", A, 1, 0.9), det("1", (0.03125, 0.0, 0.53125, 0.5), 1, 0.8)]
    assert evaluate_ava(g, d, LABELS)["map"] == 0.5


def test_mixed_ranking_hand_computed():
    # 3 GT boxes on 3 keyframes; ranking TP, FP, TP, FP, FP, TP.
    g = [gt("1", A, 2), gt("2", A, 2), gt("3", A, 2)]
    d = [det("1", A, 2, 0.9), det("1", B, 2, 0.8), det("2", A, 2, 0.7), det("3", B, 2, 0.6), det("2", B, 2, 0.5), det("3", A, 2, 0.4)]
    # precision 1, 1/2, 2/3, 1/2, 2/5, 1/2; made non-increasing from the right: 1, 2/3, 2/3, 1/2, 1/2, 1/2;
    # recall steps at ranks 1, 3, 6: AP = 1/3*1 + 1/3*2/3 + 1/3*1/2 = 13/18.
    report = evaluate_ava(g, d, LABELS)
    assert report["per_class_ap"] == {"bend": None, "walk": pytest.approx(13 / 18, abs=1e-15), "talk": None}
    assert report["map"] == pytest.approx(13 / 18, abs=1e-15)
    assert average_precision_voc(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.array([1, 0, 1, 0, 0, 1], bool), 3) == pytest.approx(13 / 18, abs=1e-15)
    # A class with ground truth and no detections has AP 0; with no ground truth at all, no AP.
    assert average_precision_voc(np.zeros(0), np.zeros(0, bool), 2) == 0.0


def test_class_without_groundtruth_is_left_out_of_the_mean():
    g = [gt("1", A, 1), gt("1", B, 2)]
    d = [det("1", A, 1, 0.9), det("1", B, 3, 0.8), det("1", A, 3, 0.7)]  # talk has no GT: its detections don't matter
    report = evaluate_ava(g, d, LABELS)
    # bend 1.0, walk 0 (no detection), talk None -> mAP 0.5 over two classes.
    assert report["per_class_ap"] == {"bend": 1.0, "walk": 0.0, "talk": None}
    assert report["map"] == 0.5 and report["num_classes_evaluated"] == 2
    # Actions outside the label map are dropped on both sides.
    report = evaluate_ava(g + [gt("1", B, 7)], d + [det("1", B, 7, 0.99)], LABELS)
    assert report["map"] == 0.5 and report["num_detections_ignored"] == 1
    with pytest.raises(ValueError, match="no box of any label-map action"):
        evaluate_ava([gt("1", A, 7)], d, LABELS)


def test_fifty_detections_per_keyframe():
    g = [gt("1", A, 1)]
    others = [det("1", B, 2, 0.5 + i / 1000) for i in range(50)]  # walk has no GT: pure competition for the 50 slots
    assert evaluate_ava(g, others[:49] + [det("1", A, 1, 0.1)], LABELS)["map"] == 1.0
    report = evaluate_ava(g, others + [det("1", A, 1, 0.1)], LABELS)
    assert report["map"] == 0.0 and report["num_detections"] == 50 and report["num_detections_ignored"] == 1
    # The order in the file does not matter: the 50 best are kept.
    assert evaluate_ava(g, [det("1", A, 1, 0.1)] + others, LABELS)["map"] == 0.0
    assert evaluate_ava(g, [det("1", A, 1, 0.9)] + others, LABELS)["map"] == 1.0
    # The cap is per keyframe: the same 50 on another keyframe take nothing from this one.
    moved = [det("2", r.box, r.action_id, r.score) for r in others]
    assert evaluate_ava(g, moved + [det("1", A, 1, 0.1)], LABELS)["map"] == 1.0
    # Ties at the cut: a row equal to the lowest kept score does not enter (the official reader's rule).
    flat = [det("1", B, 2, 0.5) for _ in range(50)]
    assert evaluate_ava(g, flat + [det("1", A, 1, 0.5)], LABELS)["map"] == 0.0
    assert evaluate_ava(g, flat + [det("1", A, 1, 0.5000001)], LABELS)["map"] == 1.0
    assert evaluate_ava(g, others + [det("1", A, 1, 0.1)], LABELS, max_detections_per_keyframe=51)["map"] == 1.0


def test_keyframe_conventions_and_exclusions(tmp_path):
    fp = (0.6, 0.0, 0.9, 0.3)
    d = [det("0901", A, 1, 0.5), det("0902", fp, 1, 0.9), det("0903", fp, 1, 0.8)]
    # Listed: the GT names 0901 (a box) and 0902 (a 2-column row); 0903's detection is ignored.
    # Ranked FP(0.9), TP(0.5): AP 1/2.
    listed = [gt("0901", A, 1), AVARow("vid", "902")]
    report = evaluate_ava(listed, d, LABELS)
    assert report["keyframes"] == "listed" and report["map"] == 0.5
    assert report["num_keyframes"] == 2 and report["num_detections_ignored"] == 1
    # All keyframes (GT without 2-column rows, SlowFast / AVA v2.2 with exclusions): 0903 counts too.
    # Ranked FP, FP, TP: AP 1/3.
    report = evaluate_ava([gt("0901", A, 1)], d, LABELS)
    assert report["keyframes"] == "all" and report["map"] == pytest.approx(1 / 3, abs=1e-15)
    assert report["num_keyframes"] == 3
    # An explicit convention overrides the guess.
    assert evaluate_ava([gt("0901", A, 1)], d, LABELS, keyframes="listed")["map"] == 1.0
    assert evaluate_ava(listed, d, LABELS, keyframes="all")["map"] == pytest.approx(1 / 3, abs=1e-15)
    # Excluded keyframes are dropped on both sides, compared by value ("903" excludes "0903").
    ex = tmp_path / "ex.csv"
    ex.write_text("vid,903\n")
    assert evaluate_ava([gt("0901", A, 1)], d, LABELS, exclusions=ex)["map"] == 0.5
    assert evaluate_ava([gt("0901", A, 1)], d, LABELS, exclusions={("vid", "902.0"), ("vid", "903")})["map"] == 1.0
    # Excluding a GT keyframe removes its boxes from recall as well: 2 GT, one excluded -> AP 1.
    g2 = [gt("0901", A, 1), gt("0904", B, 1)]
    d2 = [det("0901", A, 1, 0.9), det("0904", fp, 1, 0.8)]
    assert evaluate_ava(g2, d2, LABELS)["map"] == 0.5
    assert evaluate_ava(g2, d2, LABELS, exclusions={("vid", "0904")})["map"] == 1.0


def test_detections_without_area_are_dropped_after_the_cap():
    g = [gt("1", A, 1)]
    d = [det("1", (0.3, 0.3, 0.3, 0.6), 1, 0.95), det("1", A, 1, 0.5)]
    report = evaluate_ava(g, d, LABELS)
    assert report["map"] == 1.0 and report["num_detections"] == 1 and report["num_detections_ignored"] == 1


def test_files_label_map_and_table(tmp_path):
    g, d, lm = tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "lm.pbtxt"
    write_ava_csv(g, [gt("0902", A, 1), gt("0902", B, 2, 1)], person_ids=True)
    write_ava_csv(d, [det("0902", A, 1, 0.9), det("0902", A, 2, 0.8)])
    lm.write_text("".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in LABELS.items()))
    report = evaluate_ava(g, d, lm)
    assert report["per_class_ap"] == {"bend": 1.0, "walk": 0.0, "talk": None} and report["map"] == 0.5
    table = format_ava_table(report)
    assert "frame-mAP@0.5: 50.00" in table and "bend" in table and "100.00" in table
    assert table.splitlines()[3].split() == ["talk", "-", "0"]
    # Default label map: the 60 evaluated AVA v2.2 actions (1 = bend/bow, 11 = sit).
    report = evaluate_ava([gt("1", A, 1), gt("1", B, 11)], [det("1", A, 1, 0.9)])
    assert report["map"] == 0.5 and len(report["per_class_ap"]) == 60
    bad = tmp_path / "bad.csv"
    bad.write_text("vid,0902,0.1,0.2,0.3,0.4,5\n")
    with pytest.raises(AVAFormatError, match=r"bad\.csv:1: 7 columns; detections have 8"):
        evaluate_ava(g, bad, lm)
    with pytest.raises(ValueError, match="has no score"):
        evaluate_ava(g, [gt("0902", A, 1)], lm)


# ----------------------------------------------------------------------------- reference


def _random_files(rng: random.Random, folder: Path, with_empty_rows: bool) -> dict[str, Path]:
    """Random AVA files: GT, detections near GT boxes and elsewhere, exclusions, a label map.

    Scores are distinct (the official ranking is implementation-defined on ties).
    Detections are written grouped by keyframe in descending score order, at most 50
    per keyframe, which is how the official reader hands them to the evaluator (SlowFast's
    reader does neither); ``full_det`` holds more than 50 on some keyframes, in random order.
    """
    classes = [1, 3, 5, 8, 12, 17]  # 17 is not in the label map
    lm = "".join(f'item {{\n  name: "act{c}"\n  id: {c}\n}}\n' for c in classes[:-1])
    gt_rows, det_rows, ex_rows = [], [], []

    def rand_box():
        x = sorted([rng.random(), rng.random()])
        y = sorted([rng.random(), rng.random()])
        return (x[0], y[0], x[1], y[1])

    for vid in ("vidA", "-vid_B"):
        for t in range(902, 902 + rng.randint(4, 9)):
            ts = f"{t:04d}" if rng.random() < 0.5 else str(t)
            people = [rand_box() for _ in range(rng.randint(0, 4))]
            for pid, b in enumerate(people):
                for c in rng.sample(classes, rng.randint(1, 3)):
                    gt_rows.append(AVARow(vid, ts, b, c, pid))
            if not people and with_empty_rows:
                gt_rows.append(AVARow(vid, ts))
            if rng.random() < 0.15:
                ex_rows.append(f"{vid},{t}\n")
            for _ in range(rng.choice([0, 3, 10, 70])):
                if people and rng.random() < 0.7:
                    j = rng.choice([0.0, 0.02, 0.1, 0.3])
                    b = [min(1.0, max(0.0, v + rng.uniform(-j, j))) for v in rng.choice(people)]
                    b = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
                else:
                    b = rand_box()
                if rng.random() < 0.03:
                    b = (b[0], b[1], b[0], b[3])  # no area
                det_rows.append(AVARow(vid, f"{t:04d}", b, rng.choice(classes), None, rng.random()))
        for _ in range(rng.randint(0, 5)):  # a keyframe the ground truth never mentions
            det_rows.append(AVARow(vid, "1500", rand_box(), rng.choice(classes), None, rng.random()))
    rng.shuffle(det_rows)
    whitelisted = [r for r in det_rows if r.action_id != 17]
    by_key: dict = {}
    for r in whitelisted:
        by_key.setdefault(r.key, []).append(r)
    capped = [r for rows in by_key.values() for r in sorted(rows, key=lambda r: -r.score)[:50]]
    paths = {k: folder / f"{k}.csv" for k in ("gt", "full_det", "det", "ex")}
    write_ava_csv(paths["gt"], gt_rows, person_ids=True)
    write_ava_csv(paths["full_det"], det_rows)
    write_ava_csv(paths["det"], capped)
    paths["ex"].write_text("".join(ex_rows))
    paths["lm"] = folder / "lm.pbtxt"
    paths["lm"].write_text(lm)
    listed = {r.key for r in gt_rows}
    paths["det_listed"] = folder / "det_listed.csv"
    write_ava_csv(paths["det_listed"], [r for r in capped if r.key in listed])
    return paths


@pytest.fixture()
def slowfast_eval(monkeypatch):
    """SlowFast's copy of the official evaluator (pyslowfast, numpy only) under numpy 2."""
    helper = pytest.importorskip("slowfast.utils.ava_eval_helper")
    # numpy 2 removed the np.float alias that 2019 code compares dtypes with.
    monkeypatch.setattr(np, "float", float, raising=False)
    monkeypatch.setattr(helper.pprint, "pprint", lambda *a, **k: None)

    def run(lm, gt, det, ex=None):
        categories, whitelist = helper.read_labelmap(str(lm))
        metrics = helper.run_evaluation(
            categories,
            helper.read_csv(str(gt), whitelist, load_score=False),
            helper.read_csv(str(det), whitelist, load_score=True),
            helper.read_exclusions(str(ex)) if ex else set(),
        )
        prefix = "PascalBoxes_PerformanceByCategory/AP@0.5IOU/"
        per_class = {k[len(prefix):]: (None if np.isnan(v) else float(v)) for k, v in metrics.items() if k.startswith(prefix)}
        return float(metrics["PascalBoxes_Precision/mAP@0.5IOU"]), per_class

    return run


def test_matches_official_evaluator_on_random_files(tmp_path, slowfast_eval):
    worst = 0.0
    for seed in range(12):
        rng = random.Random(seed)
        p = _random_files(rng, tmp_path, with_empty_rows=False)
        # "all" convention with exclusions (AVA v2.2 / SlowFast); our reader sorts and caps the raw file itself.
        for ex in (None, p["ex"]):
            ref_map, ref_ap = slowfast_eval(p["lm"], p["gt"], p["det"], ex)
            ours = evaluate_ava(p["gt"], p["full_det"], p["lm"], ex)
            assert ours["keyframes"] == "all"
            assert {k: v is None for k, v in ours["per_class_ap"].items()} == {k: v is None for k, v in ref_ap.items()}
            worst = max([worst, abs(ours["map"] - ref_map)] + [abs(v - ref_ap[k]) for k, v in ours["per_class_ap"].items() if v is not None])
        # "listed" convention: the official script ignores detections on keyframes the GT does not list.
        ref_map, _ = slowfast_eval(p["lm"], p["gt"], p["det_listed"])
        worst = max(worst, abs(evaluate_ava(p["gt"], p["full_det"], p["lm"], keyframes="listed")["map"] - ref_map))
        assert 0.0 < ref_map < 1.0
    assert worst <= 1e-12


# ----------------------------------------------------------------------------- CLI


def test_cli_eval_ava(tmp_path, capsys):
    from videoapp.cli import main

    g, d, lm, ex, out = (tmp_path / n for n in ("gt.csv", "det.csv", "lm.pbtxt", "ex.csv", "report.json"))
    write_ava_csv(g, [gt("0902", A, 1), gt("0902", B, 2, 1), gt("0903", B, 1, 1)], person_ids=True)
    write_ava_csv(d, [det("0902", A, 1, 0.9), det("0902", A, 2, 0.8), det("0903", A, 1, 0.95)])
    lm.write_text("".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in LABELS.items()))
    ex.write_text("vid,903\n")
    args = ["eval", "--dataset", "ava", "--annotations", str(g), "--detections", str(d), "--label-map", str(lm)]
    assert main(args + ["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    # bend: FP(0.95 on 0903), TP(0.9) with 2 GT -> precision 1/2 at recall 1/2 -> AP 1/4; walk 0; talk none.
    assert report["map"] == pytest.approx((0.25 + 0.0) / 2, abs=1e-15)
    assert report == json.loads(json.dumps(evaluate_ava(g, d, lm)))
    captured = capsys.readouterr()
    assert "frame-mAP@0.5: 12.50" in captured.out and captured.err == ""
    # Excluding 0903 drops its GT box and its detection: bend AP 1.
    assert main(args + ["--exclusions", str(ex), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["per_class_ap"] == {"bend": 1.0, "walk": 0.0, "talk": None}
    capsys.readouterr()
    # Bad input: exit 2 with one line naming the file and line.
    bad = tmp_path / "bad.csv"
    bad.write_text("vid,0902,0.1,0.2,0.3,0.4,1,0.9\nvid,0902,0.5,0.2,0.3,0.4,1,0.9\n")
    for argv, message in (
        (["eval", "--dataset", "ava", "--annotations", str(g), "--detections", str(bad), "--label-map", str(lm)],
         f"videoapp: error: {bad}:2: x2=0.3 is left of x1=0.5"),
        (["eval", "--dataset", "ava", "--annotations", str(bad), "--detections", str(d), "--label-map", str(lm)],
         f"videoapp: error: {bad}:1: person_id '0.9' is not an integer"),
        (["eval", "--dataset", "ava", "--annotations", str(g), "--detections", str(d), "--label-map", str(d)],
         f"videoapp: error: {d}:1: expected 'item {{ ... }}' (pbtxt) or 'ID: name'"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(message), err
