"""Label store: content-addressed clips, refused uploads, labels and their history, label sets,
concurrent writers, a writer killed with SIGKILL, export/import round trips; person boxes (validation,
versions, AVA CSV round trip, writers killed with SIGKILL) and the schema-1 -> 2 migration."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from videoapp.data.ava import read_ava_csv, read_label_map
from videoapp.data.datasets import read_folder, read_kinetics_csv
from videoapp.data.video import probe
from videoapp.store import (
    BoxRecord,
    LabelStore,
    StoreError,
    UploadRefused,
    check_label,
    default_data_dir,
    display_name,
    parse_label_list,
)
from videos import truncate_copy, write_empty_video, write_test_audio, write_test_video

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return [write_test_video(d / f"c{i}.mp4", num_frames=60 + 15 * i, fps=30, width=96, height=72) for i in range(3)]


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "data")


def stored_files(store: LabelStore) -> list[Path]:
    return sorted(p for p in store.clips_dir.rglob("*") if p.is_file())


def test_layout_wal_and_default_dir(store, monkeypatch, tmp_path):
    assert store.db_path.is_file()
    for sub in ("clips", "exports", "models", "tmp"):
        assert (store.data_dir / sub).is_dir()
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.delenv("VIDEOAPP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "videoapp"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "videoapp"
    monkeypatch.setenv("VIDEOAPP_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"


def test_add_clip_is_content_addressed_with_metadata(store, clips):
    clip, created = store.add_clip(clips[0], original_name="holiday.mp4", added_by="ann")
    assert created
    assert clip.path == store.clips_dir / clip.sha256[:2] / f"{clip.sha256}.mp4"
    assert clip.path.read_bytes() == Path(clips[0]).read_bytes()
    assert (clip.num_frames, clip.width, clip.height, clip.codec) == (60, 96, 72, "h264")
    assert clip.fps == pytest.approx(30) and clip.duration_s == pytest.approx(2.0)
    assert (clip.original_name, clip.added_by) == ("holiday.mp4", "ann")
    again, created = store.add_clip(clips[0], original_name="copy.mp4")
    assert not created and again.id == clip.id and again.original_name == "holiday.mp4"
    assert len(store.clips()) == 1 and len(stored_files(store)) == 1
    assert store.get_clip(clip.sha256[:10]).id == clip.id
    assert store.get_clip(clip.id).sha256 == clip.sha256
    assert store.get_clip("../etc") is None and store.get_clip("abc") is None
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["../../etc/passwd.mp4", "/abs/path/x.mp4", "..\\..\\win.mp4", "a\nb.mp4", "..", ""])
def test_uploaded_names_never_become_paths(store, clips, name):
    clip, _ = store.add_clip(clips[1], original_name=name)
    assert clip.path.parent.parent == store.clips_dir
    assert clip.path.name.startswith(clip.sha256)
    assert "/" not in clip.original_name and "\\" not in clip.original_name and "\n" not in clip.original_name
    assert display_name(name or Path(clips[1]).name) == clip.original_name
    # Nothing was written outside the data folder.
    assert not (store.data_dir.parent / "etc").exists()


def test_non_videos_are_refused_and_nothing_is_stored(store, clips, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    bad = [text, empty, truncate_copy(clips[0], tmp_path / "cut.mp4", 0.4), write_test_audio(tmp_path / "tone.m4a"),
           write_empty_video(tmp_path / "noframes.avi"), tmp_path]
    for path in bad:
        with pytest.raises(UploadRefused) as info:
            store.add_clip(path)
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message
        assert str(tmp_path) not in message  # the page never learns server paths
    assert store.clips() == [] and stored_files(store) == [] and list(store.tmp_dir.iterdir()) == []


def test_upload_size_limit(tmp_path, clips):
    small = LabelStore(tmp_path / "data", max_clip_bytes=1000)
    with pytest.raises(UploadRefused, match="upload limit"):
        small.add_clip(clips[0])
    assert small.clips() == [] and list(small.tmp_dir.iterdir()) == []


def test_labels_history_current_and_sources(store, clips):
    clip, _ = store.add_clip(clips[2])  # 90 frames = 3 s
    m = store.add_label(clip, "pan_left", source="model", labeled_by="model:x", score=0.7, model="x")
    assert store.current_label(clip) == m and store.current_label(clip, include_model=False) is None
    p1 = store.add_label(clip, "zoom_in", labeled_by="ann", start_s=0.5, end_s=2.0)
    p2 = store.add_label(clip, "static", labeled_by="bob", start_s=0, end_s=99)  # whole clip -> None, None
    assert (p1.start_s, p1.end_s) == (0.5, 2.0) and (p2.start_s, p2.end_s) == (None, None)
    assert store.current_label(clip).id == p2.id
    assert [r.id for r in store.labels_of(clip)] == [p2.id, p1.id, m.id]
    assert store.model_suggestion(clip).label == "pan_left" and store.model_suggestion(clip, "other") is None
    row = store.labels_of(clip)[-1]
    assert (row.source, row.labeled_by, row.score, row.model) == ("model", "model:x", 0.7, "x")
    assert row.labeled_at.endswith("+00:00")
    c = store.counts()
    assert c["clips"] == 1 and c["labeled"] == 1 and c["per_label"] == {"static": {"person": 1, "model": 0}}
    assert c["rows_per_source"] == {"model": 1, "person": 2}
    q = store.queue()
    assert len(q) == 1 and q[0].done and q[0].model.label == "pan_left"


def test_bad_labels_and_segments(store, clips):
    clip, _ = store.add_clip(clips[0])
    for bad in ["", "   ", "a/b", "..", "x\\y", "tab\there", "x" * 101]:
        with pytest.raises(StoreError):
            store.add_label(clip, bad)
    with pytest.raises(StoreError, match="empty"):
        store.add_label(clip, "ok", start_s=1.5, end_s=1.0)
    with pytest.raises(StoreError, match="number"):
        store.add_label(clip, "ok", start_s="soon")
    with pytest.raises(StoreError, match="source"):
        store.add_label(clip, "ok", source="robot")
    with pytest.raises(StoreError, match="no clip"):
        store.add_label("f" * 64, "ok")
    assert store.labels_of(clip) == []
    assert check_label("  pan left ") == "pan left"
    assert parse_label_list("a, b\nc\n\nb") == ["a", "b", "c"]


def test_label_sets(store):
    s = store.save_label_set("camera", ["pan_left", "pan_right", "pan_left"], created_by="ann")
    assert s.labels == ["pan_left", "pan_right"]
    store.save_label_set("camera", ["zoom_in"], created_by="bob")
    assert [(x.name, x.labels, x.created_by) for x in store.label_sets()] == [("camera", ["zoom_in"], "bob")]
    with pytest.raises(StoreError):
        store.save_label_set("empty", [])
    with pytest.raises(StoreError):
        store.save_label_set("bad", ["../x"])


def test_concurrent_threads_lose_nothing(store, clips):
    clip_ids = [store.add_clip(c)[0].id for c in clips]
    saved: dict[int, list[tuple[int, str]]] = {}

    def writer(k: int) -> None:
        out = saved.setdefault(k, [])
        for i in range(25):
            clip_id = clip_ids[(k + i) % len(clip_ids)]
            rec = store.add_label(clip_id, f"w{k}_{i}", labeled_by=f"user{k}")
            out.append((rec.id, rec.label, clip_id))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {r.id: (r.label, r.clip_id, r.labeled_by) for r in store.all_labels()}
    assert len(rows) == 100
    for k, recs in saved.items():
        for rid, label, clip_id in recs:
            assert rows[rid] == (label, clip_id, f"user{k}")


_WRITER = textwrap.dedent("""
    import sys
    from videoapp.store import LabelStore
    store = LabelStore(sys.argv[1])
    clip = store.get_clip(sys.argv[2])
    tag = sys.argv[3]
    i = 0
    while True:
        rec = store.add_label(clip, f"{tag}_{i % 7}", labeled_by=tag, start_s=(i % 3) * 0.1)
        print(rec.id, rec.label, flush=True)  # printed only after the commit
        i += 1
