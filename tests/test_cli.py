"""`videoapp` command line: predict outputs, bad input handling, models and weights commands."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from videoapp.cli import main
from videoapp.engine.predict import Predictor
from videoapp.models import create_model
from videoapp.weights import save_weights
from videos import truncate_copy, write_empty_video, write_test_audio, write_test_video

TINY = "mvitv2_xxs_8x64"
LABELS = ["pan_left", "pan_right", "zoom_in"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=len(LABELS))
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, model.state_dict(), {"model": TINY, "labels": LABELS, "num_frames": 8, "sampling_rate": 2})
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=90, fps=30, width=96, height=72)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, clip):
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.mp4"
    text.write_text("this is a text file, not a video\n")
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    folder = d / "folder.mp4"
    folder.mkdir()
    return {
        "missing": (str(d / "nope.mp4"), "no such file"),
        "directory": (str(folder), "directory"),
        "empty": (str(empty), "empty"),
        "text": (str(text), "not a video"),
        "truncated": (truncate_copy(clip, d / "cut.mp4", 0.3), ""),
        "audio-only": (write_test_audio(d / "tone.m4a"), "no video stream"),
        "zero-frames": (write_empty_video(d / "noframes.mp4"), ""),
    }


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("predict", "models", "weights"):
        assert command in out


def test_models_lists_official_variants(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("mvitv2_s_16x4", "mvitv2_b_32x3", "mvitv2_l_40x3", TINY):
        assert name in out
    assert "16x4" in out
    code, _, err = run_cli(capsys, "models", "nothing*")
    assert code == 2 and "no model matches" in err


def test_predict_json_matches_python_api(capsys, tiny_weights, clip):
    code, out, err = run_cli(capsys, "predict", clip, "--weights", tiny_weights, "--format", "json", "--top-k", "3")
    assert code == 0, err
    result = json.loads(out)
    assert result["video"] == clip and result["model"] == TINY
    assert [e["label"] for e in result["top_k"]] and len(result["top_k"]) == 3
    scores = [e["score"] for e in result["top_k"]]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
    assert result["windows"] == []
    expected = Predictor(tiny_weights).predict(clip, top_k=3)
    assert [e["label"] for e in result["top_k"]] == [s.label for s in expected.top_k]
    np.testing.assert_allclose(scores, [s.score for s in expected.top_k], atol=1e-6)


def test_predict_timeline_text_csv_and_out_file(capsys, tiny_weights, clip, tmp_path):
    out_file = tmp_path / "result.csv"
    code, out, err = run_cli(capsys, "predict", clip, "--weights", tiny_weights, "--window-s", "1",
                             "--stride-s", "0.5", "--format", "csv", "--out", out_file)
    assert code == 0 and out == "", err
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    whole = [r for r in rows if r["start_s"] == ""]
    timeline = [r for r in rows if r["start_s"] != ""]
    assert len(whole) == 3  # top-k is capped at the number of classes
    starts = sorted({float(r["start_s"]) for r in timeline})
    assert starts == [0.0, 0.5, 1.0, 1.5, 2.0]  # 3 s video, 1 s windows every 0.5 s
    assert {float(r["end_s"]) for r in timeline} == {1.0, 1.5, 2.0, 2.5, 3.0}
    code, out, _ = run_cli(capsys, "predict", clip, "--weights", tiny_weights, "--window-s", "1.5")
    assert code == 0
    assert "timeline:" in out and "0.00-   1.50 s" in out and "1.50-   3.00 s" in out


@pytest.mark.parametrize("kind, warned", [("emulated", True), ("avx512_bf16", False), ("amx", False)])
def test_bf16_on_a_cpu_that_emulates_it_warns(capsys, tiny_weights, clip, monkeypatch, kind, warned):
    monkeypatch.setattr("videoapp.hardware.bf16_kind", lambda *a, **k: kind)
    code, out, err = run_cli(capsys, "predict", clip, "--weights", tiny_weights, "--bf16", "--top-k", "1")
    assert code == 0 and out.startswith(clip), err
    assert ("warning: --bf16 on a CPU without AVX512-BF16 or AMX" in err) == warned
    # Without --bf16 (or on a GPU) there is nothing to warn about.
    code, _, err = run_cli(capsys, "predict", clip, "--weights", tiny_weights, "--top-k", "1")
    assert code == 0 and "warning" not in err


def test_untrained_fallback_says_so(capsys, clip, monkeypatch):
    monkeypatch.setattr("videoapp.weights.default_weights", lambda: None)
    code, out, err = run_cli(capsys, "predict", clip, "--top-k", "2")
    assert code == 0
    assert "UNTRAINED" in err and "meaningless" in err
    assert "untrained_" in out


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "truncated", "audio-only", "zero-frames"])
def test_bad_input_is_one_line_and_exit_2(capsys, tiny_weights, bad_inputs, case):
    path, message = bad_inputs[case]
    code, out, err = run_cli(capsys, "predict", path, "--weights", tiny_weights)
    if case == "truncated" and code == 0:
        # A file cut at 30% may still hold decodable frames: then it must predict from them.
        assert "pan_" in out or "zoom_in" in out
        return
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("videoapp: error: ") and os.path.basename(path) in lines[0]
    assert message in lines[0]
    assert out == ""


def test_unreadable_permissions(capsys, tiny_weights, clip, tmp_path, monkeypatch):
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(open(clip, "rb").read())
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the failing permission check
        import videoapp.data.video as video

        real = video.os.access
        monkeypatch.setattr(video.os, "access", lambda p, m: False if str(p) == str(locked) else real(p, m))
    code, _, err = run_cli(capsys, "predict", locked, "--weights", tiny_weights)
    assert code == 2 and "permission denied" in err and len(err.strip().splitlines()) == 1


def test_one_bad_clip_does_not_stop_the_others(capsys, tiny_weights, clip, bad_inputs):
    code, out, err = run_cli(capsys, "predict", bad_inputs["text"][0], clip, "--weights", tiny_weights, "--format", "json")
    assert code == 2
    results = json.loads(out)
    assert [r["video"] for r in results] == [clip]
    assert "notes.mp4" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "x.mp4", "--top-k", "0"], "must be >= 1"),
        (["predict", "x.mp4", "--window-s", "-1"], "must be > 0"),
        (["predict", "x.mp4", "--format", "xml"], "invalid choice"),
        (["predict", "x.mp4", "--weights", "missing.safetensors"], "no such weights file"),
        (["predict", "x.mp4", "--model", "mvitv9"], "unknown model"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_are_one_line(capsys, argv, message, monkeypatch):
    monkeypatch.setattr("videoapp.weights.default_weights", lambda: None)
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_real_process_exit_code_and_no_traceback(bad_inputs, tiny_weights):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "videoapp", "predict", bad_inputs["text"][0], "--weights", tiny_weights],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_weights_import_and_list(capsys, tmp_path):
    from torchvision.models.video import mvit_v2_s

    torch.manual_seed(0)
    src = tmp_path / "mvit_v2_s.pth"
    torch.save(mvit_v2_s().state_dict(), src)
    out = tmp_path / "weights" / "k400_s.safetensors"
    out.parent.mkdir()
    code, stdout, err = run_cli(capsys, "weights", "import", src, "--model", "mvitv2_s_16x4", "--out", out)
    assert code == 0, err
    assert "400 classes" in stdout and "from torchvision" in stdout
    assert "kinetics400" in err  # labels inferred from the class count are announced
    code, stdout, _ = run_cli(capsys, "weights", "list", "--dir", out.parent)
    assert code == 0 and "k400_s.safetensors" in stdout and "model=mvitv2_s_16x4" in stdout and "classes=400" in stdout
    code, _, err = run_cli(capsys, "weights", "import", src, "--model", "mvitv2_b_32x3", "--out", tmp_path / "b.safetensors")
    assert code == 2 and "does not fit mvitv2_b_32x3" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("image_name, model, frames, other", [
    ("hiera_tiny_224", "hiera_tiny_16x224", 16, "hiera_base_16x224"),
    ("mvitv2_tiny", "mvitv2_tiny_16x224", 4, "mvitv2_small_16x224"),
])
def test_weights_inflate_end_to_end(capsys, tmp_path, image_name, model, frames, other):
    """An inflated timm image checkpoint, loaded from the written file, reproduces the image model on still clips."""
    import timm

    from random_weights import randomise

    torch.manual_seed(0)
    image_model = timm.create_model(image_name, pretrained=False).eval()
    randomise(image_model)
    src = tmp_path / f"{image_name}.pth"
    torch.save(image_model.state_dict(), src)
    out = tmp_path / f"{model}_inflated.safetensors"
    code, stdout, err = run_cli(capsys, "weights", "inflate", src, "--model", model, "--out", out)
    assert code == 0, err
    assert "1000 classes" in stdout and "centre-frame" in stdout
    video_model = create_model(model, pretrained=str(out)).eval()
    frame = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        expected = image_model(frame)  # timm returns logits (no softmax)
        got = video_model(frame[:, :, None].expand(-1, -1, frames, -1, -1))
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    code, _, err = run_cli(capsys, "weights", "inflate", src, "--model", other, "--out", tmp_path / "b.safetensors")
    assert code == 2 and len(err.strip().splitlines()) == 1
