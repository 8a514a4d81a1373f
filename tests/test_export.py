"""ONNX export (`videoapp export`) and onnxruntime prediction (`videoapp predict --weights model.onnx`).

Every export is compared here with PyTorch independently of the exporter's own
check: fresh random clips through :class:`OnnxModel` (onnxruntime) and through
the PyTorch model on its normal inference path, max |Δlogit| <= 1e-4 x max
|logit|. The shipped models go through the command line end to end; the big
architectures (random MViTv2-S, Hiera-B with every parameter randomised) are
exported at a small clip to keep the test fast: MViTv2 takes any clip size
(its relative-position tables are interpolated), Hiera only the size it is
built for (fixed position embeddings), so Hiera-B is built for 8 x 64 x 64.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from random_weights import random_model  # noqa: E402

from videoapp.cli import main as cli_main  # noqa: E402
from videoapp.models.export import OnnxModel, export_onnx, onnx_metadata  # noqa: E402
from videoapp.models import create_model  # noqa: E402
from videoapp.weights import WEIGHTS_DIR, read_metadata  # noqa: E402

SHIPPED = ("default.safetensors", "camera_mvitv2_xxs.safetensors", "camera_hiera_xxs.safetensors",
           "camera_twins_xxs.safetensors")
TOL = 1e-4


def _assert_same_logits(onnx_model: OnnxModel, model: torch.nn.Module, batch: int, seed: int = 7) -> None:
    """onnxruntime vs PyTorch (eval, no autograd) on a random clip of the exported size."""
    cfg = onnx_model.pretrained_cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, cfg.num_frames, cfg.crop_size, cfg.crop_size, generator=g)
    model.eval()
    with torch.inference_mode():
        ref = model(x)
    out = onnx_model(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL * ref.abs().max().item()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("videoapp: error: "), err
    return err


@pytest.fixture(scope="module")
def shipped_exports(tmp_path_factory) -> dict[str, Path]:
    """Each shipped weights file exported through the CLI (once for the module)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in SHIPPED:
        path = folder / name.replace(".safetensors", ".onnx")
        assert cli_main(["export", str(WEIGHTS_DIR / name), "--format", "onnx", "--out", str(path)]) == 0
        out[name] = path
    return out


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory) -> Path:
    """A generated 2 s camera pan (held-out picture), H.264."""
    from videoapp.data.synthetic import camera_motion_clip, write_video

    rng = np.random.default_rng(5)
    frames = camera_motion_clip("pan_left", np.arange(60), 96, 128, rng, split="test")
    return write_video(tmp_path_factory.mktemp("clip") / "pan.mp4", frames)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_export_metadata_round_trip(name, shipped_exports):
    weights = WEIGHTS_DIR / name
    meta, exported = read_metadata(weights), onnx_metadata(shipped_exports[name])
    for key in ("model", "labels", "num_frames", "sampling_rate", "crop_size", "mean", "std", "source", "metrics"):
        assert exported[key] == meta[key], key
    assert exported["channel_order"] == meta.get("channel_order", "rgb")
    assert exported["sampling"] == meta.get("sampling", "rate")
    assert exported["weights"] == name and exported["exporter"] == "torchscript"
    onnx_model = OnnxModel(shipped_exports[name])
    cfg = onnx_model.pretrained_cfg
    assert cfg.model_name == meta["model"] and list(cfg.labels) == meta["labels"] and cfg.task == "classification"
    assert (cfg.num_frames, cfg.sampling_rate, cfg.crop_size) == (meta["num_frames"], meta["sampling_rate"],
                                                                  meta["crop_size"])
    assert onnx_model.num_classes == len(meta["labels"]) and onnx_model.batch_size == 1
    # A fixed batch-1 graph runs a batch of 3 one clip at a time.
    _assert_same_logits(onnx_model, create_model(meta["model"], pretrained=str(weights)), batch=3)


@pytest.mark.parametrize("name", ["default.safetensors", "camera_hiera_xxs.safetensors", "camera_twins_xxs.safetensors"])
def test_predict_with_onnx_matches_safetensors(name, shipped_exports, camera_clip, tmp_path):
    results = {}
    for kind, weights in (("pt", WEIGHTS_DIR / name), ("onnx", shipped_exports[name])):
        out = tmp_path / f"{kind}.json"
        argv = ["predict", str(camera_clip), "--weights", str(weights), "--format", "json", "--out", str(out),
                "--top-k", "10", "--window-s", "1", "--stride-s", "0.5"]
        assert cli_main(argv) == 0
        results[kind] = json.loads(out.read_text())
    pt, ox = results["pt"], results["onnx"]
    assert ox["model"] == pt["model"] and ox["views"] == pt["views"]
    assert pt["top_k"][0]["label"] == "pan_left"
    for a, b in zip([pt["top_k"]] + [w["top_k"] for w in pt["windows"]],
                    [ox["top_k"]] + [w["top_k"] for w in ox["windows"]]):
        assert [s["label"] for s in a] == [s["label"] for s in b]
        assert max(abs(s["score"] - t["score"]) for s, t in zip(a, b)) <= 1e-4
    assert len(ox["windows"]) == len(pt["windows"]) > 1