""")


def _spawn_writer(store: LabelStore, sha: str, tag: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(store.data_dir), sha, tag], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def test_kill_9_writer_keeps_every_committed_label(store, clips):
    clip, _ = store.add_clip(clips[0])
    store.add_label(clip, "before", labeled_by="setup")
    procs = [_spawn_writer(store, clip.sha256, tag) for tag in ("alpha", "beta")]
    committed: list[tuple[int, str]] = []
    try:
        deadline = time.time() + 60
        lines = 0
        # Let both writers get going (they also contend with each other), then kill one mid-loop.
        while lines < 60 and time.time() < deadline:
            line = procs[0].stdout.readline()
            if not line:
                break
            lines += 1
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
    finally:
        for p in procs:
            p.wait(timeout=30)
    for p in procs:
        committed += [(int(a), b) for a, b in (ln.split() for ln in p.stdout.read().splitlines() if ln.strip())]
        p.stdout.close()
        assert p.returncode == -signal.SIGKILL
    assert lines >= 60, "the writer did not get going"
    reopened = LabelStore(store.data_dir)
    assert reopened.integrity_check() == "ok"
    rows = {r.id: r.label for r in reopened.labels_of(clip)}
    assert "before" in rows.values()
    for rid, label in committed:
        assert rows.get(rid) == label, f"committed label {rid} ({label}) lost"
    # And the store still takes writes.
    assert reopened.add_label(clip, "after", labeled_by="setup").id > max(rows)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _labelled_store(store: LabelStore, clips) -> list:
    recs = [store.add_clip(c, original_name=f"orig{i}.mp4")[0] for i, c in enumerate(clips)]
    store.add_label(recs[0], "pan_left", labeled_by="ann")                                  # whole clip (2 s)
    store.add_label(recs[1], "zoom_in", labeled_by="bob", start_s=0.5, end_s=1.5)            # a 1 s segment
    store.add_label(recs[2], "static", source="model", labeled_by="model:m", score=0.9)    # model only
    return recs


def test_export_kinetics_with_clips_and_reimport(store, clips, tmp_path):
    recs = _labelled_store(store, clips)
    csv_path = store.export_kinetics(tmp_path / "k", with_clips=True)
    rows = _csv_rows(csv_path)
    assert [r["label"] for r in rows] == ["pan_left", "zoom_in"]  # model suggestions left out by default
    assert list(rows[0])[:5] == ["label", "youtube_id", "time_start", "time_end", "split"]
    assert (rows[1]["time_start"], rows[1]["time_end"], rows[1]["start_s"], rows[1]["end_s"]) == ("0", "2", "0.500", "1.500")
    assert (rows[0]["source"], rows[0]["labeled_by"], rows[0]["sha256"]) == ("person", "ann", recs[0].sha256)
    # The clip files are where the Kinetics reader looks, whole clips are byte copies, segments are cut.
    ann = read_kinetics_csv(csv_path, csv_path.parent)
    assert sorted(ann.classes) == ["pan_left", "zoom_in"] and len(ann) == 2
    files = {p.stem.split("_")[0]: p for p in (tmp_path / "k" / "videos").iterdir()}
    assert files[recs[0].short_id].read_bytes() == recs[0].path.read_bytes()
    cut = probe(files[recs[1].short_id])
    assert cut.duration_s == pytest.approx(1.0, abs=0.05)

    # Into a fresh store: same labels, provenance kept; the whole clip keeps its SHA-256.
    fresh = LabelStore(tmp_path / "fresh")
    report = fresh.import_kinetics_csv(csv_path)
    assert (report.labels_added, report.clips_added, report.missing) == (2, 2, 0)
    got = {fresh.get_clip(r.clip_id).sha256: r for r in fresh.current_labels().values()}
    assert got[recs[0].sha256].label == "pan_left" and got[recs[0].sha256].labeled_by == "ann"
    assert got[recs[0].sha256].labeled_at == rows[0]["labeled_at"]
    seg = [r for sha, r in got.items() if sha != recs[0].sha256][0]
    assert seg.label == "zoom_in" and seg.labeled_by == "bob"
    assert fresh.get_clip(seg.clip_id).duration_s == pytest.approx(1.0, abs=0.05)
    # Exporting the fresh store gives the same labels.
    again = _csv_rows(fresh.export_kinetics(tmp_path / "k2", with_clips=False))
    assert sorted((r["label"], r["labeled_by"], r["source"]) for r in again) == \
        sorted((r["label"], r["labeled_by"], r["source"]) for r in rows)

    # Back into the original store: rows are matched by SHA-256 and already there.
    report = store.import_kinetics_csv(csv_path)
    assert (report.labels_added, report.duplicates) == (0, 2)


def test_export_with_model_suggestions_and_csv_only(store, clips, tmp_path):
    _labelled_store(store, clips)
    rows = _csv_rows(store.export_kinetics(tmp_path / "m", include_model=True, with_clips=False))
    assert sorted(r["label"] for r in rows) == ["pan_left", "static", "zoom_in"]
    assert {r["label"]: r["source"] for r in rows}["static"] == "model"
    assert not (tmp_path / "m" / "videos").exists()


def test_export_folder_tree_round_trip(store, clips, tmp_path):
    recs = _labelled_store(store, clips)
    tree = store.export_folder(tmp_path / "tree")
    ann = read_folder(tree)
    assert ann.classes == ["pan_left", "zoom_in"] and len(ann) == 2
    assert (tree / "pan_left" / f"{recs[0].short_id}.mp4").read_bytes() == recs[0].path.read_bytes()
    assert probe(tree / "zoom_in" / f"{recs[1].short_id}.mp4").duration_s == pytest.approx(1.0, abs=0.05)
    fresh = LabelStore(tmp_path / "fresh")
    report = fresh.import_folder(tree, labeled_by="carol", label_set="camera")
    assert (report.labels_added, report.clips_added) == (2, 2)
    assert sorted(r.label for r in fresh.current_labels().values()) == ["pan_left", "zoom_in"]
    assert fresh.get_label_set("camera").labels == ["pan_left", "zoom_in"]
    assert fresh.import_folder(tree, labeled_by="carol").duplicates == 2  # idempotent


def test_import_official_style_csv_and_errors(store, clips, tmp_path):
    root = tmp_path / "kinetics"
    (root / "train" / "abseiling").mkdir(parents=True)
    shutil.copy(clips[0], root / "train" / "abseiling" / "AbC-dEf_123_000010_000020.mp4")
    csv_path = root / "train.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n"
                        "abseiling,AbC-dEf_123,10,20,train\n"
                        "abseiling,missing_vid,0,10,train\n")
    report = store.import_kinetics_csv(csv_path, labeled_by="importer", label_set="k400-subset")
    assert (report.labels_added, report.clips_added, report.missing) == (1, 1, 1)
    lab = list(store.current_labels().values())[0]
    assert (lab.label, lab.source, lab.labeled_by) == ("abseiling", "person", "importer")
    assert store.get_label_set("k400-subset").labels == ["abseiling"]
    bad = tmp_path / "bad.csv"
    bad.write_text("video,class\nx,y\n")
    with pytest.raises(StoreError, match="not a Kinetics CSV"):
        store.import_kinetics_csv(bad)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(StoreError):
        store.import_kinetics_csv(binary)


# ---------------------------------------------------------------------------------------------- boxes

# Coordinates that text round trips get wrong unless written with repr: 0.1 + 0.2, 1/3, 2/3, the edges.
_BOXES = [
    # (clip index, timestamp_s, box, actions, person_id)
    (0, 1.0, (0.1 + 0.2, 1 / 3, 2 / 3, 0.9999999999999999), ["walk", "talk"], 0),
    (0, 1.0, (0.0, 0.0, 1.0, 1.0), ["sit"], 1),
    (0, 0.5, (0.25, 0.125, 0.5, 0.75), ["talk", "sit", "walk"], 0),
    (1, 0.1 + 0.2, (0.123456789012345, 0.2, 0.3, 0.987654321098765), ["walk"], 3),
]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_boxes_round_trip_through_ava_csv(store, clips, tmp_path):
    recs = [store.add_clip(c)[0] for c in clips[:2]]
    store.save_label_set("people", ["sit", "walk", "talk"])  # ids 1, 2, 3 in this order
    added = [store.add_box(recs[ci], t, box, acts, person_id=pid, labeled_by="ann") for ci, t, box, acts, pid in _BOXES]
    assert [b.actions for b in added] == [tuple(a) for _, _, _, a, _ in _BOXES]
    assert all(isinstance(b, BoxRecord) and b.current and b.source == "person" for b in added)
    # Left out of the export: a model's box (by default) and a box without actions.
    store.add_box(recs[1], 1.5, (0.1, 0.1, 0.2, 0.2), ["sit"], source="model:m", score=0.75)
    store.add_box(recs[1], 1.5, (0.3, 0.3, 0.4, 0.4), [], source="hog", score=1.25)

    csv_path = store.export_ava(tmp_path / "ava", "people", with_clips=True)
    ids = {"sit": 1, "walk": 2, "talk": 3}
    expected = [(recs[ci].sha256[:16], t, box, ids[a], pid) for ci, t, box, acts, pid in _BOXES for a in acts]
    rows = read_ava_csv(csv_path, "groundtruth")
    got = [(r.video_id, r.seconds, r.box, r.action_id, r.person_id) for r in rows]
    assert sorted(got) == sorted(expected)  # exact floats: == on the coordinates and times
    assert [r.timestamp for r in rows if r.video_id == recs[0].sha256[:16]][:1] == ["0.5"]  # by keyframe time
    assert "0001" in {r.timestamp for r in rows}  # whole seconds as AVA writes them
    assert read_label_map(csv_path.parent / "label_map.pbtxt") == {1: "sit", 2: "walk", 3: "talk"}
    for rec in recs:
        assert (tmp_path / "ava" / "videos" / f"{rec.short_id}.mp4").read_bytes() == rec.path.read_bytes()

    # Into a fresh store holding the same videos: the same boxes, actions in file order, provenance "file".
    fresh = LabelStore(tmp_path / "fresh")
    for c in clips[:2]:
        fresh.add_clip(c)
    report = fresh.import_ava(csv_path, labeled_by="carol")  # label_map.pbtxt beside the CSV
    assert (report.boxes_added, report.duplicates, report.missing) == (4, 0, 0)
    assert sorted(report.labels) == ["sit", "talk", "walk"] and report.summary().startswith("4 boxes imported")
    back = sorted((fresh.get_clip(b.clip_id).sha256, b.timestamp_s, b.box, b.actions, b.person_id)
                  for b in fresh.all_boxes())
    assert back == sorted((recs[ci].sha256, t, box, tuple(acts), pid) for ci, t, box, acts, pid in _BOXES)
    assert {(b.source, b.labeled_by) for b in fresh.all_boxes()} == {("file", "carol")}
    assert fresh.import_ava(csv_path).duplicates == 4 and len(fresh.all_boxes()) == 4  # idempotent
    # A store without those videos imports nothing and says so.
    assert LabelStore(tmp_path / "empty").import_ava(csv_path).missing == 4


def test_ava_export_default_label_map_person_ids_and_model_boxes(store, clips, tmp_path):
    clip, _ = store.add_clip(clips[0])
    store.add_box(clip, 1, (0.1, 0.2, 0.3, 0.4), ["stand", "watch (a person)"], person_id=4)
    store.add_box(clip, 1, (0.5, 0.2, 0.7, 0.4), ["sit"])  # no person id: numbered after the clip's largest
    store.add_box(clip, 1.5, (0.5, 0.2, 0.7, 0.4), ["sit"], source="model:mvitv2_xxs", score=0.9)
    # Every action is an AVA action: the official ids (ava_action_list_v2.2: 11 sit, 12 stand, 80 watch (a person)).
    path = store.export_ava(tmp_path / "a")
    assert path.read_text().splitlines() == [
        f"{clip.short_id},0001,0.1,0.2,0.3,0.4,12,4",
        f"{clip.short_id},0001,0.1,0.2,0.3,0.4,80,4",
        f"{clip.short_id},0001,0.5,0.2,0.7,0.4,11,5",
    ]
    assert read_label_map(path.parent / "label_map.pbtxt")[80] == "watch (a person)"
    rows = read_ava_csv(store.export_ava(tmp_path / "b", include_model=True), "groundtruth")
    assert [(r.timestamp, r.action_id) for r in rows][-1] == ("1.5", 11)
    # Not AVA actions: ids 1..N over the sorted names; an explicit map must hold every action.
    store.add_box(clip, 0.5, (0.1, 0.1, 0.9, 0.9), ["zzz", "aaa"], person_id=0)
    read = read_label_map(store.export_ava(tmp_path / "c").parent / "label_map.pbtxt")
    assert read == {i + 1: n for i, n in enumerate(sorted(["stand", "watch (a person)", "sit", "zzz", "aaa"]))}
    with pytest.raises(StoreError) as info:
        store.export_ava(tmp_path / "d", {1: "sit", 2: "stand"})
    assert _one_line(info) == "actions not in the label map: aaa, watch (a person), zzz"
    with pytest.raises(StoreError, match="no label set"):
        store.export_ava(tmp_path / "e", "nope")


@pytest.mark.parametrize("kwargs, message", [
    (dict(box=(0.1, 0.2, 1.2, 0.4)), r"box x2=1.2 is outside \[0, 1\]"),
    (dict(box=(-0.1, 0.2, 0.5, 0.4)), r"box x1=-0.1 is outside"),
    (dict(box=(0.1, 0.2, float("nan"), 0.4)), r"box x2=nan is outside"),
    (dict(box=(0.5, 0.2, 0.5, 0.4)), r"x2=0.5 must be right of x1=0.5"),
    (dict(box=(0.1, 0.4, 0.5, 0.2)), r"y2=0.2 must be below y1=0.4"),
    (dict(box=(0.1, 0.2, 0.5)), r"a box is 4 numbers"),
    (dict(box="0.1,0.2,0.3,0.4"), r"a box is 4 numbers"),
    (dict(box=(0.1, "left", 0.5, 0.6)), r"box y1 must be a number"),
    (dict(actions="stand"), r"actions must be a list"),
    (dict(actions=["ok", "a/b"]), r"no slashes"),
    (dict(timestamp_s=2.5), r"keyframe time 2.5 s is after the clip's end \(2.000 s\)"),
    (dict(timestamp_s=-1), r"keyframe time -1.0 is not a time"),
    (dict(timestamp_s="soon"), r"keyframe time must be a number"),
    (dict(person_id=-1), r"person_id must be an integer >= 0"),
    (dict(person_id=1.5), r"person_id must be an integer >= 0"),
    (dict(source="robot"), r"box source must be person, hog, file or model:NAME, not 'robot'"),
    (dict(source="model:"), r"box source must be"),
    (dict(score=float("inf")), r"score must be a finite number"),
])
def test_bad_boxes_are_one_line_errors_and_store_nothing(store, clips, kwargs, message):
    clip, _ = store.add_clip(clips[0])  # 2 s
    args = dict(timestamp_s=1.0, box=(0.1, 0.2, 0.5, 0.6), actions=["stand"]) | kwargs
    ts, box, acts = args.pop("timestamp_s"), args.pop("box"), args.pop("actions")
    with pytest.raises(StoreError, match=message) as info:
        store.add_box(clip, ts, box, acts, **args)
    _one_line(info)
    assert store.all_boxes(include_deleted=True) == []
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM box_actions").fetchone()[0] == 0


def test_schema_refuses_bad_boxes_written_behind_the_api(store, clips):
    # The CHECK constraints hold even for SQL that bypasses add_box.
    clip, _ = store.add_clip(clips[0])
    with sqlite3.connect(store.db_path) as conn:
        for x1, x2, source in ((0.5, 0.4, "person"), (0.1, 1.5, "person"), (0.1, 0.2, "robot"), (0.1, 0.2, "model:")):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute("INSERT INTO boxes (clip_id, timestamp_s, x1, y1, x2, y2, source, labeled_by, labeled_at)"
                             " VALUES (?, 0, ?, 0.1, ?, 0.2, ?, 'x', 'now')", (clip.id, x1, x2, source))


def test_box_replace_delete_and_history(store, clips):
    clip, _ = store.add_clip(clips[0])
    hog = store.add_box(clip, 0.1 + 0.2, (0.1, 0.1, 0.4, 0.8), [], source="hog", score=1.7, labeled_by="hog")
    other = store.add_box(clip, 1.0, (0.5, 0.1, 0.9, 0.8), ["stand"], person_id=2)
    # Keyframes compare to the microsecond: 0.3 finds the box stored at 0.1 + 0.2.
    assert [b.id for b in store.boxes_of(clip, 0.3)] == [hog.id] and store.keyframes_of(clip) == [0.1 + 0.2, 1.0]
    # A person adjusts the HOG box and ticks actions: a new version, the old one kept and retired.
    v2 = store.replace_box(hog.id, (0.12, 0.1, 0.4, 0.85), ["stand", "talk"], labeled_by="ann")
    assert (v2.replaces, v2.source, v2.score, v2.person_id, v2.timestamp_s) == (hog.id, "person", None, None, 0.1 + 0.2)
    v3 = store.replace_box(v2.id, person_id=7, labeled_by="bob")  # only the person id changes
    assert (v3.box, v3.actions, v3.person_id) == ((0.12, 0.1, 0.4, 0.85), ("stand", "talk"), 7)
    assert [b.id for b in store.boxes_of(clip)] == [v3.id, other.id]
    history = store.box_history(v2.id)
    assert [b.id for b in history] == [hog.id, v2.id, v3.id]
    assert [(b.source, b.labeled_by, b.current) for b in history] == [("hog", "hog", False), ("person", "ann", False),
                                                                    ("person", "bob", True)]
    assert (history[0].replaced_by, history[0].deleted_by, history[0].actions, history[0].score) == (v2.id, "ann", (), 1.7)
    # A stale session editing an old version is told to reload; nothing changes.
    with pytest.raises(StoreError, match=f"box {hog.id} was already replaced by box {v2.id}") as info:
        store.replace_box(hog.id, actions=["sit"])
    _one_line(info)
    with pytest.raises(StoreError, match="already replaced"):
        store.delete_box(v2.id)
    with pytest.raises(StoreError, match="no box 999"):
        store.replace_box(999, actions=["sit"])
    # Delete: the row stays, marked; deleting twice is harmless; a deleted box cannot be replaced.
    gone = store.delete_box(other.id, labeled_by="carol")
    assert (gone.current, gone.deleted_by) == (False, "carol")
    assert store.delete_box(other.id).deleted_at == gone.deleted_at
    with pytest.raises(StoreError, match="already deleted"):
        store.replace_box(other.id, actions=["sit"])
    assert [b.id for b in store.boxes_of(clip)] == [v3.id]
    assert len(store.boxes_of(clip, include_deleted=True)) == 4 and store.keyframes_of(clip) == [0.1 + 0.2]
    assert store.get_box(other.id).actions == ("stand",) and store.get_box(12345) is None


def test_concurrent_box_writers_lose_nothing(store, clips):
    clip_ids = [store.add_clip(c)[0].id for c in clips[:2]]
    target = store.add_box(clip_ids[0], 0.5, (0.2, 0.2, 0.6, 0.6), ["stand"])
    saved: dict[int, list] = {}
    replaced: dict[int, object] = {}
    start = threading.Barrier(2)

    def writer(k: int) -> None:
        out = saved.setdefault(k, [])
        start.wait()
        for i in range(20):
            box = (0.01 * i, 0.02 * k, 0.5 + 0.01 * i, 0.5 + 0.02 * k)
            rec = store.add_box(clip_ids[(k + i) % 2], 0.05 * i, box, [f"a{k}", f"b{i}"], person_id=i,
                                labeled_by=f"user{k}")
            out.append(rec)
            if i == 10:  # both threads edit the same box: exactly one wins, the other is refused
                try:
                    replaced[k] = store.replace_box(target.id, actions=[f"by{k}"], labeled_by=f"user{k}")
                except StoreError as exc:
                    replaced[k] = exc

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {b.id: b for b in store.all_boxes()}
    assert len(stored) == 41  # 2 x 20 new boxes + the winning version of the shared one
    for k, recs in saved.items():
        for rec in recs:
            assert stored[rec.id] == rec
    wins = [v for v in replaced.values() if isinstance(v, BoxRecord)]
    losses = [v for v in replaced.values() if isinstance(v, StoreError)]
    assert len(wins) == 1 and len(losses) == 1 and "already replaced" in str(losses[0])
    assert stored[wins[0].id].actions == wins[0].actions and target.id not in stored



def test_a_box_write_that_fails_midway_leaves_nothing(store, clips):
    # Deterministic companion of the kill -9 test: make the 2nd action row of a write fail, after the box row
    # and the 1st action row went in; the transaction must take them back out (and keep the old version current).
    clip, _ = store.add_clip(clips[0])
    old = store.add_box(clip, 1.0, (0.1, 0.1, 0.5, 0.5), ["stand"])
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON box_actions WHEN NEW.action = 'boom'"
                     " BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        store.add_box(clip, 1.0, (0.2, 0.2, 0.6, 0.6), ["sit", "boom"])
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        store.replace_box(old.id, actions=["sit", "boom"])
    assert store.all_boxes(include_deleted=True) == [old] and store.get_box(old.id).current
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("SELECT box_id, action FROM box_actions").fetchall() == [(old.id, "stand")]

_BOX_WRITER = textwrap.dedent("""
    import sys
    from videoapp.store import LabelStore
    store = LabelStore(sys.argv[1])
    clip = store.get_clip(sys.argv[2])
    tag = sys.argv[3]
    i = 0
    prev = None
    while True:
        x = (i % 50) / 100
        rec = store.add_box(clip, (i % 20) / 10, (x, 0.1, x + 0.4, 0.9), [f"{tag}_a", f"{tag}_b", f"{tag}_{i}"],
                            person_id=i, labeled_by=tag)
        print("add", rec.id, flush=True)  # printed only after the commit
        if prev is not None and i % 3 == 0:
            new = store.replace_box(prev, actions=[f"{tag}_r", f"{tag}_s", f"{tag}_{i}"], labeled_by=tag)
            print("replace", prev, new.id, flush=True)
        prev = rec.id
        i += 1
