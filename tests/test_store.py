"""Label store: content-addressed clips, refused uploads, labels and their history, label sets,
concurrent writers, a writer killed with SIGKILL, export/import round trips."""
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

from videoapp.data.datasets import read_folder, read_kinetics_csv
from videoapp.data.video import probe
from videoapp.store import (
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