@pytest.mark.slow
def test_random_mvitv2_s_exports_at_a_small_clip(tmp_path):
    model = random_model(lambda: create_model("mvitv2_s_16x4"), seed=1)
    # verify=False: the onnxruntime comparison below is the check (one session for a 138 MB model, not two).
    report = export_onnx(model, tmp_path / "mvit_s.onnx", num_frames=4, crop_size=96, verify=False)
    assert report.input_shape == (1, 3, 4, 96, 96) and report.num_classes == 400
    onnx_model = OnnxModel(report.path)
    meta = onnx_model.metadata
    # The exported clip size is the protocol the file states; the rest is the variant's.
    assert (meta["num_frames"], meta["crop_size"], meta["sampling_rate"]) == (4, 96, 4)
    assert meta["mean"] == [0.45] * 3 and meta["std"] == [0.225] * 3 and "labels" not in meta
    _assert_same_logits(onnx_model, model, batch=1)


@pytest.mark.slow
def test_random_hiera_base_dynamic_batch(tmp_path):
    model = random_model(lambda: create_model("hiera_base_16x224", num_frames=8, crop_size=64), seed=2)
    # create_model's num_frames/crop_size reach the model and its pretrained_cfg: the export's default size.
    assert (model.pretrained_cfg.num_frames, model.pretrained_cfg.crop_size) == (8, 64)
    report = export_onnx(model, tmp_path / "hiera_b.onnx", dynamic_batch=True, verify=False)
    assert report.input_shape == (-1, 3, 8, 64, 64) and report.exporter == "torchscript"
    onnx_model = OnnxModel(report.path)
    assert onnx_model.batch_size is None and onnx_model.metadata["mean"] == [0.485, 0.456, 0.406]
    _assert_same_logits(onnx_model, model, batch=1)
    _assert_same_logits(onnx_model, model, batch=3, seed=8)