""")


def test_kill_9_box_writers_leave_no_partial_box(store, clips):
    clip, _ = store.add_clip(clips[0])
    first = store.add_box(clip, 0.0, (0.1, 0.1, 0.2, 0.2), ["before"], labeled_by="setup")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", _BOX_WRITER, str(store.data_dir), clip.sha256, tag],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for tag in ("alpha", "beta")]
    try:
        deadline = time.time() + 60
        lines = 0
        while lines < 60 and time.time() < deadline:
            if not procs[0].stdout.readline():
                break
            lines += 1
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
    finally:
        for p in procs:
            p.wait(timeout=30)
    added: set[int] = set()
    replaced: dict[int, int] = {}
    for p in procs:
        for ln in p.stdout.read().splitlines():
            parts = ln.split()
            if parts and parts[0] == "add":
                added.add(int(parts[1]))
            elif parts and parts[0] == "replace":
                replaced[int(parts[1])] = int(parts[2])
        p.stdout.close()
        assert p.returncode == -signal.SIGKILL
    assert lines >= 60, "the box writer did not get going"
    reopened = LabelStore(store.data_dir)
    assert reopened.integrity_check() == "ok"
    with sqlite3.connect(reopened.db_path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # No partial box: every box row holds all 3 of its actions, and no action row lacks its box.
        counts = conn.execute("SELECT boxes.id, COUNT(box_actions.id) FROM boxes LEFT JOIN box_actions"
                              " ON box_actions.box_id = boxes.id WHERE boxes.id != ? GROUP BY boxes.id",
                              (first.id,)).fetchall()
        assert counts and all(n == 3 for _, n in counts), [c for c in counts if c[1] != 3][:5]
        # A replacement is all or nothing: a retired box always has its successor, and vice versa.
        retired = {r[0] for r in conn.execute("SELECT id FROM boxes WHERE deleted_at IS NOT NULL")}
        successors = {r[0]: r[1] for r in conn.execute("SELECT replaces, id FROM boxes WHERE replaces IS NOT NULL")}
        assert retired == set(successors)
    everything = {b.id: b for b in reopened.all_boxes(include_deleted=True)}
    assert everything[first.id].actions == ("before",)
    for box_id in added:
        assert box_id in everything, f"committed box {box_id} lost"
    for old, new in replaced.items():
        assert everything[old].replaced_by == new and not everything[old].current and everything[new].current
    assert reopened.add_box(clip, 1.0, (0.3, 0.3, 0.6, 0.6), ["after"]).id > max(everything)


_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE clips (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, ext TEXT NOT NULL,
    original_name TEXT NOT NULL, size_bytes INTEGER NOT NULL, num_frames INTEGER NOT NULL, fps REAL NOT NULL,
    duration_s REAL NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, codec TEXT NOT NULL,
    added_by TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, clip_id INTEGER NOT NULL REFERENCES clips(id),
    label TEXT NOT NULL, start_s REAL, end_s REAL, source TEXT NOT NULL CHECK (source IN ('model', 'person')),
    labeled_by TEXT NOT NULL, labeled_at TEXT NOT NULL, score REAL, model TEXT, label_set TEXT);
CREATE INDEX labels_clip ON labels (clip_id, source, id);
CREATE TABLE label_sets (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, labels TEXT NOT NULL,
    source TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO clips VALUES (1, '%s', '.mp4', 'old.mp4', 10, 60, 30.0, 2.0, 96, 72, 'h264', 'ann', '2025-01-01T00:00:00.000+00:00');
INSERT INTO labels VALUES (1, 1, 'pan_left', NULL, NULL, 'person', 'ann', '2025-01-01T00:00:01.000+00:00', NULL, NULL, NULL);
INSERT INTO label_sets VALUES (1, 'camera', '["pan_left"]', 'person', 'ann', '2025-01-01T00:00:00.000+00:00');
"""


