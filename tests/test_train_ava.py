"""Training an action detector on AVA-format data (``data.source: ava``): dataset, loss, frame-mAP, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoapp.config import ConfigError, config_from_dict
from videoapp.data.ava import read_ava_csv, read_label_map
from videoapp.data.datasets import AVADataset
from videoapp.data.synthetic_ava import MOTIONS, write_ava_scenes
from videoapp.engine.detect import DetectionPredictor, keyframe_clip_indices
from videoapp.engine.train import box_bce, train
from videoapp.weights import read_metadata


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three small generated training scenes and two held-out ones (2 s, keyframe at 1 s)."""
    root = tmp_path_factory.mktemp("ava")
    tr = write_ava_scenes(root / "train", 3, split="train", seed=5, seconds=2, size=(72, 96))
    va = write_ava_scenes(root / "val", 2, split="test", seed=5, seconds=2, size=(72, 96))
    return root, tr, va


def _cfg(root, tr, va, out, **train):
    return config_from_dict({
        "model": {"name": "mvitv2_xxs_8x64_ava"},
        "data": {"source": "ava", "train": str(tr.groundtruth), "val": str(va.groundtruth), "root": str(root),
                 "labels": str(tr.label_map), "num_frames": 8, "sampling_rate": 4, "crop_size": 64,
                 "batch_size": 2},
        "optim": {"lr": 1e-3, "warmup_epochs": 0},
        "train": {"epochs": 1, "out_dir": str(out), "bf16": False, "progress": False, "plot": False,
                  "log_every": 1, **train},
    })


def test_ava_dataset_matches_detection_preprocessing(scenes):
    root, tr, _ = scenes
    rows = read_ava_csv(tr.groundtruth, "groundtruth")
    fn = lambda c, num_video_frames: keyframe_clip_indices(c, 4, 4, num_video_frames)  # noqa: E731
    common = dict(num_classes=len(MOTIONS), indices_fn=fn, crop_size=32, mean=[0.45] * 3, std=[0.225] * 3)
    ds = AVADataset(rows, root, train=False, **common)
    assert len(ds) == 3  # one keyframe (1 s) per scene
    vid, ts, boxes = ds.keyframe(0)
    mine = [r for r in rows if r.video_id == vid and float(r.timestamp) == 1.0]
    assert {r.box for r in mine} == set(boxes)
    x, b, y = ds[0]
    # Labels: a 1 at action_id - 1 for each of the box's rows, nothing else.
    for j, box in enumerate(boxes):
        want = np.zeros(len(MOTIONS), np.float32)
        want[[r.action_id - 1 for r in mine if r.box == box]] = 1
        np.testing.assert_array_equal(y[j].numpy(), want)
    np.testing.assert_array_equal(b.numpy(), np.asarray(boxes, np.float32))
    # The clip is what DetectionPredictor feeds the model for that keyframe (within float16 storage).
    from videoapp.data.video import VideoReader
    from videoapp.models import create_model

    model = create_model("mvitv2_xxs_8x64_ava", num_classes=len(MOTIONS), num_frames=4, crop_size=32)
    model.pretrained_cfg = model.pretrained_cfg.replace(sampling_rate=4)  # num_frames/crop_size: from the overrides
    pred = DetectionPredictor(model)
    with VideoReader(str(root / "train" / "videos" / f"{vid}.mp4")) as r:
        frames = r.get_frames(keyframe_clip_indices(30, 4, 4, r.info.num_frames))
    ref = pred.preprocess(frames)
    assert x.shape == ref.shape == (3, 4, 32, 42)
    assert float((x - ref).abs().max()) < 2e-3 / 0.225
    # Training jitter: boxes move by at most 10 % of their size, inside the frame; deterministic per epoch.
    jt = AVADataset(rows, root, train=True, jitter=0.1, **common)
    jt.set_epoch(3)
    b1, b2 = jt[0][1].numpy(), jt[0][1].numpy()
    np.testing.assert_array_equal(b1, b2)
    ref_b = np.asarray(boxes)
    wh = np.concatenate([ref_b[:, 2:] - ref_b[:, :2]] * 2, axis=1)
    assert np.all(np.abs(b1 - ref_b) <= 0.1 * wh + 1e-6) and np.all((b1 >= 0) & (b1 <= 1))
    assert not np.array_equal(b1, ref_b.astype(np.float32))
    # Collate: zero-padded batch, boxes in input pixels with their batch index.
    xb, t = ds.collate([ds[0], ds[1]])
    assert xb.shape == (2, 3, 4, 32, 42) and len(t) == len(ds.keyframe(0)[2]) + len(ds.keyframe(1)[2])
    np.testing.assert_allclose(t.rois[0].numpy(), [0, *(np.asarray(boxes[0]) * [42, 32, 42, 32])], rtol=1e-6)
    logits = torch.zeros(len(t), len(MOTIONS))
    assert float(box_bce(logits, t)) == pytest.approx(np.log(2))


