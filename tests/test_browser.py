"""The web UI in a real browser: Debian's chromium, headless, driven by Playwright.

Starts ``videoapp serve`` on a free loopback port with a fresh data folder,
uploads a generated camera-motion clip, checks the predicted label the page
shows against the result JSON it offers, checks that a non-video upload is
refused with a message (and not stored), saves a label on the Label page,
exports the Kinetics CSV on the Dataset page and checks the downloaded file.
Then the Predict and Label pages under natural use, on the same server: drop
then click at once, click twice, drop two clips at once, upload while the
server works, change the model, reload in the middle; no error toast, and the
SQLite store holds each clip once. Then the Detect page (upload, box file, detector weights, keyframes, overlay,
the AVA CSV, checked against a direct DetectionPredictor call) and a person box drawn with the mouse on the Label
page, saved and exported as AVA CSV.
Screenshots are taken on every run; they replace the README's PNGs in
``docs/screenshots/`` only with ``VIDEOAPP_UPDATE_SCREENSHOTS=1`` (so a test
run never dirties the work tree), otherwise they go to a temporary folder.

Never downloads a browser: without ``/usr/bin/chromium`` (``apt-get install
chromium``; ``.ci/run`` does it) the test is skipped and says why.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
import shutil
from pathlib import Path

import pytest

from servers import videoapp_serve

CHROMIUM = os.environ.get("VIDEOAPP_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run the browser test",
                allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("the playwright Python package is not installed (pip install -e '.[test]')", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
TMP_SHOTS = Path(tempfile.gettempdir()) / "videoapp-screenshots"
SHOTS = REPO / "docs" / "screenshots" if os.environ.get("VIDEOAPP_UPDATE_SCREENSHOTS") == "1" else TMP_SHOTS
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP_MS = 90_000  # one step of the page (prediction on a loaded 2-core machine included)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from videoapp.data.synthetic import camera_motion_sequence, write_video

    frames, _ = camera_motion_sequence(["pan_right", "zoom_in"], seconds_each=1.5, fps=30.0, height=240, width=320)
    return write_video(tmp_path_factory.mktemp("clip") / "camera_moves.mp4", frames, fps=30.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data_dir = root / "data"
    with videoapp_serve(root, "--data-dir", data_dir) as served:
        yield {"url": served.url, "data_dir": data_dir, "root": root, "served": served}


def _shot(page, name: str, folder: Path = SHOTS) -> Path:
    """A full-page screenshot, colour-quantised so the PNG stays small."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=True)
    with Image.open(raw) as img:
        img.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    raw.unlink()
    return path


def _wait_text(page, selector: str, text: str) -> str:
    page.wait_for_function(
        "([sel, text]) => { const el = document.querySelector(sel); return el && el.innerText.includes(text); }",
        arg=[selector, text], timeout=STEP_MS)
    return page.inner_text(selector)


