"""The web UI in a real browser: Debian's chromium, headless, driven by Playwright.

Starts ``videoapp serve`` on a free loopback port with a fresh data folder,
uploads a generated camera-motion clip, checks the predicted label the page
shows against the result JSON it offers, checks that a non-video upload is
refused with a message (and not stored), saves a label on the Label page,
exports the Kinetics CSV on the Dataset page and checks the downloaded file.
Screenshots are taken on every run; they replace the README's PNGs in
``docs/screenshots/`` only with ``VIDEOAPP_UPDATE_SCREENSHOTS=1`` (so a test
run never dirties the work tree), otherwise they go to a temporary folder.

Never downloads a browser: without ``/usr/bin/chromium`` (``apt-get install
chromium``; ``.ci/run`` does it) the test is skipped and says why.
"""
from __future__ import annotations

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
SHOTS = (REPO / "docs" / "screenshots" if os.environ.get("VIDEOAPP_UPDATE_SCREENSHOTS") == "1"
         else Path(tempfile.gettempdir()) / "videoapp-screenshots")
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


def _shot(page, name: str) -> Path:
    """A full-page screenshot, colour-quantised so the PNG stays small."""
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
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
            status = _wait_text(page, "#predict-status", "Refused")
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