def test_ava_train_saves_detector_and_resumes(scenes, tmp_path):
    root, tr, va = scenes
    out = tmp_path / "run"
    res = train(_cfg(root, tr, va, out, epochs=2, time_limit_min=1e-6))  # stops after its first step
    assert res.stopped_early and (out / "checkpoint.pt").is_file()
    res = train(_cfg(root, tr, va, out, epochs=2), resume=True)
    assert res.epochs_done == 2 and not res.stopped_early
    meta = read_metadata(res.weights)
    assert meta["task"] == "detection" and meta["model"] == "mvitv2_xxs_8x64_ava"
    assert meta["labels"] == list(read_label_map(tr.label_map).values()) == list(MOTIONS)
    assert meta["num_frames"] == 8 and meta["sampling_rate"] == 4 and meta["crop_size"] == 64
    assert 0.0 <= meta["metrics"]["val_map"] <= 1.0
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    # Validation scores every box of every keyframe of the val file.
    gt = read_ava_csv(va.groundtruth, "groundtruth")
    assert epochs[-1]["val_boxes"] == len({(r.video_id, r.timestamp, r.box) for r in gt})
    assert set(epochs[-1]["val_ap"]) == set(MOTIONS)
    # The weights load as a detector and score boxes.
    pred = DetectionPredictor(str(res.weights))
    assert pred.labels == list(MOTIONS) and pred.sampling_rate == 4


def test_ava_config_errors(scenes, tmp_path):
    root, tr, va = scenes
    with pytest.raises(ConfigError, match="data.labels"):
        config_from_dict({"data": {"source": "ava", "train": str(tr.groundtruth)}})
    with pytest.raises(ConfigError, match="box_jitter"):
        config_from_dict({"data": {"source": "ava", "train": "x.csv", "labels": "m.pbtxt", "box_jitter": 0.7}})


def test_detector_experiment_configs_load():
    from pathlib import Path

    from videoapp.config import load_config

    paths = sorted((Path(__file__).resolve().parent.parent / "configs" / "train" / "experiments").glob("ava_*.yaml"))
    assert len(paths) == 3
    for path in paths:
        cfg = load_config(path)
        assert cfg.data.source == "ava" and cfg.model.name == "mvitv2_xxs_8x64_ava"
        assert cfg.train.export is None  # none reached the shipping bar (weights/README.md)