def test_predict_label_export_in_chromium(server, clip, tmp_path):
    from videoapp.store import LabelStore

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 900}, accept_downloads=True)
        try:
            page = ctx.new_page()
            page.goto(server["url"], timeout=STEP_MS)
            page.wait_for_selector("#upload input[type=file]", state="attached", timeout=STEP_MS)

            # Predict: upload -> stored, predicted, shown with a timeline and a JSON to download.
            page.set_input_files("#upload input[type=file]", str(clip))
            status = _wait_text(page, "#predict-status", "camera_moves.mp4")
            assert "timeline" in status
            page.wait_for_selector("#timeline img, #timeline canvas, #timeline svg", timeout=STEP_MS)
            with page.expect_download(timeout=STEP_MS) as dl:
                page.click("#result-json a")
            result = json.loads(Path(dl.value.path()).read_text())
            top1 = result["top_k"][0]["label"]
            assert result["video"] == "camera_moves.mp4" and len(result["windows"]) >= 2
            shown = page.inner_text("#top-labels")
            assert top1 in shown.splitlines()[:3], shown
            page.wait_for_timeout(800)  # let the video element paint its first frame
            _shot(page, "predict.png")

            # A text file named .mp4 is refused in the page, and nothing is stored for it.
            bogus = tmp_path / "not a video.mp4"
            bogus.write_text("hello, I am text\n")
            page.set_input_files("#upload input[type=file]", str(bogus))
            status = _wait_text(page, "#upload-status", "Refused")
            assert "not a video.mp4" in status and "decode" in status
            assert "Traceback" not in page.inner_text("body")
            store = LabelStore(server["data_dir"])
            assert [c.original_name for c in store.clips()] == ["camera_moves.mp4"]
            leftovers = [p for p in (server["root"] / "gradio").rglob("*") if p.is_file() and "not a video" in p.name]
            assert leftovers == [], leftovers  # not even Gradio's temporary copy of the upload is kept

            # Label: the model's suggestion is pre-selected; a person confirms it.
            page.get_by_role("tab", name="Label").click()
            _wait_text(page, "#label-info", "Clip 1 of 1")
            _wait_text(page, "#suggestion", "Model suggests")
            page.locator("#who").locator("input, textarea").first.fill("browser-test")
            page.wait_for_timeout(300)
            _shot(page, "label.png")
            page.click("#save-btn")
            saved = _wait_text(page, "#label-status", "Saved")
            assert "browser-test" in saved
            _wait_text(page, "#queue", "done")
            (label,) = store.current_labels().values()
            assert (label.source, label.labeled_by) == ("person", "browser-test")
            assert label.label == top1  # the suggestion was the whole-clip top-1

            # Dataset: export the Kinetics CSV and check the downloaded file.
            page.get_by_role("tab", name="Dataset").click()
            _wait_text(page, "#counts", "labelled by a person")
            page.click("#export-btn")
            _wait_text(page, "#export-status", "Exported 1 label as a Kinetics CSV")
            with page.expect_download(timeout=STEP_MS) as dl:
                page.click("#export-file a")
            assert dl.value.suggested_filename == "labels.csv"
            csv_path = tmp_path / "labels.csv"
            shutil.copy(dl.value.path(), csv_path)
            with open(csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == 1
            row = rows[0]
            assert (row["label"], row["source"], row["labeled_by"], row["split"]) == (top1, "person", "browser-test", "train")
            assert row["sha256"] == store.clips()[0].sha256 and row["youtube_id"] == row["sha256"][:16]
            assert (row["time_start"], row["time_end"]) == ("0", "3")
            _shot(page, "dataset.png")
        finally:
            ctx.close()
    assert "Traceback" not in server["served"].log_text()


# ---------------------------------------------------------------------------------------------------------------------
# The Predict and Label pages under natural use: a person drops files and clicks while the server works. Each flow
# must end with the page showing what was asked for, no Gradio error toast, and every clip stored exactly once.

# Every toast the page shows, even briefly, is kept in window.__toasts (a reload empties it: read it before).
TOAST_WATCH = """
window.__toasts = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.toast-body, .toast-item')) {
    const text = el.innerText.trim();
    if (text && !window.__toasts.includes(text)) window.__toasts.push(text);
  }
}).observe(document, {childList: true, subtree: true});
"""
# True once no event has been pending, running or uploading for 1.5 s (polls every 200 ms).
IDLE = """() => {
  const busy = document.querySelector('.pending, .generating, .eta-bar, .uploading');
  const now = Date.now();
  if (busy || window.__busy_at === undefined) { window.__busy_at = busy ? now : now - 200; return false; }
  return now - window.__busy_at > 1500;
}"""
RUNNING = "() => !!document.querySelector('#predict-status .pending, #predict-status .eta-bar')"


@pytest.fixture(scope="module")
def flow_clips(tmp_path_factory) -> dict[str, Path]:
    """Tiny clips with different bytes (1-1.5 s, 64x48): a-d for the Predict page, e-j for the Label page."""
    from videos import write_test_video

    d = tmp_path_factory.mktemp("flow-clips")
    return {c: Path(write_test_video(d / f"{c}.mp4", num_frames=30 + 2 * i, fps=30, width=64, height=48))
            for i, c in enumerate("abcdefghij")}


def _stored(data_dir: Path) -> list[str]:
    """Names of the clips in the SQLite store, sorted; fails when a clip's bytes (or, as every test clip has its own
    bytes, a name) are stored more than once."""
    import sqlite3

    from videoapp.store import DB_NAME

    with contextlib.closing(sqlite3.connect(data_dir / DB_NAME)) as conn:
        rows = conn.execute("SELECT sha256, original_name FROM clips").fetchall()
    shas = [r[0] for r in rows]
    assert len(shas) == len(set(shas)), rows
    names = sorted(r[1] for r in rows)
    assert len(names) == len(set(names)), rows
    return names


def _settle(page) -> None:
    page.evaluate("() => { delete window.__busy_at; }")
    page.wait_for_function(IDLE, polling=200, timeout=STEP_MS)


def _toasts(page) -> list[str]:
    return page.evaluate("window.__toasts || []")


def _open_page(ctx, url: str):
    page = ctx.new_page()
    page.add_init_script(TOAST_WATCH)
    page.goto(url, timeout=STEP_MS)
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=STEP_MS)
    _settle(page)
    return page


