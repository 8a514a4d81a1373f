"""``videoapp eval``: formats, exact metrics, protocol presets, predict parity, torchrun and kill + resume.

The metric tests use a stand-in model whose scores are known per video: every
test clip is one solid grey level, the stand-in reads the level back from its
(normalised) input and returns that video's logits, so top-1/top-5/mean class
accuracy and the confusion matrix are computed here independently.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from videoapp.cli import main as cli_main
from videoapp.data.video import VideoReader
from videoapp.engine.evaluate import EvalError, evaluate, list_protocols, load_protocol, scores_path
from videoapp.engine.predict import Predictor, ViewSampler
from videoapp.models import ModelConfig, create_model
from videoapp.weights import save_weights
from videos import decode_indices, write_test_video

from servers import free_port

REPO = Path(__file__).resolve().parent.parent
K400 = ["abseiling", "air drumming", "archery", "bowling", "juggling balls", "yoga"]  # official names
SSV2 = ["Approaching something with your camera", "Attaching something to something",
        "Bending something so that it deforms", "Bending something until it breaks",
        "Burying something in something", "Closing something"]
MEAN, STD = 0.45, 0.225
DATA_CONFIG = {"num_frames": 4, "sampling_rate": 2, "crop_size": 32, "mean": [MEAN] * 3, "std": [STD] * 3}

# Nine decodable clips: (grey level, true class, rank of the true class in the stand-in's scores, codec).
VIDEOS = [(20, 0, 1, "h264"), (45, 0, 1, "vp9"), (70, 1, 2, "h264"), (95, 1, 1, "vp9"), (120, 2, 6, "h264"),
          (145, 2, 3, "vp9"), (170, 3, 1, "h264"), (195, 3, 5, "vp9"), (220, 3, 1, "h264")]
MISSING_CLASS, CORRUPT_CLASS = 1, 2


def write_solid_video(path: Path, level: int, codec: str, num_frames: int = 16, fps: int = 8) -> Path:
    """A clip of one grey level (H.264 .mp4 or VP9 .webm), encoded with PyAV like tests/videos.py does."""
    container = av.open(str(path), "w")
    stream = container.add_stream({"h264": "libx264", "vp9": "libvpx-vp9"}[codec], rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), level, np.uint8), format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def stand_in_logits() -> torch.Tensor:
    """Logits ``[len(VIDEOS), 6]``: video j puts its true class at rank VIDEOS[j][2] (distinct values, no ties)."""
    rows = []
    for j, (_, target, rank, _) in enumerate(VIDEOS):
        others = [c for c in range(6) if c != target]
        others = others[j % 5:] + others[: j % 5]  # vary which wrong class wins
        order = others[: rank - 1] + [target] + others[rank - 1:]
        row = torch.zeros(6)
        for pos, c in enumerate(order):
            row[c] = 3.0 - 0.5 * pos
        rows.append(row)
    return torch.stack(rows)


class StandIn(nn.Module):
    """Returns the logits of the video whose grey level its input shows (``x`` ``[B, 3, T, H, W]`` normalised)."""

    def __init__(self, labels: list[str]) -> None:
        super().__init__()
        levels = torch.tensor([(v[0] / 255.0 - MEAN) / STD for v in VIDEOS])
        self.register_buffer("levels", levels)
        self.register_buffer("table", stand_in_logits())
        self.pretrained_cfg = ModelConfig.from_data("stand_in", DATA_CONFIG, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0].mean(dim=(1, 2, 3))
        return self.table[(m[:, None] - self.levels[None]).abs().argmin(1)]


def expected_metrics(labels: list[str]) -> dict:
    """top-1 / top-5 / mean class / confusion from VIDEOS and the logits table, in plain Python."""
    table = stand_in_logits().tolist()
    preds = [max(range(6), key=lambda c: row[c]) for row in table]
    ranks = [1 + sum(v > row[t] for v in row) for row, (_, t, _, _) in zip(table, VIDEOS)]
    assert ranks == [v[2] for v in VIDEOS]
    by_class: dict[int, list[bool]] = {}
    for (_, t, r, _) in VIDEOS:
        by_class.setdefault(t, []).append(r == 1)
    return {
        "top1": sum(r == 1 for r in ranks) / len(VIDEOS),
        "top5": sum(r <= 5 for r in ranks) / len(VIDEOS),
        "mean_class_accuracy": sum(sum(v) / len(v) for v in by_class.values()) / len(by_class),
        "per_class": {labels[c]: {"accuracy": sum(v) / len(v), "videos": len(v)} for c, v in by_class.items()},
        "pairs": Counter((labels[t], labels[p]) for (_, t, _, _), p in zip(VIDEOS, preds)),
        "softmax": torch.tensor(table).softmax(-1).numpy(),
    }


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """The nine solid clips, encoded once: pool/<j>.<mp4|webm>, plus a corrupt file."""
    root = tmp_path_factory.mktemp("solid")
    for j, (level, _, _, codec) in enumerate(VIDEOS):
        write_solid_video(root / f"{j}.{'mp4' if codec == 'h264' else 'webm'}", level, codec)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    return root


def _clip_files(pool: Path) -> list[Path]:
    return [next(pool.glob(f"{j}.*")) for j in range(len(VIDEOS))]


def make_layout(fmt: str, pool: Path, dest: Path, labels: list[str]) -> dict:
    """The pool as ``fmt`` lays it out (with one missing and one corrupt video); kwargs for :func:`evaluate`."""
    dest.mkdir(parents=True, exist_ok=True)
    files = _clip_files(pool)
    if fmt == "kinetics400":  # official layout: one folder per class, <id>_<start:06d>_<end:06d>.<ext>
        rows = ["label,youtube_id,time_start,time_end,split"]
        for j, f in enumerate(files):
            label = labels[VIDEOS[j][1]]
            (dest / label).mkdir(exist_ok=True)
            shutil.copy(f, dest / label / f"vid{j:02d}_{j:06d}_{j + 10:06d}{f.suffix}")
            rows.append(f"{label},vid{j:02d},{j},{j + 10},val")
        rows.append(f"{labels[MISSING_CLASS]},gone,5,15,val")
        (dest / labels[CORRUPT_CLASS]).mkdir(exist_ok=True)
        shutil.copy(pool / "corrupt.mp4", dest / labels[CORRUPT_CLASS] / "bad_000001_000011.mp4")
        rows.append(f"{labels[CORRUPT_CLASS]},bad,1,11,val")
        (dest / "val.csv").write_text("\n".join(rows) + "\n")
        return {"dataset": "kinetics400", "annotations": dest / "val.csv", "data_root": dest}
    if fmt == "ssv2":  # validation.json + labels.json, files <id>.webm / .mp4 in one folder
        entries = []
        for j, f in enumerate(files):
            shutil.copy(f, dest / f"{100 + j}{f.suffix}")
            entries.append({"id": str(100 + j), "template": labels[VIDEOS[j][1]].replace("something", "[something]"),
                            "label": "x", "placeholders": []})
        entries.append({"id": "999", "template": labels[MISSING_CLASS].replace("something", "[something]")})
        shutil.copy(pool / "corrupt.mp4", dest / "998.mp4")
        entries.append({"id": "998", "template": labels[CORRUPT_CLASS].replace("something", "[something]")})
        (dest / "validation.json").write_text(json.dumps(entries))
        (dest / "labels.json").write_text(json.dumps({n: str(i) for i, n in enumerate(labels)}))
        return {"dataset": "ssv2", "annotations": dest / "validation.json", "labels": dest / "labels.json"}
    if fmt == "path_list":  # '<path> <class index>' relative to the list
        lines = []
        for j, f in enumerate(files):
            shutil.copy(f, dest / f"c{j}{f.suffix}")
            lines.append(f"c{j}{f.suffix} {VIDEOS[j][1]}")
        lines.append(f"nothing_here.mp4 {MISSING_CLASS}")
        shutil.copy(pool / "corrupt.mp4", dest / "broken.mp4")
        lines.append(f"broken.mp4 {CORRUPT_CLASS}")
        (dest / "list.txt").write_text("\n".join(lines) + "\n")
        return {"dataset": "path_list", "annotations": dest / "list.txt"}
    assert fmt == "folder"  # class names with '_' for spaces: matched by name all the same
    for j, f in enumerate(files):
        d = dest / labels[VIDEOS[j][1]].replace(" ", "_")
        d.mkdir(exist_ok=True)
        shutil.copy(f, d / f"f{j}{f.suffix}")
    shutil.copy(pool / "corrupt.mp4", dest / labels[CORRUPT_CLASS].replace(" ", "_") / "broken.mp4")
    return {"dataset": "folder", "data_root": dest}


def strip(report: dict) -> dict:
    """A report without what depends on the run (timing, process count)."""
    return {k: v for k, v in report.items() if k not in ("throughput", "run")}


# --------------------------------------------------------------------------- exact metrics, formats
def test_kinetics_metrics_are_exact(pool, tmp_path):
    kw = make_layout("kinetics400", pool, tmp_path / "k400", K400)
    out = tmp_path / "report.json"
    result = evaluate(model=StandIn(K400), out=out, workers=2, batch_size=2, **kw)
    report = json.loads(out.read_text())
    assert report == result.report
    exp = expected_metrics(K400)
    assert report["top1"] == exp["top1"] == 5 / 9 and report["top5"] == exp["top5"] == 8 / 9
    assert report["mean_class_accuracy"] == pytest.approx(exp["mean_class_accuracy"], abs=1e-15)
    assert report["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 0 + 2 / 3) / 4, abs=1e-15)
    assert report["per_class"] == exp["per_class"]
    assert report["num_videos"] == 9
    # 16-frame clips, 4 frames over 8: 5 distinct clips (starts 0, 2, 4, 6, 8) x 1 crop each.
    assert report["counts"] == {"listed": 11, "evaluated": 9, "missing": 1, "undecodable": 1, "classes": 4,
                                "clips": 45}
    assert report["missing"] == ["gone_000005_000015"]
    assert [u["video"] for u in report["undecodable"]] == ["archery/bad_000001_000011.mp4"]
    # Confusion matrix and the top confusions, counted here from the stand-in's argmax.
    conf = report["confusion"]
    got = Counter({(conf["classes"][i], conf["classes"][j]): n for i, row in enumerate(conf["matrix"])
                   for j, n in enumerate(row) if n})
    assert got == exp["pairs"]
    off = sorted(((-n, t, p) for (t, p), n in exp["pairs"].items() if t != p),
                 key=lambda x: (x[0], K400.index(x[1]), K400.index(x[2])))
    assert [(c["true"], c["predicted"], c["count"]) for c in report["top_confusions"]] == [(t, p, -n) for n, t, p in off]
    assert (tmp_path / "report.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["weights"]["model"] == "stand_in" and report["protocol"]["name"] == "kinetics_5x1"
    # Per-video scores: the softmax of the video's logits (every view shows the same level).
    lines = [json.loads(x) for x in scores_path(out).read_text().splitlines()]
    recs = {r["video"]: r for r in lines[1:]}
    assert len(recs) == 10
    for j, f in enumerate(_clip_files(pool)):
        rec = recs[f"{K400[VIDEOS[j][1]]}/vid{j:02d}_{j:06d}_{j + 10:06d}{f.suffix}"]
        assert rec["target"] == VIDEOS[j][1]
        np.testing.assert_allclose(rec["scores"], exp["softmax"][j], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["ssv2", "path_list", "folder"])
def test_every_annotation_format(pool, tmp_path, fmt):
    labels = SSV2 if fmt == "ssv2" else K400
    kw = make_layout(fmt, pool, tmp_path / fmt, labels)
    report = evaluate(model=StandIn(labels), out=tmp_path / "r.json", workers=0, **kw).report
    exp = expected_metrics(labels)
    assert (report["top1"], report["top5"], report["num_videos"]) == (exp["top1"], exp["top5"], 9)
    assert report["per_class"] == exp["per_class"]
    assert report["counts"]["undecodable"] == 1
    assert report["missing"] == {"ssv2": ["999"], "path_list": ["nothing_here.mp4"], "folder": []}[fmt]
    assert report["protocol"]["name"] == ("ssv2_1x3" if fmt == "ssv2" else "kinetics_5x1")


def test_class_names_are_checked(pool, tmp_path):
    kw = make_layout("kinetics400", pool, tmp_path / "k", K400)
    csv = Path(kw["annotations"])
    # Weights that do not know a class: one error naming it.
    with pytest.raises(EvalError, match="1 class\\(es\\) the weights do not know: 'bowling'"):
        labels = [c if c != "bowling" else "yoga" for c in K400[:5]]
        evaluate(model=StandIn(labels + ["x"]), out=tmp_path / "r.json", workers=0, **kw)
    # kinetics400 checks the official list; plain kinetics takes the user's own classes.
    csv.write_text(csv.read_text().replace("bowling", "my own class"))
    (tmp_path / "k" / "bowling").rename(tmp_path / "k" / "my own class")
    with pytest.raises(EvalError, match="not in the official kinetics400 list: 'my own class'"):
        evaluate(model=StandIn(K400), out=tmp_path / "r.json", workers=0, **kw)
    own = [c if c != "bowling" else "My_Own_Class" for c in K400]
    kw["dataset"] = "kinetics"
    report = evaluate(model=StandIn(own), out=tmp_path / "r2.json", workers=0, **kw).report
    assert report["top1"] == 5 / 9 and "My_Own_Class" in report["per_class"]


# --------------------------------------------------------------------------- protocol presets
def _starts(n: int, clip: int, clips: int, use_offset: bool) -> list[float]:
    delta = max(n - clip, 0)
    if use_offset:
        return [math.floor(delta / 2)] if clips == 1 else [i * math.floor(delta / (clips - 1)) for i in range(clips)]
    return [delta * i / clips for i in range(clips)]


def test_each_preset_samples_the_frames_and_crops_it_says(tmp_path):
    video = write_test_video(tmp_path / "v.mp4", num_frames=60, fps=20, width=96, height=64)
    cfg = {"num_frames": 4, "sampling_rate": 3, "crop_size": 32, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    assert set(list_protocols()) >= {"kinetics_5x1", "kinetics_5x3", "kinetics_hiera_5x3", "ssv2_1x3"}
    with VideoReader(video) as r:
        all_frames = r.get_frames(np.arange(60))
    for name in list_protocols():
        proto = load_protocol(name)
        assert proto.source, f"{name} does not name its source"
        s = ViewSampler(cfg, num_clips=proto.clips, num_crops=proto.crops, sampling=proto.sampling,
                        use_offset=proto.use_offset)
        with VideoReader(video) as r:
            clips = s.clips(r)
        if proto.sampling == "uniform":  # segment middles over the whole video (PySlowFast get_seq_frames)
            seg = 59 / 4
            want = [[(round(seg * i) + round(seg * (i + 1))) // 2 for i in range(4)]]
            assert want == [[7, 22, 37, 51]]
        else:  # num_frames over a 4 x 3 = 12 frame span: offsets 0, 11/3, 22/3, 11 truncated
            want = [[int(st + k * 11 / 3) for k in range(4)] for st in _starts(60, 12, proto.clips, proto.use_offset)]
        assert [decode_indices(c) for c in clips] == want, name
        # Crops: 1 = short side 32 * 256 / 224 -> 37, centre; 3 = short side 32, left / centre / right.
        x = s.transform(clips[0])
        assert x.shape == (proto.crops, 3, 4, 32, 32)
        frames = torch.from_numpy(all_frames[want[0]]).permute(3, 0, 1, 2).float() / 255
        short = 37 if proto.crops == 1 else 32
        long = math.floor(96 / 64 * short)
        big = F.interpolate(frames.reshape(1, 12, 64, 96), size=(short, long), mode="bilinear",
                            align_corners=False).reshape(3, 4, short, long)
        x0s = [math.ceil((long - 32) / 2)] if proto.crops == 1 else [0, math.ceil((long - 32) / 2), long - 32]
        y0 = math.ceil((short - 32) / 2)
        m, sd = torch.tensor(cfg["mean"]).view(3, 1, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1, 1)
        for k, x0 in enumerate(x0s):
            ref = (big[..., y0:y0 + 32, x0:x0 + 32] - m) / sd
            torch.testing.assert_close(x[k], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(EvalError, match="unknown protocol 'nope'"):
        load_protocol("nope")


# --------------------------------------------------------------------------- real model: CLI, predict, torchrun, resume
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Tiny MViTv2 weights and a path list of seven H.264 clips (one missing, one corrupt listed too)."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(3)
    model = create_model("mvitv2_xxs_8x64", num_classes=3)
    meta = {"model": "mvitv2_xxs_8x64", "labels": ["left", "right", "still"], **model.pretrained_cfg.data_config(),
            "num_frames": 4, "sampling_rate": 2}
    weights = save_weights(root / "tiny.safetensors", model.state_dict(), meta)
    lines = []
    for j in range(7):
        write_test_video(root / f"t{j}.mp4", num_frames=30 + 7 * j, fps=15, width=80 + 8 * j, height=64)
        lines.append(f"t{j}.mp4 {j % 3}")
    (root / "corrupt.mp4").write_bytes(b"not a video at all" * 50)
    lines += ["corrupt.mp4 1", "absent.mp4 2"]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    args = ["eval", "--dataset", "path_list", "--annotations", str(root / "list.txt"), "--weights", str(weights),
            "--protocol", "kinetics_5x3", "--clips", "2", "--crops", "1", "--batch-size", "4", "--workers", "1"]
    # One thread, as every process below: oneDNN may pick other kernels (and round differently) for
    # another thread count, and the reports are compared byte for byte.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(args + ["--out", str(root / "ref.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "weights": weights, "args": args, "ref": json.loads((root / "ref.json").read_text())}


def test_cli_report_and_errors(tiny, tmp_path, capsys):
    ref = tiny["ref"]
    assert ref["num_videos"] == 7 and ref["counts"]["missing"] == 1 and ref["counts"]["undecodable"] == 1
    assert ref["weights"]["sha256"] == __import__("hashlib").sha256(Path(tiny["weights"]).read_bytes()).hexdigest()
    assert ref["protocol"]["name"] == "kinetics_5x3 (2x1)" and ref["protocol"]["use_offset"] is True
    assert (ref["protocol"]["clips"], ref["protocol"]["crops"], ref["counts"]["clips"]) == (2, 1, 14)
    out = tmp_path / "r.json"
    capsys.readouterr()
    # --strict: the missing video is an error before anything runs.
    assert cli_main(tiny["args"] + ["--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 listed video(s) missing: 'absent.mp4'" in err and not out.exists()
    # The scores of an earlier run are never overwritten without --resume.
    assert cli_main(tiny["args"] + ["--out", str(tiny["root"] / "ref.json")]) == 2
    assert "pass --resume" in capsys.readouterr().err
    # --strict with an undecodable video: the report is written, the run fails with one line.
    (tmp_path / "l.txt").write_text(f"{tiny['root'] / 't0.mp4'} 0\n{tiny['root'] / 'corrupt.mp4'} 1\n")
    args = [a if a != str(tiny["root"] / "list.txt") else str(tmp_path / "l.txt") for a in tiny["args"]]
    assert cli_main(args + ["--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videoapp: error: 0 video(s) missing, 1 undecodable") and err.count("\n") == 1
    assert json.loads(out.read_text())["undecodable"][0]["video"].endswith("corrupt.mp4")
    assert cli_main(["eval", "--dataset", "kinetics", "--weights", str(tiny["weights"])]) == 2
    assert capsys.readouterr().err == "videoapp: error: --dataset kinetics needs --annotations FILE\n"


def test_eval_and_predict_give_the_same_scores(tiny, tmp_path):
    """Same views (3 clips x 3 crops, PySlowFast starts without offset) -> bit-identical per-video scores."""
    out = tmp_path / "r.json"
    assert cli_main(tiny["args"] + ["--protocol", "kinetics_hiera_5x3", "--clips", "3", "--crops", "3",
                                    "--limit", "3", "--out", str(out)]) == 0
    recs = {r["video"]: r for r in map(json.loads, scores_path(out).read_text().splitlines()[1:])}
    predictor = Predictor(tiny["weights"], num_clips=3, num_crops=3, batch_size=4)
    assert len(recs) == 3
    for j in (0, 1, 2):
        pred = predictor.predict(tiny["root"] / f"t{j}.mp4")
        assert pred.views == len(predictor.clip_indices(VideoReader(tiny["root"] / f"t{j}.mp4").info.num_frames)) * 3
        assert np.array_equal(np.asarray(recs[f"t{j}.mp4"]["scores"], np.float32), pred.scores), j


def test_two_processes_give_the_same_report(tiny, tmp_path):
    """torchrun --nproc-per-node 2 (gloo): 8 videos (one corrupt) split 4 + 4, each counted once, the same report."""
    out = tmp_path / "ref.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "videoapp", *tiny["args"], "--workers", "0", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["run"]["world_size"] == 2
    assert strip(report) == strip(tiny["ref"])
    assert scores_path(out).read_text() == scores_path(tiny["root"] / "ref.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.confusion.png", "ref.json", "ref.scores.jsonl"]


def test_kill_and_resume_gives_the_same_report(tiny, tmp_path):
    out = tmp_path / "ref.json"
    scores = scores_path(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "videoapp", *tiny["args"], "--workers", "0", "--out", str(out)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if scores.exists() and len(scores.read_text().splitlines()) >= 2:  # header + 1 video
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert scores.exists(), proc.stderr.read().decode()[-2000:]
    done = len(scores.read_text().splitlines()) - 1
    assert 1 <= done < 8 and not out.exists(), "the run was not interrupted"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(tiny["args"] + ["--out", str(out), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["run"]["resumed_videos"] == done
    assert strip(report) == strip(tiny["ref"])
    assert scores.read_text() == scores_path(tiny["root"] / "ref.json").read_text()