def test_ava_box_augment_flips_clip_boxes_and_swaps_labels(scenes):
    """Each keyframe comes back as one of the 8 flip/reverse combinations, with boxes mirrored to match
    the clip and the named actions swapped; every combination occurs over epochs."""
    root, tr, _ = scenes
    rows = read_ava_csv(tr.groundtruth, "groundtruth")
    fn = lambda c, num_video_frames: keyframe_clip_indices(c, 4, 4, num_video_frames)  # noqa: E731
    common = dict(num_classes=len(MOTIONS), indices_fn=fn, crop_size=32, mean=[0.45] * 3, std=[0.225] * 3)
    plain = AVADataset(rows, root, train=False, **common)
    swaps = {"hflip": [(0, 1)], "vflip": [(2, 3)], "reverse": [(0, 1), (2, 3), (4, 5)]}
    aug = AVADataset(rows, root, train=True, jitter=0.0, augment=swaps, **common)
    x0, b0, y0 = (t.numpy() for t in plain[0])
    seen = set()
    for epoch in range(40):
        aug.set_epoch(epoch)
        x, b, y = (t.numpy() for t in aug[0])
        matches = []
        for h in (False, True):
            for v in (False, True):
                for r in (False, True):
                    want = x0[:, ::-1] if r else x0
                    want = want[..., ::-1] if h else want
                    want = want[..., ::-1, :] if v else want
                    if np.array_equal(x, want):
                        matches.append((h, v, r))
        assert len(matches) == 1, matches  # the clip is exactly one combination
        h, v, r = matches[0]
        seen.add(matches[0])
        wb = b0.copy()
        if h:
            wb[:, [0, 2]] = 1 - b0[:, [2, 0]]
        if v:
            wb[:, [1, 3]] = 1 - b0[:, [3, 1]]
        np.testing.assert_allclose(b, wb, atol=1e-7)
        wy = y0.copy()
        perm = np.arange(len(MOTIONS))
        if r:  # reversal and a flip on the same axis cancel out
            perm[[0, 1, 2, 3, 4, 5]] = [1, 0, 3, 2, 5, 4]
        if h:
            perm[[0, 1]] = perm[[1, 0]]
        if v:
            perm[[2, 3]] = perm[[3, 2]]
        np.testing.assert_array_equal(y, wy[:, perm])
    assert len(seen) == 8
    with pytest.raises(Exception, match="unknown box augmentation 'rot90'"):
        AVADataset(rows, root, augment={"rot90": []}, **common)


def test_ava_box_augment_config_names_unknown_action(scenes, tmp_path):
    root, tr, va = scenes
    cfg = _cfg(root, tr, va, tmp_path / "run")
    cfg.data.box_augment = {"hflip": [["move_left", "walk"]]}
    with pytest.raises(ConfigError, match="data.box_augment.hflip: 'walk' is not an action"):
        train(cfg)


def test_classifier_backbone_init_does_not_bring_its_clip_protocol(tmp_path):
    """A classifier trained at another protocol starts a detector's backbone; the detector's own registry
    entry decides frames, stride and size (a detector reads whole frames around keyframes)."""
    from videoapp.engine.train import _data_config
    from videoapp.models import create_model, get_model_entry
    from videoapp.weights import save_weights

    classifier = create_model("mvitv2_xxs_8x64", num_classes=3)
    path = save_weights(tmp_path / "cls.safetensors", classifier.state_dict(),
                        {"model": "mvitv2_xxs_8x64", "labels": ["a", "b", "c"], "num_frames": 8, "sampling_rate": 2,
                         "crop_size": 48, "mean": [0.5] * 3, "std": [0.5] * 3})
    cfg = config_from_dict({"model": {"name": "mvitv2_xxs_8x64_s16_ava", "pretrained": str(path)},
                            "data": {"source": "ava", "train": "x.csv", "root": ".", "labels": "m.pbtxt"}})
    entry = get_model_entry("mvitv2_xxs_8x64_s16_ava").data
    data = _data_config(cfg)
    assert (data["num_frames"], data["sampling_rate"], data["crop_size"], data["mean"]) == \
        (entry["num_frames"], entry["sampling_rate"], entry["crop_size"], entry["mean"]) == (8, 4, 64, [0.45] * 3)
    # A classifier fine-tuned from the same file does take its protocol.
    cfg = config_from_dict({"model": {"name": "mvitv2_xxs_8x64", "pretrained": str(path)},
                            "data": {"source": "kinetics", "train": "x.csv", "root": "."}})
    assert (_data_config(cfg)["sampling_rate"], _data_config(cfg)["crop_size"]) == (2, 48)