def _choose(page, elem_id: str, text: str) -> None:
    """Pick the option containing ``text`` in the dropdown ``#elem_id`` with the keyboard, as a person may: type to
    filter, arrow down to the first match, Enter. (Gradio's option list re-renders too often for a mouse click.)"""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(text)
    page.wait_for_selector("li[data-testid=dropdown-option]", timeout=STEP_MS)
    box.press("ArrowDown")
    box.press("Enter")
    page.click("h1")  # closes the list


def _options(page, elem_id: str) -> list[str]:
    """The texts of the options the dropdown ``#elem_id`` offers (opens it, then closes it)."""
    page.click(f"#{elem_id} input")
    page.wait_for_selector("li[data-testid=dropdown-option]", timeout=STEP_MS)
    texts = page.locator("li[data-testid=dropdown-option]").all_inner_texts()
    page.click("h1")
    return [t.replace("✓", "").strip() for t in texts]


def _set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def _launch(p, tmp_path):
    return p.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1200, "height": 900}, accept_downloads=True)


def test_predict_page_natural_use(server, flow_clips, tmp_path):
    c = flow_clips
    up = "#upload input[type=file]"
    before = _stored(server["data_dir"])  # the clips of the tests above (the same server)
    with sync_playwright() as p:
        ctx = _launch(p, tmp_path)
        try:
            page = _open_page(ctx, server["url"])

            # Drop a clip, then click Predict at once: the clip is stored, listed, selected and predicted.
            page.set_input_files(up, str(c["a"]))
            page.click("#predict-btn")
            _wait_text(page, "#predict-status", "a.mp4:")
            _settle(page)
            assert "Added a.mp4 to the library" in page.inner_text("#upload-status")
            assert page.inner_text("#library").count("a.mp4 ·") == 1  # the selected clip's token
            status, top = page.inner_text("#predict-status"), page.inner_text("#top-labels")
            assert "Refused" not in status and "gone" not in status and "Upload a video" not in status
            assert _stored(server["data_dir"]) == sorted(before + ["a.mp4"])

            # Predict twice on the same selection: the result stays (not wiped, not an error).
            page.click("#predict-btn")
            page.click("#predict-btn")
            _settle(page)
            assert (page.inner_text("#predict-status"), page.inner_text("#top-labels")) == (status, top)

            # Drop two clips at once: both selected and predicted, a picker for the result shown.
            page.set_input_files(up, [str(c["b"]), str(c["c"])])
            _wait_text(page, "#predict-status", "c.mp4:")
            _settle(page)
            status = page.inner_text("#predict-status")
            assert "b.mp4:" in status and "a.mp4" not in status
            lib = page.inner_text("#library")
            assert "b.mp4 ·" in lib and "c.mp4 ·" in lib and "a.mp4 ·" not in lib
            assert page.is_visible("#result-pick")
            _choose(page, "result-pick", "c.mp4")
            _settle(page)

            # Upload while a prediction runs (short timeline windows make it take a while): the new clip is stored
            # and selected at once, and predicted after the running prediction.
            page.click("#options")
            _set_number(page, "window", 0.2)
            _set_number(page, "stride", 0.1)
            page.click("#predict-btn")
            page.wait_for_function(RUNNING, timeout=STEP_MS)
            page.set_input_files(up, str(c["d"]))
            _wait_text(page, "#upload-status", "Added d.mp4")
            _wait_text(page, "#predict-status", "d.mp4:")
            _settle(page)
            status = page.inner_text("#predict-status")
            assert "b.mp4" not in status and "timeline of" in status
            _set_number(page, "window", 0)
            _set_number(page, "stride", 0)

            # Change the model and predict again: the same clip, the other model's result.
            _choose(page, "model", "camera_hiera_xxs")
            _settle(page)
            assert page.inner_text("#predict-status") == status  # a new model alone does not clear the result
            page.click("#predict-btn")
            _wait_text(page, "#predict-status", "Model: camera_hiera_xxs")
            _settle(page)
            assert "d.mp4:" in page.inner_text("#predict-status")

            # Reload the page in the middle of a prediction: the new page lists every clip once and predicts.
            _set_number(page, "window", 0.2)
            _set_number(page, "stride", 0.1)
            page.click("#predict-btn")
            page.wait_for_function(RUNNING, timeout=STEP_MS)
            assert _toasts(page) == []
            page.reload(timeout=STEP_MS)
            page.wait_for_selector("#upload input[type=file]", state="attached", timeout=STEP_MS)
            _settle(page)
            listed = _options(page, "library")
            assert sorted(t.split(" ·")[0] for t in listed) == sorted(before + ["a.mp4", "b.mp4", "c.mp4", "d.mp4"])
            _choose(page, "library", "a.mp4")
            page.click("#predict-btn")
            _wait_text(page, "#predict-status", "a.mp4:")
            _settle(page)
            assert _toasts(page) == []
            _shot(page, "predict-flows.png", TMP_SHOTS)  # not one of the README's
        finally:
            ctx.close()
    assert _stored(server["data_dir"]) == sorted(before + ["a.mp4", "b.mp4", "c.mp4", "d.mp4"])
    assert "Traceback" not in server["served"].log_text()


