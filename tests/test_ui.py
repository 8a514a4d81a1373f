"""Web UI callbacks (videoapp.ui.app.VideoApp) without a browser, the Gradio wiring, and `videoapp serve`'s
argument checks. The browser drives the same code in test_browser.py."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import threading
import uuid
import zipfile
from pathlib import Path

import pytest
import torch

from videoapp.cli import main
from videoapp.models import create_model
from videoapp.ui.app import (
    EXPORT_FORMATS,
    FINETUNE_MODES,
    MODEL_LABEL_SET,
    UNTRAINED_KEY,
    ModelCatalog,
    UIError,
    VideoApp,
    build_ui,
    make_app,
    progress_html,
    timeline_figure,
)
from videoapp.weights import save_weights
from servers import free_port, videoapp_serve
from videos import truncate_copy, write_test_video

TINY = "mvitv2_xxs_8x64"
LABELS = ["pan_left", "pan_right", "zoom_in"]
DEFAULT_KEY = "shipped:default.safetensors"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=len(LABELS))
    save_weights(d / "default.safetensors", model.state_dict(),
                 {"model": TINY, "labels": LABELS, "num_frames": 8, "sampling_rate": 2, "crop_size": 64})
    return d


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    short = write_test_video(d / "short.mp4", num_frames=12, fps=30, width=96, height=72)   # < one clip span
    long = write_test_video(d / "long.mp4", num_frames=120, fps=30, width=96, height=72)   # 4 s: a timeline
    others = [write_test_video(d / f"o{i}.mp4", num_frames=30 + 6 * i, fps=30, width=96, height=72) for i in range(3)]
    text = d / "notes.mp4"
    text.write_text("not a video at all\n")
    return {"short": short, "long": long, "others": others, "text": str(text),
            "truncated": truncate_copy(long, d / "cut.mp4", 0.4)}


@pytest.fixture
def app(tmp_path, weights_dir):
    a = make_app(tmp_path / "data", weights_dir=weights_dir)
    a._upload_root = str(tmp_path / "uploads")  # what Gradio's upload folder is in the server
    yield a
    a.close()


def upload(app: VideoApp, src: str, name: str | None = None) -> str:
    """A copy of ``src`` where Gradio would have put an upload (the app deletes those)."""
    d = Path(app._upload_root) / uuid.uuid4().hex
    d.mkdir(parents=True, exist_ok=True)
    dst = d / (name or Path(src).name)
    shutil.copy(src, dst)
    return str(dst)


# ---------------------------------------------------------------------- models
def test_catalog_default_first_and_untrained_fallback(tmp_path, weights_dir):
    cat = ModelCatalog(weights_dir, tmp_path / "models")
    assert cat.default_key() == DEFAULT_KEY and not cat.default_missing
    assert [c.key for c in cat.choices()] == [DEFAULT_KEY]
    assert cat.get(DEFAULT_KEY).labels == LABELS
    with pytest.raises(UIError):
        cat.get("/etc/passwd")  # the page can only name models on the list
    assert cat.predictor(DEFAULT_KEY) is cat.predictor(DEFAULT_KEY)

    empty = ModelCatalog(tmp_path / "none", tmp_path / "models")
    assert empty.default_missing and empty.default_key() == UNTRAINED_KEY
    untrained = empty.get(UNTRAINED_KEY)
    assert not untrained.trained and "untrained" in untrained.title
    p1, p2 = empty.predictor(UNTRAINED_KEY), ModelCatalog(tmp_path / "none", tmp_path / "m2").predictor(UNTRAINED_KEY)
    for a, b in zip(p1.model.parameters(), p2.model.parameters()):
        assert torch.equal(a, b)  # the same untrained model in every process


def test_untrained_notice_is_shown(tmp_path, media):
    a = make_app(tmp_path / "data", weights_dir=tmp_path / "no-weights")
    try:
        assert "Untrained model" in a.notice(UNTRAINED_KEY) and a.notice("shipped:x") == ""
        results, status, _ = a.predict(media["short"], None, UNTRAINED_KEY)
        assert results and results[0].top1.startswith("untrained_")
    finally:
        a.close()


# ---------------------------------------------------------------------- Predict
def test_predict_upload_stores_clip_suggestion_and_json(app, media):
    path = upload(app, media["short"], "my clip.mp4")
    results, status, json_path = app.predict([path], None, DEFAULT_KEY, top_k=2)
    assert not Path(path).exists()  # Gradio's temporary copy is gone; the store has the clip
    (clip,) = app.store.clips()
    assert clip.original_name == "my clip.mp4"
    (r,) = results
    assert r.sha256 == clip.sha256 and list(r.top_k) and len(r.top_k) == 2 and r.timeline is None
    assert r.top1 in LABELS and r.top1.replace("_", "\\_") in status  # Markdown-escaped
    payload = json.loads(Path(json_path).read_text())
    assert payload["video"] == "my clip.mp4" and payload["sha256"] == clip.sha256
    assert payload["top_k"][0]["label"] == r.top1 and payload["windows"] == []
    sugg = app.store.model_suggestion(clip, DEFAULT_KEY)
    assert sugg.label == r.top1 and sugg.source == "model"
    # Predicting again with the same result adds no duplicate suggestion.
    app.predict(None, [clip.sha256], DEFAULT_KEY)
    assert len(app.store.labels_of(clip)) == 1
    vid, top, fig = app.show_result(results, clip.sha256)
    assert vid == str(clip.path) and top == r.top_k and fig is None


def test_predict_long_clip_has_timeline(app, media):
    results, status, json_path = app.predict(upload(app, media["long"]), None, DEFAULT_KEY)
    (r,) = results
    assert r.timeline is not None
    times, scores, labels = r.timeline
    assert len(times) >= 2 and scores.shape == (len(times), len(LABELS)) and labels == LABELS
    assert "timeline" in status
    payload = json.loads(Path(json_path).read_text())
    assert len(payload["windows"]) == len(times)
    _, _, fig = app.show_result(results, r.sha256)
    assert fig is not None and fig.axes[0].get_xlabel() == "time (s)"
    # An explicit window also works on short clips.
    results, _, _ = app.predict(None, [r.sha256], DEFAULT_KEY, window_s=1.0, stride_s=0.5)
    assert len(results[0].payload["windows"]) >= 5


def test_predict_several_and_library(app, media):
    first, _, _ = app.predict([upload(app, media["others"][0])], None, DEFAULT_KEY)
    results, status, json_path = app.predict([upload(app, media["others"][1])], [first[0].sha256], DEFAULT_KEY)
    assert len(results) == 2
    assert isinstance(json.loads(Path(json_path).read_text()), list)
    assert [v for _, v in app.library_choices()] == [c.sha256 for c in reversed(app.store.clips())]
    results, status, json_path = app.predict(None, None, DEFAULT_KEY)
    assert results == [] and json_path is None and "Upload" in status


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_predict_refuses_non_videos_and_stores_nothing(app, media, kind):
    path = upload(app, media[kind], "evil <b>name.mp4")
    results, status, json_path = app.predict([path], None, DEFAULT_KEY)
    assert results == [] and json_path is None
    assert "Refused" in status and "decode" in status and "Traceback" not in status
    assert str(app.store.data_dir) not in status and app._upload_root not in status
    assert app.store.clips() == [] and not Path(path).exists()
    assert [p for p in app.store.clips_dir.rglob("*") if p.is_file()] == []
    assert list(app.store.tmp_dir.iterdir()) == []


def test_upload_limit(tmp_path, weights_dir, media):
    a = make_app(tmp_path / "data", weights_dir=weights_dir, max_upload_mb=0.001)
    a._upload_root = str(tmp_path / "uploads")
    try:
        results, status, _ = a.predict(upload(a, media["long"]), None, DEFAULT_KEY)
        assert results == [] and "upload limit" in status and a.store.clips() == []
    finally:
        a.close()


def test_timeline_figure_and_progress_html():
    import numpy as np

    fig = timeline_figure(np.array([0.5, 1.5, 2.5]), np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]),
                          ["a", "b", "c"], title="t", max_classes=2)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["b", "a"]
    assert progress_html(None) == "" and 'aria-valuenow="50"' in progress_html(0.5, "<b>")
    assert "<b>" not in progress_html(0.5, "<b>")


# ---------------------------------------------------------------------- the pages' callbacks, as wired by build_ui
SKIP = {"__type__": "update"}  # gr.skip(): the output is left as it is


def _noop_progress(*args, **kwargs):
    pass


def _callbacks(app) -> dict:
    """The functions build_ui wires to the page, by name (what the browser's events call)."""
    demo = build_ui(app)
    fns: dict = {}
    for f in demo.fns.values():
        fns.setdefault(f.name, f)
    return fns


def test_predict_page_upload_selects_and_predict_never_wipes(app, media):
    fns = _callbacks(app)
    on_upload, run_predict = fns["on_upload"].fn, fns["run_predict"].fn
    # The wiring: every drop is stored (never skipped while another is stored); the Predict button and the
    # prediction an upload starts are one event, so a click while it runs waits and is then sent afresh.
    assert fns["on_upload"].trigger_mode == "multiple"
    pred = fns["run_predict"]
    assert pred.trigger_mode == "always_last" and pred.concurrency_id == "model" and pred.concurrency_limit == 1
    assert sorted(name for _, name in pred.targets) == ["change", "click"]

    def predict(files, lib, model=DEFAULT_KEY, k=5, win=0, step=0, shown=(), key=None):
        return run_predict(files, lib, model, k, win, step, "ann", list(shown), key, None, _noop_progress)

    # A drop: stored, listed in the library and selected, the upload box emptied, a prediction started.
    path = upload(app, media["others"][0], "arm.mp4")
    lib, box, status, count = on_upload([path], 4, "ann", None)
    (clip,) = app.store.clips()
    assert lib.constructor_args == {"choices": app.library_choices(), "value": [clip.sha256], "multiselect": True}
    assert clip.sha256 in [v for _, v in lib.constructor_args["choices"]]
    assert box is None and count == 5 and status.startswith("Added arm.mp4 to the library")
    assert not Path(path).exists()

    # A Predict click sent before the upload's view arrived: the upload box still named the (now deleted) copy
    # and the library had nothing selected. It predicts the stored clip; nothing is refused.
    results, key, status, pick, vid, top, plot, json_path = predict([path], [])
    assert [r.sha256 for r in results] == [clip.sha256] and "Refused" not in status and "gone" not in status
    assert "arm.mp4: **" in status and "_Model: default" in status and Path(json_path).is_file()
    assert key == app.prediction_key([clip], DEFAULT_KEY, 5, 0, 0) and top == results[0].top_k
    assert (pick.constructor_args["value"], pick.constructor_args["visible"]) == (clip.sha256, False)
    assert len(app.store.clips()) == 1

    # The prediction the upload started, after that click (the same selection, model and options): nothing changes.
    assert predict(None, [clip.sha256], shown=results, key=key) == (SKIP,) * 8
    assert predict([path], [clip.sha256], shown=results, key=key) == (SKIP,) * 8
    assert len(app.store.labels_of(clip)) == 1  # one model suggestion, not one per click

    # Nothing selected while a result is shown (a click with an empty library): the result stays.
    assert predict(None, [], shown=results, key=key) == (SKIP,) * 8
    # Nothing selected and nothing shown: a hint, and the rest left alone.
    out = predict(None, None)
    assert out[2].startswith("Upload a video") and out[:2] + out[3:] == (SKIP,) * 7

    # Other options re-run on the selection.
    results2, key2, status2, *_ = predict(None, [clip.sha256], k=2, shown=results, key=key)
    assert key2 != key and len(results2[0].top_k) == 2 and list(results2[0].top_k) == list(results[0].top_k)[:2]

    # Another model re-runs too (a fine-tuned copy: same weights, so the same scores under its own name).
    shutil.copy(app.models.weights_dir / "default.safetensors", app.store.models_dir / "other.safetensors")
    results3, key3, status3, *_ = predict(None, [clip.sha256], model="finetuned:other.safetensors", k=2,
                                          shown=results2, key=key2)
    assert key3 != key2 and "_Model: other (" in status3 and results3[0].payload["model"].startswith("other (")
    assert results3[0].top_k == pytest.approx(results2[0].top_k, abs=1e-6)

    # Two clips dropped at once: both selected; predicting them shows a picker.
    p1, p2 = upload(app, media["others"][1]), upload(app, media["others"][2])
    lib, _, status, count = on_upload([p1, p2], count, "ann", None)
    shas = lib.constructor_args["value"]
    assert count == 6 and len(shas) == 2 and [c.sha256 for c in app.store.clips()][1:] == shas
    results4, _, _, pick, *_ = predict(None, shas, shown=results3, key=key3)
    assert [r.sha256 for r in results4] == shas and pick.constructor_args["visible"] is True

    # A refused drop: a message by the upload box; the selection, the count and the result are left alone.
    bad = upload(app, media["text"], "notes.mp4")
    lib, box, status, count = on_upload([bad], 6, "ann", None)
    assert "Refused" in status and "notes.mp4" in status and count == SKIP and box is None
    assert lib.constructor_args == {"choices": app.library_choices()}
    # The same upload named again (a stale page) says nothing more and stores nothing.
    assert predict([bad], [], shown=results4, key=None) == (SKIP,) * 8
    assert len(app.store.clips()) == 3


def test_result_pick_ignores_a_stale_choice(app, media):
    fns = _callbacks(app)
    on_pick = fns["on_pick"].fn
    assert [name for _, name in fns["on_pick"].targets] == ["input"]  # a person's pick, not the page's own update
    results, _, _ = app.predict(upload(app, media["short"]), None, DEFAULT_KEY)
    vid, top, plot = on_pick(results, results[0].sha256)
    assert vid == results[0].video and top == results[0].top_k
    assert on_pick(results, "0" * 64) == (SKIP, SKIP, SKIP)  # a choice of a replaced list: nothing happens


def test_label_page_upload_and_save_follow_what_was_shown(app, media):
    fns = _callbacks(app)
    on_label_upload, on_save = fns["on_label_upload"].fn, fns["on_save"].fn
    assert fns["on_label_upload"].trigger_mode == "multiple"
    empty = {"sha": None, "seen": None}

    def label_upload(src, state):
        return on_label_upload([upload(app, src)], state, DEFAULT_KEY, MODEL_LABEL_SET, True, "ann", None,
                               _noop_progress)

    out = label_upload(media["others"][0], empty)
    (e,) = app.store.clips()
    state_e, pick = out[0], out[3]
    assert state_e == {"sha": e.sha256, "seen": None} and "Added 1 clip(s)" in out[8]
    assert out[9] is None and out[10].constructor_args == {"choices": app.library_choices()}
    assert pick.constructor_args["value"] == app.store.model_suggestion(e, DEFAULT_KEY).label
    # Another drop shows f; a Save clicked while e was shown (its state and label sent then) arrives after it.
    out = label_upload(media["others"][1], state_e)
    f = app.store.clips()[1]
    assert out[0]["sha"] == f.sha256
    saved = on_save(state_e, "zoom_in", 0.0, 0.5, "ann", DEFAULT_KEY, MODEL_LABEL_SET, True, None, _noop_progress)
    assert "Saved **zoom\\_in**" in saved[8] and "for o0.mp4" in saved[8]
    assert app.store.current_label(e, include_model=False).label == "zoom_in"
    assert app.store.current_label(f, include_model=False) is None
    # A label picked before the set changed (not in the set sent with it): a message, nothing stored.
    out = on_save({"sha": f.sha256, "seen": None}, "walk", 0.0, 0.0, "ann", DEFAULT_KEY, MODEL_LABEL_SET, True,
                  None, _noop_progress)
    assert out[:8] == (SKIP,) * 8 and "walk is not in the label set" in out[8]
    assert app.store.current_label(f, include_model=False) is None


# ---------------------------------------------------------------------- Label
def _add(app, media, n=3):
    return [app.store.add_clip(p)[0] for p in media["others"][:n]]


def test_label_view_save_and_navigation(app, media):
    clips = _add(app, media)
    first = app.navigate(None, "first_todo")
    assert first == clips[0].sha256
    view = app.clip_view(first, DEFAULT_KEY, MODEL_LABEL_SET)
    assert view["choices"] == LABELS and view["video"] == str(clips[0].path)
    sugg = app.store.model_suggestion(clips[0], DEFAULT_KEY)
    assert sugg is not None and view["value"] == sugg.label  # the suggestion is pre-selected
    assert "Model suggests" in view["suggestion"] and view["seen"] is None
    assert view["start"] == 0 and view["end"] == pytest.approx(clips[0].duration_s)
    # Without suggestions the model is not asked.
    plain = app.clip_view(clips[1].sha256, DEFAULT_KEY, MODEL_LABEL_SET, suggest=False)
    assert plain["value"] is None and app.store.model_suggestion(clips[1]) is None

    msg = app.save_label(first, "zoom_in", 0.2, 0.8, "ann", MODEL_LABEL_SET, view["seen"])
    assert "Saved" in msg and "zoom\\_in" in msg
    rec = app.store.current_label(clips[0], include_model=False)
    assert (rec.label, rec.labeled_by, rec.source, rec.start_s, rec.end_s) == ("zoom_in", "ann", "person", 0.2, 0.8)
    again = app.clip_view(first, DEFAULT_KEY, MODEL_LABEL_SET)
    assert again["value"] == "zoom_in" and (again["start"], again["end"]) == (0.2, 0.8) and again["seen"] == rec.id
    assert "ann" in again["info"]

    # Navigation: next/prev wrap, "todo" skips labelled clips.
    assert app.navigate(first, "next") == clips[1].sha256
    assert app.navigate(first, "prev") == clips[2].sha256
    assert app.navigate(clips[2].sha256, "todo") == clips[1].sha256
    rows = app.queue_rows()
    assert [r[-1] for r in rows] == ["done", "suggested" if app.store.model_suggestion(clips[1]) else "to do", "to do"]
    assert rows[0][3].startswith("zoom_in") and rows[0][4:6] == ["person", "ann"]
    assert "1 of 3" in app.queue_summary()


def test_save_label_errors(app, media):
    (clip,) = _add(app, media, 1)
    for args, match in [((None, "x", 0, 1), "no clip"), ((clip.sha256, None, 0, 1), "pick a label"),
                        ((clip.sha256, "a/b", 0, 1), "slashes"), ((clip.sha256, "ok", 0.9, 0.1), "empty"),
                        (("0" * 64, "ok", 0, 1), "no longer")]:
        with pytest.raises(UIError, match=match):
            app.save_label(*args, who="ann")
    assert app.store.labels_of(clip) == []


def test_concurrent_sessions_keep_their_labels(app, media):
    clips = _add(app, media)
    errors = []

    def session(k: int) -> None:
        try:
            for i in range(8):
                clip = clips[(k + i) % len(clips)]
                view = app.clip_view(clip.sha256, DEFAULT_KEY, MODEL_LABEL_SET, suggest=False)
                app.save_label(clip.sha256, LABELS[(k + i) % 3], None, None, f"user{k}", MODEL_LABEL_SET, view["seen"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = app.store.all_labels()
    assert len(rows) == 32
    for k in range(4):
        mine = [(r.clip_id, r.label) for r in rows if r.labeled_by == f"user{k}"]
        expected = [(clips[(k + i) % 3].id, LABELS[(k + i) % 3]) for i in range(8)]
        assert sorted(mine) == sorted(expected)


def test_concurrent_edit_is_reported(app, media):
    (clip,) = _add(app, media, 1)
    view_a = app.clip_view(clip.sha256, DEFAULT_KEY, MODEL_LABEL_SET, suggest=False)
    view_b = app.clip_view(clip.sha256, DEFAULT_KEY, MODEL_LABEL_SET, suggest=False)
    assert "meanwhile" not in app.save_label(clip.sha256, "pan_left", None, None, "ann", None, view_a["seen"])
    msg = app.save_label(clip.sha256, "pan_right", None, None, "bob", None, view_b["seen"])
    assert "ann" in msg and "meanwhile" in msg
    assert [r.label for r in app.store.labels_of(clip)] == ["pan_right", "pan_left"]


def test_label_sets_and_upload_to_queue(app, media, tmp_path):
    msg, key = app.save_label_set("moves", "walk, run\njump", "ann")
    assert key == "set:moves" and "3 labels" in msg
    assert app.labels_for(key, DEFAULT_KEY) == ["walk", "run", "jump"]
    assert app.labels_for(MODEL_LABEL_SET, DEFAULT_KEY) == LABELS
    assert [v for _, v in app.label_sets(DEFAULT_KEY)] == [MODEL_LABEL_SET, "set:moves"]
    with pytest.raises(UIError):
        app.save_label_set("bad", "a/b", "ann")
    f = tmp_path / "camera moves.txt"
    f.write_text("tilt_up\ntilt_down\n")
    msg, key = app.import_label_set(upload(app, str(f)), "ann")
    assert key == "set:camera moves" and app.labels_for(key, None) == ["tilt_up", "tilt_down"]
    # A clip labelled from a custom set; the model's suggestion is not in it.
    clips, msgs = app.ingest([upload(app, media["others"][0])], "ann")
    view = app.clip_view(clips[0].sha256, DEFAULT_KEY, "set:moves")
    assert view["choices"] == ["walk", "run", "jump"] and view["value"] is None
    assert "not in this label set" in view["suggestion"]
    app.save_label(clips[0].sha256, "jump", None, None, "ann", "set:moves")
    assert app.store.current_label(clips[0]).label_set == "moves"


# ---------------------------------------------------------------------- Dataset
def _labelled(app, media):
    clips = _add(app, media)
    app.store.add_label(clips[0], "pan_left", labeled_by="ann")
    app.store.add_label(clips[1], "zoom_in", labeled_by="bob", start_s=0.2, end_s=0.9)
    app.store.add_label(clips[2], "pan_right", source="model", labeled_by="model:x", score=0.5, model="x")
    return clips


def test_counts(app, media):
    _labelled(app, media)
    assert "**3** clips" in app.counts_markdown() and "**2** labelled" in app.counts_markdown()
    assert app.counts_rows() == [["pan_left", 1, 0], ["pan_right", 0, 1], ["zoom_in", 1, 0]]


def test_export_all_formats(app, media, tmp_path):
    clips = _labelled(app, media)
    path, msg = app.export(EXPORT_FORMATS[0])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["pan_left", "zoom_in"] and "2 labels" in msg
    path, _ = app.export(EXPORT_FORMATS[0], include_model=True)
    assert "pan_right" in Path(path).read_text()
    zpath, _ = app.export(EXPORT_FORMATS[1])
    names = zipfile.ZipFile(zpath).namelist()
    assert "labels.csv" in names and sum(n.startswith("videos/") and n.endswith(".mp4") for n in names) == 2
    zpath, _ = app.export(EXPORT_FORMATS[2])
    names = sorted(n for n in zipfile.ZipFile(zpath).namelist() if not n.endswith("/"))
    assert names == [f"pan_left/{clips[0].short_id}.mp4", f"zoom_in/{clips[1].short_id}.mp4"]
    for p in (zpath,):
        assert Path(p).resolve().is_relative_to(app.store.exports_dir.resolve())
    with pytest.raises(UIError):
        app.export("pdf")


def test_export_nothing_yet(app):
    with pytest.raises(UIError, match="nothing to export"):
        app.export(EXPORT_FORMATS[0])


def test_import_csv_with_videos_and_zips(app, media, tmp_path, weights_dir):
    _labelled(app, media)
    csv_only, _ = app.export(EXPORT_FORMATS[0])
    kin_zip, _ = app.export(EXPORT_FORMATS[1])
    tree_zip, _ = app.export(EXPORT_FORMATS[2])
    for i, (src, videos) in enumerate([(kin_zip, None), (tree_zip, None), ("csv", "videos")]):
        fresh = make_app(tmp_path / f"fresh{i}", weights_dir=weights_dir)
        fresh._upload_root = app._upload_root
        try:
            if src == "csv":
                # The CSV plus its clips, uploaded as separate files (as a browser would).
                work = tmp_path / "unz"
                zipfile.ZipFile(kin_zip).extractall(work)
                vids = [upload(fresh, str(p)) for p in sorted((work / "videos").iterdir())]
                msg = fresh.import_labels(upload(fresh, str(work / "labels.csv")), vids, "imported", "carol")
                assert fresh.store.get_label_set("imported").labels == ["pan_left", "zoom_in"]
            else:
                msg = fresh.import_labels(upload(fresh, src), None, "", "carol")
            assert "2 labels imported" in msg, msg
            assert sorted(r.label for r in fresh.store.current_labels().values()) == ["pan_left", "zoom_in"]
        finally:
            fresh.close()
    # The CSV alone into the store it came from: everything is already there.
    msg = app.import_labels(upload(app, csv_only), None, None, "ann")
    assert "0 labels imported" in msg and "2 already present" in msg
    with pytest.raises(UIError, match="choose a CSV"):
        app.import_labels(None, None, None, "ann")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK not really")
    with pytest.raises(UIError, match="zip"):
        app.import_labels(upload(app, str(bad)), None, None, "ann")


def test_import_zip_cannot_escape(app, media, tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
        zf.writestr("/abs.txt", "x")
        zf.writestr("cls/../../../escaped2.mp4", "x")
    msg = app.import_labels(upload(app, str(evil)), None, None, "ann")
    assert "0 labels imported" in msg
    assert not list(tmp_path.rglob("escaped*")) and not Path("/abs.txt").exists()


def test_finetune_checks(app, media):
    with pytest.raises(UIError, match="at least 2 different labels"):
        app.start_finetune(DEFAULT_KEY, next(iter(FINETUNE_MODES)), 1, "ft", "ann")
    _labelled(app, media)
    for name in ["../evil", "", ".hidden", "a b"]:
        with pytest.raises(UIError, match="model name"):
            app.start_finetune(DEFAULT_KEY, next(iter(FINETUNE_MODES)), 1, name, "ann")
    (app.store.models_dir / "taken.safetensors").write_bytes(b"x")
    with pytest.raises(UIError, match="exists already"):
        app.start_finetune(DEFAULT_KEY, next(iter(FINETUNE_MODES)), 1, "taken", "ann")
    assert app.finetune_status()[1] is None and app.cancel_finetune() == "No fine-tune is running."


@pytest.mark.slow
def test_finetune_in_background_registers_weights(app, media):
    clips = _labelled(app, media)
    msg = app.start_finetune(DEFAULT_KEY, next(iter(FINETUNE_MODES)), 2, "mine", "ann")
    assert "Started" in msg
    with pytest.raises(UIError, match="running already"):
        app.start_finetune(DEFAULT_KEY, next(iter(FINETUNE_MODES)), 2, "second", "ann")
    job = app.finetuner.wait(timeout=240)
    status, frac, running = app.finetune_status()
    assert job.state == "done", (job.message, job.log_path.read_text()[-2000:])
    assert not running and frac == 1.0 and "done" in status and job.step == job.total_steps > 0
    key = "finetuned:mine.safetensors"
    choice = app.models.get(key)
    # Both labels are classes of the base model, so its class list (and head) are kept.
    assert choice.labels == LABELS and choice.model_name == TINY and choice.kind == "finetuned"
    cfg = (job.job_dir / "config.yaml").read_text()
    assert "freeze_backbone: true" in cfg and "source: folder" in cfg
    results, _, _ = app.predict(None, [clips[0].sha256], key)
    assert results and results[0].top1 in LABELS


# ---------------------------------------------------------------------- Gradio wiring and the CLI
def test_build_ui_constructs_blocks(app):
    import gradio as gr

    demo = build_ui(app)
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for needed in ("upload", "top-labels", "predict-status", "save-btn", "label-pick", "export-btn", "ft-start",
                   "notice", "timeline", "queue"):
        assert needed in ids


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_help_and_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    assert "--max-upload-mb" in capsys.readouterr().out
    cases = [
        (["--auth", "nopassword"], "USER:PASSWORD"),
        (["--auth", ":pw"], "USER:PASSWORD"),
        (["--weights", tmp_path / "missing.safetensors"], "no such weights"),
        (["--weights", __file__], ".safetensors"),
    ]
    for extra, msg in cases:
        code, out, err = run_cli(capsys, "serve", "--data-dir", tmp_path / "d", "--port", free_port(), *extra)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        code, _, err = run_cli(capsys, "serve", "--data-dir", tmp_path / "d", "--port", busy.getsockname()[1])
        assert code == 2 and "cannot listen" in err
    finally:
        busy.close()
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "70000"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["serve", "--max-upload-mb", "0"])
    assert info.value.code == 2


@pytest.mark.slow
def test_serve_loopback_auth_and_upload_limit(tmp_path, media):
    """A real `videoapp serve`: listens on 127.0.0.1 only, needs the login, enforces the upload limit."""
    import httpx

    with videoapp_serve(tmp_path, "--data-dir", tmp_path / "data", "--auth", "ann:s3cret",
                        "--max-upload-mb", "0.01") as served:
        # Only the loopback address listens (Linux: /proc/net/tcp{,6}).
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if os.path.exists(table):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    addr, hexport = local.rsplit(":", 1)
                    if int(hexport, 16) == served.port and state == "0A":
                        listening.append(addr)
        if listening:
            assert listening == ["0100007F"], listening
        with httpx.Client(base_url=served.url, timeout=10) as client:
            small = ("small.bin", b"x" * 1000)
            assert client.post("/gradio_api/upload", files={"files": small}).status_code == 401  # not logged in
            assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
            assert client.post("/login", data={"username": "ann", "password": "s3cret"}).status_code == 200
            assert client.post("/gradio_api/upload", files={"files": small}).status_code == 200
            big = ("long.mp4", Path(media["long"]).read_bytes() * 3)
            assert len(big[1]) > 0.01 * 2**20
            assert client.post("/gradio_api/upload", files={"files": big}).status_code == 413
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text, text[-2000:]
    assert "http://127.0.0.1:" in text


def test_catalog_weights_option_is_selected(tmp_path, weights_dir):
    other = tmp_path / "mine.safetensors"
    shutil.copy(weights_dir / "default.safetensors", other)
    cat = ModelCatalog(weights_dir, tmp_path / "models", extra=other)
    assert cat.default_key() == "file:mine.safetensors"
    assert [c.key for c in cat.choices()] == [DEFAULT_KEY, "file:mine.safetensors"]
    same = ModelCatalog(weights_dir, tmp_path / "models", extra=weights_dir / "default.safetensors")
    assert same.default_key() == DEFAULT_KEY and len(same.choices()) == 1
    (tmp_path / "models").mkdir()
    shutil.copy(weights_dir / "default.safetensors", tmp_path / "models" / "tuned.safetensors")
    (tmp_path / "models" / "broken.safetensors").write_bytes(b"not weights")
    assert [c.key for c in cat.choices()][-1] == "finetuned:tuned.safetensors"  # the broken file is skipped


# ---------------------------------------------------------------------- Label page: person boxes
def test_box_labelling_draw_adjust_delete_and_export(app, media):
    from videoapp.data.ava import read_ava_csv, read_label_map
    from videoapp.data.video import VideoReader

    (clip,), _ = app.ingest(upload(app, media["long"]), "ann")  # 96 x 72, 30 fps
    value, t, msg = app.keyframe(clip.sha256, 1.01)
    assert t == 1.0 and value["boxes"] == [] and "0 boxes" in msg  # the nearest frame's own time
    with VideoReader(clip.path) as r:
        assert (value["image"] == r.get_frames([30])[0]).all()
    drawn = {"xmin": 12.0, "ymin": 9.0, "xmax": 48.0, "ymax": 63.0, "label": "person"}
    msg = app.save_boxes(clip.sha256, t, {"image": value["image"], "boxes": [drawn]}, ["walk", "wave"], "ann")
    assert "1 new (walk, wave)" in msg
    (b,) = app.store.boxes_of(clip)
    assert b.box == (12 / 96, 9 / 72, 48 / 96, 63 / 72) and b.timestamp_s == 1.0
    assert b.actions == ("walk", "wave") and b.source == "person" and b.labeled_by == "ann"
    assert app.box_rows(clip.sha256) == [[b.id, 1.0, 0.125, 0.125, 0.5, 0.875, "walk, wave", "person", "ann"]]

    # Shown again: the stored box in pixels, named by its id; unchanged -> nothing stored.
    value, t, _ = app.keyframe(clip.sha256, 1.0)
    assert value["boxes"] == [{"xmin": 12.0, "ymin": 9.0, "xmax": 48.0, "ymax": 63.0, "label": f"#{b.id}"}]
    assert app.save_boxes(clip.sha256, t, value, [], "bob") == "Nothing changed on this keyframe."
    # Adjusted by another person: a new version keeping the actions; the old one stays in the history.
    value["boxes"][0]["xmax"] = 60.0
    assert "1 changed" in app.save_boxes(clip.sha256, t, value, [], "bob")
    (b2,) = app.store.boxes_of(clip)
    assert b2.box == (12 / 96, 9 / 72, 60 / 96, 63 / 72) and b2.actions == ("walk", "wave") and b2.labeled_by == "bob"
    assert [h.id for h in app.store.box_history(b2.id)] == [b.id, b2.id]
    value = app.keyframe(clip.sha256, t)[0]
    value["boxes"][0]["ymin"] = 0.0  # moved with an action ticked: the box takes the ticked actions
    app.save_boxes(clip.sha256, t, value, ["run"], "bob")
    (b3,) = app.store.boxes_of(clip)
    assert b3.box == (12 / 96, 0.0, 60 / 96, 63 / 72) and b3.actions == ("run",)
    # Removed from the drawing: deleted.
    assert "1 deleted" in app.save_boxes(clip.sha256, t, {"image": value["image"], "boxes": []}, [], "bob")
    assert app.store.boxes_of(clip) == []

    # Two boxes on another keyframe, then the AVA export: one row per (box, action).
    value, t, _ = app.keyframe(clip.sha256, 2.5)
    two = [dict(drawn), {"xmin": 50.0, "ymin": 0.0, "xmax": 96.0, "ymax": 72.0, "label": "person"}]
    app.save_boxes(clip.sha256, t, {"image": value["image"], "boxes": two[:1]}, ["walk"], "ann")
    app.save_boxes(clip.sha256, t, {"image": value["image"], "boxes": app.keyframe(clip.sha256, t)[0]["boxes"]
                                    + two[1:]}, ["sit"], "ann")
    files, msg = app.export_boxes()
    assert "Exported 2 rows" in msg
    csv_path, map_path = files
    names = read_label_map(map_path)
    rows = read_ava_csv(csv_path, "groundtruth")
    assert [(r.video_id, float(r.timestamp), r.box, names[r.action_id]) for r in rows] == [
        (clip.sha256[:16], 2.5, (12 / 96, 9 / 72, 48 / 96, 63 / 72), "walk"),
        (clip.sha256[:16], 2.5, (50 / 96, 0.0, 1.0, 1.0), "sit")]


def test_box_labelling_errors(app, media):
    with pytest.raises(UIError, match="open a clip"):
        app.keyframe(None, 0)
    (clip,), _ = app.ingest(upload(app, media["short"]), "ann")
    with pytest.raises(UIError, match="show a keyframe"):
        app.save_boxes(clip.sha256, 0.0, None, ["walk"], "ann")
    value, t, _ = app.keyframe(clip.sha256, 0)
    bad = {"image": value["image"], "boxes": [{"xmin": 40, "ymin": 10, "xmax": 20, "ymax": 50, "label": "person"}]}
    with pytest.raises(UIError):  # x1 > x2: the store refuses it, nothing is kept
        app.save_boxes(clip.sha256, t, bad, ["walk"], "ann")
    assert app.store.boxes_of(clip) == []
    with pytest.raises(UIError, match="no person box with an action"):
        app.export_boxes()


def test_cli_and_ui_share_the_untrained_fallback(tmp_path, media, monkeypatch, capsys):
    import videoapp.ui.catalog as catalog

    made = []

    def spy(*args, **kwargs):
        made.append(catalog_untrained(*args, **kwargs))
        return made[-1]

    catalog_untrained = catalog.untrained_model
    monkeypatch.setattr("videoapp.weights.default_weights", lambda: None)
    monkeypatch.setattr(catalog, "untrained_model", spy)
    code = main(["predict", media["short"], "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and "UNTRAINED" in err and "untrained_" in out
    (cli_model,) = made
    ui_model = ModelCatalog(tmp_path / "none", tmp_path / "models").predictor(UNTRAINED_KEY).model
    assert cli_model.pretrained_cfg.labels == ui_model.pretrained_cfg.labels == tuple(f"untrained_{i}" for i in range(10))
    for (n1, a), (n2, b) in zip(cli_model.state_dict().items(), ui_model.state_dict().items()):
        assert n1 == n2 and torch.equal(a.cpu(), b.cpu())


def test_box_callbacks_save_to_the_keyframe_shown(app, media):
    fns = _callbacks(app)
    on_show, on_save = fns["on_box_show"].fn, fns["on_box_save"].fn

    class Req:
        username = None

    (a,), _ = app.ingest(upload(app, media["long"]), "ann")
    (b,), _ = app.ingest(upload(app, media["others"][0]), "ann")
    msg = on_save({"sha": None, "t": None}, None, [], "ann", Req())[2]
    assert msg.startswith("**Error:**") and "show a keyframe" in msg
    shown, value, t, actions, msg, rows = on_show({"sha": a.sha256, "seen": None}, 2.0, MODEL_LABEL_SET, DEFAULT_KEY)
    assert shown == {"sha": a.sha256, "t": 2.0} and actions.choices and rows is None
    assert [c[0] for c in actions.choices] == LABELS
    value["boxes"] = [{"xmin": 0.0, "ymin": 0.0, "xmax": 48.0, "ymax": 36.0, "label": "person"}]
    # The Label page has moved on to clip b meanwhile: the save is still about the keyframe shown.
    _, _, msg, rows = on_save(shown, value, ["zoom_in"], "ann", Req())
    assert "1 new (zoom\\_in)" in msg and rows[0][1:] == [2.0, 0.0, 0.0, 0.5, 0.5, "zoom_in", "person", "ann"]
    assert app.store.boxes_of(b) == [] and [x.box for x in app.store.boxes_of(a)] == [(0.0, 0.0, 0.5, 0.5)]
