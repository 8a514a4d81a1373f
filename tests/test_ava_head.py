"""AVA head and action detectors: RoIAlign numerics against hand computations, detectors, weights round trip."""
from __future__ import annotations

import math

import pytest
import torch

from videoapp.models.detector import ActionDetector, load_backbone_weights
from videoapp.models.heads import AVAHead
from videoapp.models import create_model, get_model_entry, list_models
from videoapp.models.pretrained import import_checkpoint
from videoapp.weights import read_metadata, save_weights


# --------------------------------------------------------------------------- an independent RoIAlign
def _bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Value of ``fmap [C, H, W]`` at (y, x): zero outside ``[-1, H] x [-1, W]``, edges clamped (RoIAlign's rule)."""
    _, h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(fmap.shape[0], dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    f = fmap.double()
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])


def _roi_align_max(fmap: torch.Tensor, box, scale: float, bins: int = 7) -> torch.Tensor:
    """Max over the ``bins x bins`` RoIAlign bins (aligned, adaptive sampling) of one box: ``[C]``, float64."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in box)
    bin_h, bin_w = (y2 - y1) / bins, (x2 - x1) / bins
    grid_h, grid_w = max(math.ceil((y2 - y1) / bins), 1), max(math.ceil((x2 - x1) / bins), 1)
    best = None
    for i in range(bins):
        for j in range(bins):
            acc = torch.zeros(fmap.shape[0], dtype=torch.float64)
            for iy in range(grid_h):
                for ix in range(grid_w):
                    acc += _bilinear(fmap, y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h,
                                     x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w)
            val = acc / (grid_h * grid_w)
            best = val if best is None else torch.maximum(best, val)
    return best


@pytest.mark.parametrize("input_hw, map_hw", [((256, 384), (8, 12)), ((398, 224), (13, 7))])
def test_head_on_a_linear_map_gives_the_bottom_right_bin_centre(input_hw, map_hw):
    # A map linear in x and y: bilinear sampling is exact and each bin's mean is
    # the value at its centre, so the max over bins (positive slopes) is the
    # value at the bottom-right bin's centre, in map coordinates
    # (box / 32 - 0.5: stride 32 on the short side, the aligned half-pixel shift).
    # The portrait input's long side (398 px -> 13 cells) is no multiple of 32:
    # the scale must come from the short side (224 -> 7), as SlowFast's fixed 1/32.
    c, t = 3, 4
    h, w = map_hw
    a = torch.tensor([1.0, 2.0, 0.5])  # slope along x
    b = torch.tensor([0.25, 1.0, 3.0])  # slope along y
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    offsets = torch.tensor([0.0, 1.0, 2.0, 5.0])  # one constant per frame: the temporal mean adds 2.0
    fmap = (a.double()[:, None, None, None] * xx + b.double()[:, None, None, None] * yy
            + offsets.double()[None, :, None, None]).float()[None]  # [1, C, T, H, W]
    head = AVAHead(c, 2).eval()
    box = (40.0, 56.0, 200.0, 168.0)
    pooled = head(fmap, torch.tensor([[0.0, *box]]), input_hw, pre_logits=True)
    s = 1 / 32
    x1, y1, x2, y2 = (v * s - 0.5 for v in box)
    xc = x2 - (x2 - x1) / 14  # centre of the last of 7 bins
    yc = y2 - (y2 - y1) / 14
    expected = a * xc + b * yc + offsets.mean()
    torch.testing.assert_close(pooled[0], expected.float(), rtol=0, atol=1e-5)


def test_head_matches_a_plain_reimplementation():
    torch.manual_seed(0)
    c, n = 6, 5
    x = torch.randn(2, c, 3, 7, 9)  # two clips, map 7 x 9 of a 224 x 288 input (stride 32)
    boxes = torch.tensor([
        [0, 10.0, 20.0, 150.0, 200.0],
        [1, 0.0, 0.0, 288.0, 224.0],      # the whole frame: samples reach the clamped edges
        [1, 100.5, 33.25, 101.0, 60.0],   # thinner than a feature pixel
        [0, 250.0, 190.0, 280.0, 222.0],  # near the bottom-right corner
    ])
    head = AVAHead(c, n, dropout=0.5).eval()  # eval: dropout off
    with torch.no_grad():
        head.fc.weight.normal_()
        head.fc.bias.normal_()
        logits = head(x, boxes, (224, 288))
    fmap = x.mean(dim=2)
    for k, row in enumerate(boxes.tolist()):
        pooled = _roi_align_max(fmap[int(row[0])], row[1:], scale=7 / 224)
        expected = pooled @ head.fc.weight.double().T + head.fc.bias.double()
        torch.testing.assert_close(logits[k].double(), expected, rtol=1e-5, atol=1e-5)


def test_head_rejects_bad_shapes_and_zero_actions():
    head = AVAHead(4, 3)
    with pytest.raises(ValueError, match="feature map"):
        head(torch.zeros(1, 4, 5, 5), torch.zeros(1, 5), 160)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        head(torch.zeros(1, 4, 1, 5, 5), torch.zeros(1, 4), 160)
    with pytest.raises(ValueError, match="at least one action"):
        AVAHead(4, 0)


# --------------------------------------------------------------------------- detectors
def test_registered_detectors_and_their_protocols():
    names = list_models("*_ava")
    for name in ("mvitv2_s_16x4_ava", "mvitv2_b_32x3_ava", "hiera_base_16x224_ava", "mvitv2_xxs_8x64_ava",
                 "hiera_xxs_8x64_ava"):
        assert name in names
        assert get_model_entry(name).data["task"] == "detection"
    s = get_model_entry("mvitv2_s_16x4_ava").data
    assert (s["num_frames"], s["sampling_rate"], s["crop_size"], s["backbone"]) == (16, 4, 224, "mvitv2_s_16x4")
    b = get_model_entry("mvitv2_b_32x3_ava").data
    assert (b["num_frames"], b["sampling_rate"]) == (32, 3)
    h = get_model_entry("hiera_base_16x224_ava").data
    assert (h["num_frames"], h["sampling_rate"], h["crop_size"], h["mean"]) == (16, 4, 224, [0.485, 0.456, 0.406])


@pytest.mark.parametrize("name", ["mvitv2_xxs_8x64_ava", "hiera_xxs_8x64_ava"])
def test_detector_scores_each_box_like_its_clip_alone(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert isinstance(model, ActionDetector) and model.num_classes == 80
    x = torch.randn(2, 3, 8, 64, 64)
    boxes = torch.tensor([[1, 4.0, 8.0, 40.0, 60.0], [0, 0.0, 0.0, 64.0, 64.0], [1, 30.0, 2.0, 62.0, 33.0]])
    with torch.no_grad():
        both = model(x, boxes)
        feats = model.forward_features(x)
        alone = [model(x[int(r[0]):int(r[0]) + 1], torch.cat([torch.zeros(1), r[1:]])[None]) for r in boxes]
    assert both.shape == (3, 80)
    assert feats.shape[:2] == (2, model.num_features)
    assert model.backbone.num_features == model.num_features
    torch.testing.assert_close(both, torch.cat(alone), rtol=1e-4, atol=1e-5)
    # The timm-style API: classifier access, reset, weight-decay exemptions with their prefix.
    assert model.get_classifier() is model.head.fc
    model.reset_classifier(5)
    assert model.head.fc.out_features == 5 and model.num_classes == 5
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd and all(n.startswith("backbone.") and n in params for n in nwd)


def test_detector_weights_round_trip_with_task_and_labels(tmp_path):
    torch.manual_seed(1)
    name = "mvitv2_xxs_8x64_ava"
    labels = ["stand", "sit", "walk"]
    model = create_model(name, num_classes=3).eval()
    path = save_weights(tmp_path / "det.safetensors", model.state_dict(),
                        {"model": name, **model.pretrained_cfg.data_config(), "labels": labels})
    meta = read_metadata(path)
    assert meta["task"] == "detection" and meta["labels"] == labels and meta["model"] == name
    state, report = import_checkpoint(path, name)
    assert report.source == "videoapp" and report.num_classes == 3
    loaded = create_model(name, pretrained=str(path)).eval()
    assert loaded.pretrained_cfg.labels == tuple(labels) and loaded.pretrained_cfg.task == "detection"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(1, 3, 8, 64, 96)
    boxes = torch.tensor([[0, 3.0, 5.0, 50.0, 60.0]])
    with torch.no_grad():
        assert torch.equal(loaded(x, boxes), model(x, boxes))


def test_backbone_weights_initialise_a_detector(tmp_path):
    torch.manual_seed(2)
    classifier = create_model("mvitv2_xxs_8x64", num_classes=7)
    path = save_weights(tmp_path / "cls.safetensors", classifier.state_dict(), {"model": "mvitv2_xxs_8x64"})
    det = create_model("mvitv2_xxs_8x64_ava", num_classes=4)
    load_backbone_weights(det, str(path))
    src = {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    got = det.backbone.state_dict()
    assert set(got) == set(src)
    for k, v in src.items():
        assert torch.equal(got[k], v), k