def test_label_page_upload_natural_use(server, flow_clips, tmp_path):
    from videoapp.store import LabelStore

    c = flow_clips
    up = "#label-upload input[type=file]"
    before = _stored(server["data_dir"])
    store = LabelStore(server["data_dir"])

    def clip(letter: str):
        (found,) = [x for x in store.clips() if x.original_name == f"{letter}.mp4"]
        return found

    with sync_playwright() as p:
        ctx = _launch(p, tmp_path)
        try:
            page = _open_page(ctx, server["url"])
            page.get_by_role("tab", name="Label").click()
            _settle(page)
            page.click("#label-add")  # opens "Add clips to the queue"
            page.wait_for_selector(up, state="attached", timeout=STEP_MS)

            # A dropped clip is stored, shown (the model's suggestion pre-selected) and listed in the queue.
            page.set_input_files(up, str(c["e"]))
            _wait_text(page, "#label-info", "e.mp4")
            _settle(page)
            assert "Added 1 clip(s) to the queue" in page.inner_text("#label-status")
            assert "Model suggests" in page.inner_text("#suggestion")

            # Drop a clip, then click Save at once: the label is the one of the clip shown when clicking (e).
            # (dispatch_event: the click lands on the button even while f's view re-lays the page out)
            page.set_input_files(up, str(c["f"]))
            page.locator("#save-btn").dispatch_event("click")
            _wait_text(page, "#queue", "f.mp4")
            _settle(page)
            label_e = store.current_label(clip("e"), include_model=False)
            assert label_e is not None and label_e.labeled_by == "anonymous", page.inner_text("#label-status")
            assert store.current_label(clip("f"), include_model=False) is None

            # Click Skip twice: one clip further or two, never an error.
            page.click("#skip-btn")
            page.click("#skip-btn")
            _settle(page)
            assert "Clip " in page.inner_text("#label-info") and "Error" not in page.inner_text("#label-status")

            # Drop two clips at once: both stored and queued, the first shown.
            page.set_input_files(up, [str(c["g"]), str(c["h"])])
            _wait_text(page, "#label-status", "Added 2 clip(s) to the queue")
            _settle(page)
            assert "g.mp4" in page.inner_text("#label-info")
            queue = page.inner_text("#queue")
            assert "g.mp4" in queue and "h.mp4" in queue

            # Upload while the model works: a new model recomputes the shown clip's suggestion; i is dropped meanwhile.
            _choose(page, "model", "camera_hiera_xxs")
            page.set_input_files(up, str(c["i"]))
            _wait_text(page, "#queue", "i.mp4")
            _settle(page)
            # ...and the suggestion shown is the new model's.
            shown = next(x for x in store.clips() if f"· {x.original_name} ·" in page.inner_text("#label-info"))
            sugg = store.model_suggestion(shown, "shipped:camera_hiera_xxs.safetensors")
            assert sugg is not None and f"Model suggests {sugg.label}" in page.inner_text("#suggestion")

            # Reload in the middle of an upload, then drop the same clip again: it is stored once.
            page.set_input_files(up, str(c["j"]))
            assert _toasts(page) == []
            page.reload(timeout=STEP_MS)
            page.wait_for_selector("#upload input[type=file]", state="attached", timeout=STEP_MS)
            page.get_by_role("tab", name="Label").click()
            _settle(page)
            page.click("#label-add")
            page.set_input_files(up, str(c["j"]))
            _wait_text(page, "#label-info", "j.mp4")
            _settle(page)

            # The Predict page's library lists every clip once.
            page.get_by_role("tab", name="Predict").click()
            listed = _options(page, "library")
            assert sorted(t.split(" ·")[0] for t in listed) == sorted(before + [f"{x}.mp4" for x in "efghij"])
            assert _toasts(page) == []
        finally:
            ctx.close()
    assert _stored(server["data_dir"]) == sorted(before + [f"{x}.mp4" for x in "efghij"])
    assert "Traceback" not in server["served"].log_text()