def test_a_store_from_schema_1_opens_and_gains_the_box_tables(tmp_path):
    data = tmp_path / "old"
    data.mkdir()
    sha = "ab" * 32
    with sqlite3.connect(data / "labels.db") as conn:  # what the version-1 code created
        conn.executescript(_SCHEMA_V1 % sha)
    store = LabelStore(data)
    with sqlite3.connect(store.db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"boxes", "box_actions", "clips", "labels", "label_sets", "meta"} <= tables
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert store.integrity_check() == "ok"
    # Old rows are untouched, and boxes can be added to the old clips.
    lab = store.current_label(sha)
    assert (lab.label, lab.labeled_by, lab.labeled_at) == ("pan_left", "ann", "2025-01-01T00:00:01.000+00:00")
    assert store.get_label_set("camera").labels == ["pan_left"]
    box = store.add_box(sha, 1.5, (0.1, 0.2, 0.3, 0.4), ["stand"], person_id=0)
    assert LabelStore(data).boxes_of(sha) == [box]  # and opening it again changes nothing
    # A store written by a newer schema is refused rather than misread.
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"newer videoapp \(schema 99") as info:
        LabelStore(data)
    _one_line(info)


def test_import_ava_errors_are_one_line(store, clips, tmp_path):
    clip, _ = store.add_clip(clips[0])
    vid = clip.short_id
    cases = {
        "cols.csv": (f"{vid},1,0.1,0.2,0.3,0.4\n", r"cols.csv:1: 6 columns"),
        "range.csv": (f"{vid},1,0.1,0.2,1.3,0.4,12,0\n", r"range.csv:1: x2=1.3 is outside"),
        "id.csv": (f"{vid},1,0.1,0.2,0.3,0.4,99,0\n", r"id.csv: action id 99 .* is not in the label map"),
        "late.csv": (f"{vid},0005,0.1,0.2,0.3,0.4,12,0\n", r"late.csv: [0-9a-f]+ at 0005: keyframe time 5.0 s is after"),
        "flat.csv": (f"{vid},1,0.1,0.2,0.1,0.4,12,0\n", r"flat.csv: .* x2=0.1 must be right of x1=0.1"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(StoreError, match=message) as info:
            store.import_ava(path, "ava")
        assert str(tmp_path) not in _one_line(info)  # the page never learns server paths
    assert store.all_boxes(include_deleted=True) == []
    # 2-column rows (keyframes listed without boxes) are skipped; other videos are counted as missing.
    ok = tmp_path / "ok.csv"
    ok.write_text(f"{vid},0001\n{vid},1,0.1,0.2,0.3,0.4,12,0\n{vid},1,0.1,0.2,0.3,0.4,80,0\nother,1,0.1,0.2,0.3,0.4,12\n")
    report = store.import_ava(ok, videos={"other": "f" * 64})
    assert (report.boxes_added, report.missing) == (1, 1)
    assert [(b.actions, b.person_id) for b in store.boxes_of(clip, 1)] == [(("stand", "watch (a person)"), 0)]