def test_hiera_rejects_another_clip_size(tmp_path, capsys):
    weights = WEIGHTS_DIR / "camera_hiera_xxs.safetensors"
    out = tmp_path / "h.onnx"
    assert cli_main(["export", str(weights), "--frames", "4", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "cannot run 4x64x64 clips" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_onnx_files_exit_2_with_one_line(tmp_path, camera_clip, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf\x00\xff" * 10)
    assert cli_main(["predict", str(camera_clip), "--weights", str(bad)]) == 2
    assert "not a readable ONNX model" in _one_line_error(capsys)

    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 64, 64])])
    onnx.save(helper.make_model(graph), str(foreign))
    assert cli_main(["predict", str(camera_clip), "--weights", str(foreign)]) == 2
    assert "not exported by videoapp" in _one_line_error(capsys)

    assert cli_main(["export", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "already an ONNX model" in _one_line_error(capsys)
    assert cli_main(["export", str(WEIGHTS_DIR / "default.safetensors"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "must end in .onnx" in _one_line_error(capsys)


def test_predict_onnx_without_onnxruntime_says_how_to_install(tmp_path, camera_clip):
    model = tmp_path / "model.onnx"  # never read: the missing package is found first
    model.write_bytes(b"\x08\x07")
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from videoapp.cli import main\n"
            f"raise SystemExit(main(['predict', {str(camera_clip)!r}, '--weights', {str(model)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "onnxruntime" in proc.stderr and "pip install 'videoapp[onnx]'" in proc.stderr


# --------------------------------------------------------------------------- detectors
DETECTORS = ("mvitv2_xxs_8x64_ava", "hiera_xxs_8x64_ava", "twins_svt_xxs_8x64_ava")
ACTIONS = ["stand", "sit", "walk", "talk", "wave"]


def _random_detector(name: str, seed: int) -> torch.nn.Module:
    """A detector with every parameter randomised (logits of a useful size) and labels."""
    model = random_model(lambda: create_model(name, num_classes=len(ACTIONS)), seed=seed)
    model.pretrained_cfg = model.pretrained_cfg.replace(labels=tuple(ACTIONS))
    return model.eval()


def _boxes(index: list[int], size: int, seed: int) -> torch.Tensor:
    """Boxes ``[K, 5]`` (``batch_index, x1, y1, x2, y2`` in pixels of a size x size clip), one per entry of ``index``."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(len(index), 2, 2, generator=g).sort(dim=1).values * size  # [K, corner, xy]: x1 <= x2, y1 <= y2
    xy[:, 1] += 1.0  # at least a pixel wide
    return torch.cat([torch.tensor(index, dtype=torch.float32)[:, None], xy.reshape(-1, 4)], dim=1)


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_export_matches_pytorch(name, tmp_path):
    from videoapp.models.export import check_onnx

    model = _random_detector(name, seed=3)
    report = export_onnx(model, tmp_path / "det.onnx")
    assert report.input_shape == (1, 3, 8, 64, 64) and report.num_classes == len(ACTIONS)
    assert report.exporter == "torchscript" and report.relative_diff <= TOL
    check_onnx(report.path)
    meta = onnx_metadata(report.path)
    assert meta["task"] == "detection" and meta["labels"] == ACTIONS and meta["model"] == name
    assert meta["backbone"] == name[:-len("_ava")] and meta["boxes"] == "boxes" and meta["opset"] >= 16
    assert {k: meta[k] for k in ("num_frames", "sampling_rate", "crop_size", "mean", "std")} == {
        k: v for k, v in model.pretrained_cfg.data_config().items()
        if k in ("num_frames", "sampling_rate", "crop_size", "mean", "std")}

    onnx_model = OnnxModel(report.path)
    assert onnx_model.detector and onnx_model.pretrained_cfg == model.pretrained_cfg
    g = torch.Generator().manual_seed(11)
    # One clip with 1, 4 and 9 boxes (the box count is dynamic), then two clips whose boxes interleave:
    # the batch-1 graph runs clip by clip and the rows come back in the caller's order.
    cases = [(1, [0]), (1, [0] * 4), (1, [0] * 9), (2, [1, 0, 1, 1, 0])]
    for i, (batch, index) in enumerate(cases):
        x = torch.randn(batch, 3, 8, 64, 64, generator=g)
        boxes = _boxes(index, 64, seed=20 + i)
        with torch.inference_mode():
            ref = model(x, boxes)
        out = onnx_model(x, boxes)
        assert out.shape == ref.shape == (len(index), len(ACTIONS))
        assert (out - ref).abs().max().item() <= TOL * ref.abs().max().item()
    with pytest.raises(ValueError, match="person boxes"):
        onnx_model(torch.zeros(1, 3, 8, 64, 64))


def test_detector_export_refusals_are_one_line(tmp_path):
    from videoapp.models.export import ExportError

    model = create_model("mvitv2_xxs_8x64_ava")
    with pytest.raises(ExportError, match="one clip per run"):
        export_onnx(model, tmp_path / "det.onnx", dynamic_batch=True)
    with pytest.raises(ExportError, match="RoIAlign needs opset 16"):
        export_onnx(model, tmp_path / "det.onnx", opset=15)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def detector_files(tmp_path_factory) -> dict[str, Path]:
    """Detection weights of a random MViTv2 and Hiera detector, their CLI exports, a square clip and its boxes."""
    from videoapp.weights import save_weights
    from videos import write_test_video

    d = tmp_path_factory.mktemp("det")
    out: dict[str, Path] = {}
    for i, name in enumerate(DETECTORS[:2]):
        model = _random_detector(name, seed=5 + i)
        weights = save_weights(d / f"{name}.safetensors", model.state_dict(),
                               {"model": name, **model.pretrained_cfg.data_config(), "labels": ACTIONS})
        onnx_path = d / f"{name}.onnx"
        assert cli_main(["export", str(weights), "--out", str(onnx_path)]) == 0
        out[name], out[name + ".onnx"] = weights, onnx_path
    # Square frames: MViTv2's aspect-keeping resize and the exported graph's square input are the same picture.
    out["clip"] = write_test_video(d / "clip.mp4", num_frames=90, fps=30, width=96, height=96)
    out["boxes"] = d / "boxes.csv"
    out["boxes"].write_text("clip,0001,0.1,0.2,0.5,0.9\nclip,0002,0.123,0.25,0.6,0.975\nclip,0002,0.6,0.05,0.9,0.7\n")
    return out


@pytest.mark.parametrize("name", DETECTORS[:2])
def test_detect_with_onnx_matches_safetensors(name, detector_files, tmp_path, capsys):
    from videoapp.data.ava import read_ava_csv

    rows = {}
    for kind, weights in (("pt", detector_files[name]), ("onnx", detector_files[name + ".onnx"])):
        out = tmp_path / f"{kind}.csv"
        argv = ["detect", str(detector_files["clip"]), "--boxes", str(detector_files["boxes"]),
                "--weights", str(weights), "--out", str(out)]
        assert cli_main(argv) == 0, capsys.readouterr().err
        rows[kind] = read_ava_csv(out, "detections")
    pt, ox = rows["pt"], rows["onnx"]
    assert len(pt) == len(ox) == 3 * len(ACTIONS)  # every action of every box (threshold 0)
    for a, b in zip(pt, ox):
        assert (a.video_id, a.timestamp, a.box, a.action_id) == (b.video_id, b.timestamp, b.box, b.action_id)
        assert abs(a.score - b.score) <= 1e-4
    assert max(r.score for r in pt) - min(r.score for r in pt) > 0.05  # not a constant output


def test_onnx_task_mismatch_is_one_line(detector_files, shipped_exports, camera_clip, capsys):
    det = detector_files["mvitv2_xxs_8x64_ava.onnx"]
    assert cli_main(["predict", str(camera_clip), "--weights", str(det)]) == 2
    assert "action detector" in _one_line_error(capsys)
    classifier = shipped_exports["default.safetensors"]
    argv = ["detect", str(detector_files["clip"]), "--boxes", str(detector_files["boxes"]), "--weights", str(classifier)]
    assert cli_main(argv) == 2
    assert "exported classifier" in _one_line_error(capsys)