# ---------------------------------------------------------------------------------------------------------------------
# The Detect page: upload a clip, a box file and detector weights (no detector ships in the test), detect, see the
# keyframes and the overlay, and download the AVA CSV: exactly the rows a direct DetectionPredictor call gives.
DETECT_BOXES = "people,1,0.1,0.2,0.5,0.9,-1,0.95\npeople,2,0.2,0.1,0.7,0.95,-1,0.99\npeople,2,0.6,0.3,0.9,0.8,-1,0.9\n"


def test_detect_page_with_a_box_file_in_chromium(server, tmp_path):
    import io

    import torch

    from videoapp.data.ava import write_ava_csv
    from videoapp.engine.detect import DetectionPredictor, read_person_boxes
    from videoapp.models import create_model
    from videoapp.weights import save_weights
    from videos import write_test_video

    torch.manual_seed(0)
    model = create_model("mvitv2_xxs_8x64_ava", num_classes=3)
    weights = save_weights(tmp_path / "tiny_detector.safetensors", model.state_dict(),
                           {"model": "mvitv2_xxs_8x64_ava", **model.pretrained_cfg.data_config(), "labels": ["stand", "walk", "wave"]})
    clip = write_test_video(tmp_path / "people.mp4", num_frames=75, fps=25, width=160, height=120)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(DETECT_BOXES)
    expected = io.StringIO()
    write_ava_csv(expected, DetectionPredictor(weights).detect(clip, boxes=read_person_boxes(boxes),
                                                               progress=False).rows(0.0))
    with sync_playwright() as p:
        ctx = _launch(p, tmp_path)
        try:
            page = _open_page(ctx, server["url"])
            page.get_by_role("tab", name="Detect").click()
            page.wait_for_selector("#det-upload input[type=file]", state="attached", timeout=STEP_MS)
            assert ("Detector weights needed" in page.inner_text("#det-weights-notice")
                    or "shipped" in page.inner_text("#det-weights-notice"))
            page.set_input_files("#det-upload input[type=file]", str(clip))
            _wait_text(page, "#det-status", "Added people.mp4")
            page.set_input_files("#det-boxes input[type=file]", str(boxes))
            _wait_text(page, "#det-boxes", "boxes.csv")
            page.set_input_files("#det-weights input[type=file]", str(weights))
            _wait_text(page, "#det-weights", "tiny_detector.safetensors")
            _settle(page)
            page.click("#det-btn")
            status = _wait_text(page, "#det-status", "rows in the CSV")
            assert "2 keyframes, 3 boxes" in status, status
            page.wait_for_function("() => document.querySelectorAll('#det-gallery img').length >= 2",
                                   timeout=STEP_MS)
            page.wait_for_selector("#det-video video", timeout=STEP_MS)
            with page.expect_download(timeout=STEP_MS) as dl:
                page.click("#det-csv a")
            assert Path(dl.value.path()).read_text() == expected.getvalue()
            assert _toasts(page) == []
            _shot(page, "detect.png")
        finally:
            ctx.close()
    assert "Traceback" not in server["served"].log_text()


