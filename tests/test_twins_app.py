"""The app takes a Twins model unchanged: ``videoapp train`` -> ``predict`` / ``eval``, and ``detect``.

One tiny run of each command on the small SVT variant (``twins_svt_xxs_8x64``
and its AVA detector ``twins_svt_xxs_8x64_ava``), every result checked against
an independent computation: the evaluation's metrics counted here from
:class:`~videoapp.engine.predict.Predictor` scores, the detector's box scores
from a direct call of the model on frames decoded and resized here.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from videoapp.cli import main
from videoapp.data.synthetic import write_camera_motion_videos
from videoapp.data.video import VideoReader
from videoapp.engine.evaluate import scores_path
from videoapp.engine.predict import Predictor
from videoapp.models import create_model
from videoapp.models.registry import IMAGENET_MEAN, IMAGENET_STD
from videoapp.weights import read_metadata, save_weights

from random_weights import random_model
from videos import write_test_video

XXS = "twins_svt_xxs_8x64"
DET = "twins_svt_xxs_8x64_ava"
CLASSES = ["pan_left", "static", "zoom_in"]  # sorted: the folder dataset's class order
ACTIONS = ["stand", "sit", "walk", "talk"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread on the shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- train -> predict / eval
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``videoapp train`` on a class-per-folder tree of generated clips: one epoch of two steps."""
    root = tmp_path_factory.mktemp("twins_train")
    write_camera_motion_videos(root / "train", 2, split="train", seed=5, classes=CLASSES, min_frames=20, max_frames=24)
    items = write_camera_motion_videos(root / "test", 2, split="test", seed=6, classes=CLASSES,
                                       min_frames=20, max_frames=26)
    cfg = {
        "model": {"name": XXS},
        "data": {"source": "folder", "train": str(root / "train"), "num_frames": 8, "sampling_rate": 2,
                 "crop_size": 64, "batch_size": 3},
        "optim": {"lr": 1e-3, "warmup_epochs": 0.5},
        "train": {"epochs": 1, "seed": 2, "out_dir": str(root / "run"), "bf16": False, "threads": 1,
                  "steps_per_epoch": 2, "log_every": 1, "progress": False},
    }
    (root / "twins.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(root / "twins.yaml")]) == 0
    return {"root": root, "weights": root / "run" / "model.safetensors", "items": items}


def test_train_writes_twins_weights(trained):
    meta = read_metadata(trained["weights"])
    assert meta["model"] == XXS and meta["labels"] == CLASSES
    assert (meta["num_frames"], meta["sampling_rate"], meta["crop_size"]) == (8, 2, 64)
    assert meta["mean"] == pytest.approx(list(IMAGENET_MEAN)) and meta["std"] == pytest.approx(list(IMAGENET_STD))
    assert meta["train"]["steps"] == 2
    assert create_model(XXS, pretrained=str(trained["weights"])).get_classifier().out_features == 3
    # Two optimizer steps, each with a finite loss and a non-zero gradient through the Twins.
    records = [json.loads(line) for line in (trained["weights"].parent / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)


def test_eval_and_predict_on_the_trained_twins(trained, capsys, tmp_path):
    weights, items = trained["weights"], trained["items"]
    out = tmp_path / "report.json"
    # 5 clips x 1 crop, starts without offset: the views `videoapp predict` averages by default.
    code, _, err = _cli(capsys, "eval", "--dataset", "folder", "--data-root", trained["root"] / "test",
                        "--weights", weights, "--protocol", "kinetics_hiera_5x3", "--clips", 5, "--crops", 1,
                        "--batch-size", 4, "--workers", 0, "--out", out)
    assert code == 0, err
    report = json.loads(out.read_text())
    records = {r["video"]: r for r in map(json.loads, scores_path(out).read_text().splitlines()[1:])}
    assert report["num_videos"] == len(records) == len(items) == 6

    # Independently: the Predictor's per-video probabilities, then the metrics by hand.
    predictor = Predictor(str(weights), num_clips=5, num_crops=1)
    hits, per_class = [], {c: [] for c in CLASSES}
    for path, label in items:
        scores = predictor.predict(path).scores
        rec = records[f"{label}/{Path(path).name}"]
        assert rec["target"] == CLASSES.index(label)
        np.testing.assert_allclose(np.asarray(rec["scores"], np.float32), scores, rtol=0, atol=1e-6)
        hit = int(np.argmax(scores)) == CLASSES.index(label)
        hits.append(hit)
        per_class[label].append(hit)
    assert report["top1"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    assert report["top5"] == 1.0  # three classes: the true one is always in the top five
    mean_class = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    assert report["mean_class_accuracy"] == pytest.approx(mean_class, abs=1e-12)
    assert {c: v["accuracy"] for c, v in report["per_class"].items()} == pytest.approx(
        {c: sum(v) / len(v) for c, v in per_class.items()}, abs=1e-12)

    # `videoapp predict` on the same weights gives the evaluation's scores for the same video.
    path, label = items[0]
    code, out_text, err = _cli(capsys, "predict", path, "--weights", weights, "--format", "json", "--top-k", 3)
    assert code == 0, err
    result = json.loads(out_text)
    assert result["model"] == XXS
    expected = records[f"{label}/{Path(path).name}"]["scores"]
    got = {e["label"]: e["score"] for e in result["top_k"]}
    assert got == pytest.approx({c: expected[i] for i, c in enumerate(CLASSES)}, abs=1e-6)


# --------------------------------------------------------------------------- detect
# Proposal boxes (8 columns); the 0.5 box is below detect's default box threshold (0.8).
BOXES_CSV = """\
clip,0001,0.1,0.2,0.5,0.9,-1,0.95
clip,0001,0.55,0.1,0.95,0.85,-1,0.5
clip,0002,0.123,0.25,0.6,0.975,-1,0.99
clip,0002,0.6,0.05,0.9,0.7,-1,0.81
"""
KEPT = [("0001", (0.1, 0.2, 0.5, 0.9)), ("0002", (0.123, 0.25, 0.6, 0.975)), ("0002", (0.6, 0.05, 0.9, 0.7))]


def test_detect_with_a_twins_detector_matches_the_model(capsys, tmp_path):
    model = random_model(lambda: create_model(DET, num_classes=len(ACTIONS)), seed=7)
    weights = save_weights(tmp_path / "det.safetensors", model.state_dict(),
                           {"model": DET, **model.pretrained_cfg.data_config(), "labels": ACTIONS})
    clip = write_test_video(tmp_path / "clip.mp4", num_frames=90, fps=30, width=160, height=120)
    (tmp_path / "boxes.csv").write_text(BOXES_CSV)
    code, out, err = _cli(capsys, "detect", clip, "--boxes", tmp_path / "boxes.csv", "--weights", weights)
    assert code == 0, err
    rows = [r for r in csv.reader(io.StringIO(out)) if r]
    assert len(rows) == len(KEPT) * len(ACTIONS) and all(len(r) == 8 for r in rows)
    assert {(r[1], tuple(float(v) for v in r[2:6])) for r in rows} == set(KEPT)

    # Independently: keyframe t -> centre frame 30 t, 8 frames every 8th from centre - 32 (clamped to the
    # video), short side to 64 (160 x 120 -> 85 x 64, bilinear), ImageNet normalisation, boxes in pixels.
    centre_frames = {"0001": [0, 6, 14, 22, 30, 38, 46, 54], "0002": [28, 36, 44, 52, 60, 68, 76, 84]}
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    loaded = create_model(DET, pretrained=str(weights)).eval()
    expected = {}
    with VideoReader(clip) as reader:
        for ts, idx in centre_frames.items():
            frames = torch.from_numpy(reader.get_frames(idx)).permute(3, 0, 1, 2).float() / 255  # [3, 8, 120, 160]
            x = F.interpolate(frames, size=(64, 85), mode="bilinear", align_corners=False)
            x = ((x - mean) / std)[None]
            boxes = [b for t, b in KEPT if t == ts]
            rois = torch.tensor([[0, b[0] * 85, b[1] * 64, b[2] * 85, b[3] * 64] for b in boxes])
            with torch.no_grad():
                probs = loaded(x, rois).sigmoid().numpy()
            expected.update({(ts, b): p for b, p in zip(boxes, probs)})
    scores = []
    for r in rows:
        p = expected[(r[1], tuple(float(v) for v in r[2:6]))]
        scores.append(float(r[7]))
        assert float(r[7]) == pytest.approx(float(p[int(r[6]) - 1]), abs=2e-6)
    assert max(scores) - min(scores) > 1e-3  # the random head separates the actions: a real check