def test_label_page_draw_a_box_and_export_in_chromium(server, tmp_path):
    """Draw a person box on a keyframe with the mouse, tick an action, save, export the AVA CSV: the CSV holds the
    box the store keeps (exact coordinates), at the keyframe shown, with the ticked action's id in the label map."""
    from videoapp.data.ava import read_ava_csv, read_label_map
    from videoapp.store import LabelStore
    from videos import write_test_video

    # Not the Detect test's bytes: the store keeps a clip once, under its first name.
    clip = write_test_video(tmp_path / "boxes_clip.mp4", num_frames=80, fps=25, width=160, height=120)
    with sync_playwright() as p:
        ctx = _launch(p, tmp_path)
        try:
            page = _open_page(ctx, server["url"])
            page.get_by_role("tab", name="Label").click()
            _settle(page)
            page.click("#label-add")
            page.set_input_files("#label-upload input[type=file]", str(clip))
            _wait_text(page, "#label-info", "boxes_clip.mp4")
            _settle(page)
            page.click("#boxes-section")
            _set_number(page, "box-time", 1)
            page.click("#box-show")
            _wait_text(page, "#box-status", "Keyframe 1 s of boxes_clip.mp4")
            canvas = page.locator("#box-annotator canvas").first
            canvas.wait_for(timeout=STEP_MS)
            page.click("#box-annotator button[aria-label='Create box']")
            bb = canvas.bounding_box()
            cx, cy = bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2
            page.mouse.move(cx - 30, cy - 40)
            page.mouse.down()
            page.mouse.move(cx + 30, cy + 40, steps=10)
            page.mouse.up()
            action = page.locator("#box-actions label").first
            ticked = action.inner_text().strip()
            action.click()
            _settle(page)
            page.click("#box-save")
            _wait_text(page, "#box-status", f"1 new ({ticked})")
            _wait_text(page, "#box-table", ticked)
            _shot(page, "label-boxes.png")
            page.click("#box-export")
            _wait_text(page, "#box-status", "Exported 1 row")
            with page.expect_download(timeout=STEP_MS) as dl:
                page.click("#box-file a[download='boxes.csv']")
            csv_file = tmp_path / "boxes.csv"
            dl.value.save_as(csv_file)
            assert _toasts(page) == []
        finally:
            ctx.close()
    store = LabelStore(server["data_dir"])
    rec = next(c for c in store.clips() if c.original_name == "boxes_clip.mp4")
    (box,) = store.boxes_of(rec)
    assert box.timestamp_s == 1.0 and box.actions == (ticked,) and box.source == "person"
    x1, y1, x2, y2 = box.box
    assert x1 < 0.5 < x2 and y1 < 0.5 < y2 and x2 - x1 < 0.9  # drawn around the middle of the frame
    (row,) = read_ava_csv(csv_file, "groundtruth")
    names = read_label_map(next(Path(server["data_dir"]).rglob("label_map.pbtxt")))
    assert (row.video_id, float(row.timestamp), row.box, names[row.action_id]) == (rec.sha256[:16], 1.0, box.box,
                                                                                    ticked)
    assert "Traceback" not in server["served"].log_text()
