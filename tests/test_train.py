"""Training: config, dataset readers, the loop (smoke, kill + resume, fine-tuning) and 2-process DDP."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from videoapp.cli import main as cli_main
from videoapp.config import ConfigError, config_from_dict, config_to_dict, load_config
from videoapp.data import datasets as D
from videoapp.data.synthetic import CAMERA_MOTIONS, cached_pool, write_camera_motion_videos
from videoapp.engine.train import lr_at, train

from servers import free_port

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- config
def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: hiera_xxs_8x64, kwargs: {drop_path_rate: 0.1}}\n"
                    "optim: {lr: 1e-3}\ntrain: {epochs: 3}\n")
    cfg = load_config(path, ["train.epochs=5", "optim.betas=[0.8, 0.9]", "model.kwargs.head_dropout=0.2",
                             "data.pool.classes=[pan_left, pan_right]", "train.export=null"])
    assert cfg.model.name == "hiera_xxs_8x64" and cfg.optim.lr == 1e-3  # "1e-3" is a string in YAML 1.1
    assert cfg.train.epochs == 5 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.model.kwargs == {"drop_path_rate": 0.1, "head_dropout": 0.2}
    assert cfg.data.pool.classes == ["pan_left", "pan_right"] and cfg.train.export is None
    assert config_from_dict(config_to_dict(cfg)) == cfg
    for bad, words in [
        (["train.epoch=3"], "train.epochs"),            # typo: suggestion
        (["train.epochs=three"], "integer"),
        (["optim.lr=-1"], "optim.lr"),
        (["data.source=youtube"], "data.source"),
        (["nonsense"], "KEY=VALUE"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_config(path, bad)
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "missing.yaml")


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


# --------------------------------------------------------------------------- dataset readers
@pytest.fixture(scope="module")
def clip_tree(tmp_path_factory):
    """Six generated H.264 clips in a class-per-folder tree (two camera motions)."""
    root = tmp_path_factory.mktemp("clips")
    items = write_camera_motion_videos(root / "folder", 3, classes=("pan_left", "zoom_in"), seed=4,
                                       min_frames=20, max_frames=24)
    return root, items


def test_class_per_folder_dataset(clip_tree):
    root, items = clip_tree
    ann = D.read_folder(root / "folder")
    assert ann.classes == ["pan_left", "zoom_in"] and len(ann) == 6
    assert sorted((p.name, ann.classes[i]) for p, i in ann.items) == sorted((p.name, lab) for p, lab in items)
    ds = D.VideoDataset(ann, num_frames=8, sampling_rate=2, crop_size=32, mean=[0.5] * 3, std=[0.25] * 3, train=True)
    ds.set_epoch(1)
    x, y = ds[0]
    assert x.shape == (3, 8, 32, 32) and x.dtype == torch.float32 and y == ann.items[0][1]
    x2, _ = ds[0]
    assert torch.equal(x, x2)  # the same (seed, epoch, index) gives the same clip
    ds.set_epoch(2)
    assert not torch.equal(x, ds[0][0])
    val = D.VideoDataset(ann, num_frames=8, sampling_rate=2, crop_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                         train=False, sampling="uniform")
    assert val[3][0].shape == (3, 8, 32, 32)


def test_kinetics_csv_and_path_list_round_trip(clip_tree, tmp_path):
    _, items = clip_tree
    # Kinetics layout: <root>/<split>/<label>/<youtube_id>_<start>_<end>.mp4
    rows = []
    for k, (path, label) in enumerate(items):
        yid, t0, t1 = f"vid{k:08d}-x", 10 * k, 10 * k + 10
        dest = tmp_path / "k" / "train" / label / f"{D.kinetics_stem(yid, t0, t1)}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        rows.append((label, yid, t0, t1, "train"))
    rows.append(("zoom_in", "notdownloaded", 0, 10, "train"))  # Kinetics always misses some videos
    csv_path = D.write_kinetics_csv(tmp_path / "train.csv", rows)
    assert csv_path.read_text().splitlines()[0] == "label,youtube_id,time_start,time_end,split"
    ann = D.read_kinetics_csv(csv_path, tmp_path / "k")
    assert ann.classes == ["pan_left", "zoom_in"] and len(ann) == 6 and ann.missing == 1
    assert [ann.classes[i] for _, i in ann.items] == [r[0] for r in rows[:6]]
    assert D.read_annotations("auto", csv_path, tmp_path / "k").items == ann.items
    with pytest.raises(D.DatasetError, match="no videos found"):
        D.read_kinetics_csv(csv_path, tmp_path / "k", split="val")
    # The same videos as a PySlowFast "path label" list, relative to the root.
    lst = D.write_path_list(tmp_path / "train.txt", [(p, i) for p, i in ann.items], root=tmp_path / "k")
    back = D.read_path_list(lst, tmp_path / "k", classes=ann.classes)
    assert back.items == ann.items and back.classes == ann.classes
    with pytest.raises(D.DatasetError, match="not a Kinetics CSV"):
        D.read_kinetics_csv(lst, tmp_path / "k")


def test_ssv2_json_round_trip(clip_tree, tmp_path):
    from videoapp.labels import load_labels

    _, items = clip_tree
    templates = {"pan_left": "Approaching [something] with your camera", "zoom_in": "Moving [something] down"}
    entries = []
    for k, (path, label) in enumerate(items):
        vid = str(1000 + k)
        shutil.copyfile(path, tmp_path / f"{vid}.mp4")  # the real set is <id>.webm; any video extension works
        entries.append({"id": vid, "template": templates[label], "placeholders": ["a cup"]})
    js = D.write_ssv2(tmp_path / "train.json", entries)
    ann = D.read_ssv2(js, tmp_path)
    ssv2 = list(load_labels("ssv2"))
    assert ann.classes == ssv2 and len(ann) == 6
    for (path, idx), e in zip(ann.items, entries):
        assert path.stem == e["id"] and ssv2[idx] == e["template"].replace("[", "").replace("]", "")
    # With its own labels file ({name: "index"}), as the official release ships it.
    labels = D.write_ssv2_labels(tmp_path / "labels.json", sorted({ssv2[i] for _, i in ann.items}))
    own = D.read_ssv2(js, tmp_path, classes=labels)
    assert len(own.classes) == 2 and [own.classes[i] for _, i in own.items] == [ssv2[i] for _, i in ann.items]
    with pytest.raises(D.DatasetError, match="expected a JSON list"):
        (tmp_path / "bad.json").write_text('{"id": 1}')
        D.read_ssv2(tmp_path / "bad.json", tmp_path)


# --------------------------------------------------------------------------- the training loop
def _tiny_config(tmp: Path, out: str, **train) -> dict:
    return {
        "model": {"name": "mvitv2_xxs_8x64"},
        "data": {"source": "camera_motion", "num_frames": 8, "sampling_rate": 4, "crop_size": 64,
                 "batch_size": 4, "pool": {"train_clips": 40, "val_clips": 10, "cache_dir": str(tmp / "pools"),
                                           "workers": 1}},
        "optim": {"lr": 1e-3, "warmup_epochs": 0.5, "accum_steps": 2},
        "train": {"epochs": 2, "seed": 3, "out_dir": str(tmp / out), "bf16": False, "threads": 1,
                  "steps_per_epoch": 3, "log_every": 1, "progress": False, **train},
    }


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = _tiny_config(tmp, "unused")
    p = cfg["data"]["pool"]
    for split, n, seed in (("train", p["train_clips"], 0), ("test", p["val_clips"], 1)):
        cached_pool(p["cache_dir"], n, split=split, seed=seed, num_frames=8, sampling_rate=4, crop_size=64)
    return tmp


def _state(path: Path) -> dict:
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)


def test_train_smoke_outputs(pool_dir):
    from videoapp.weights import read_metadata

    result = train(config_from_dict(_tiny_config(pool_dir, "smoke")), config_name="tiny.yaml")
    out = pool_dir / "smoke"
    assert result.step == 6 and result.epochs_done == 2 and result.weights == out / "model.safetensors"
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "config.yaml", "log.jsonl", "curves.png",
                                              "model.safetensors"}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "val_confusion"} <= set(epochs[0])
    assert [r["step"] for r in records if r["type"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = read_metadata(out / "model.safetensors")
    assert meta["model"] == "mvitv2_xxs_8x64" and meta["labels"] == list(CAMERA_MOTIONS)
    assert (meta["num_frames"], meta["sampling_rate"], meta["crop_size"], meta["sampling"]) == (8, 4, 64, "rate")
    assert meta["source"] == "videoapp train tiny.yaml" and "val_top1" in meta["metrics"]
    assert meta["train"]["steps"] == 6
    # A finished run is not overwritten by accident.
    with pytest.raises(ValueError, match="--resume"):
        train(config_from_dict(_tiny_config(pool_dir, "smoke")))


def test_kill_and_resume_continues_with_identical_state(pool_dir):
    """A run killed (SIGKILL) after a checkpoint and resumed ends exactly where an uninterrupted run ends."""
    # 3 epochs x 3 steps, 2 micro-batches per step, a checkpoint after every step.
    ref = config_from_dict(_tiny_config(pool_dir, "ref", epochs=3, checkpoint_every=1))
    train(ref)
    cfg = _tiny_config(pool_dir, "killed", epochs=3, checkpoint_every=1)
    cfg_path = pool_dir / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    ckpt = pool_dir / "killed" / "checkpoint.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "videoapp", "train", str(cfg_path)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    saved = _state(pool_dir / "killed")
    assert 1 <= saved["step"] < 9, "the run was not interrupted"

    result = train(config_from_dict(cfg), resume=True)
    assert result.step == 9 and result.epochs_done == 3
    a, b = _state(pool_dir / "ref"), _state(pool_dir / "killed")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert ka == kb and all(torch.equal(torch.as_tensor(va[n]), torch.as_tensor(vb[n])) for n in va)

    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("time_s", "clips_per_s")} for r in recs]

    assert strip(a["log"]) == strip(b["log"])  # the same log, nothing duplicated by the restart
    lines = (pool_dir / "killed" / "log.jsonl").read_text().splitlines()
    assert strip([json.loads(x) for x in lines]) == strip(a["log"])


def test_fine_tune_new_head_with_frozen_backbone(pool_dir):
    from safetensors.torch import load_file

    from videoapp.weights import read_metadata

    base = pool_dir / "smoke" / "model.safetensors"
    if not base.exists():
        train(config_from_dict(_tiny_config(pool_dir, "smoke")))
    cfg = _tiny_config(pool_dir, "probe", epochs=1)
    cfg["model"].update(pretrained=str(base), freeze_backbone=True)
    cfg["data"]["pool"]["classes"] = ["pan_left", "pan_right", "static"]
    result = train(config_from_dict(cfg))
    before, after = load_file(str(base)), load_file(str(result.weights))
    assert after["head.fc.weight"].shape[0] == 3
    for k, v in before.items():
        if not k.startswith("head."):
            assert torch.equal(v, after[k]), f"{k} changed although the backbone is frozen"
    meta = read_metadata(result.weights)
    assert meta["labels"] == ["pan_left", "pan_right", "static"]


def test_distill_loss_and_teacher_renormalisation():
    from videoapp.engine.train import Teacher, distill_loss

    s = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert distill_loss(s, s.clone(), 2.0).abs().item() < 1e-6
    t = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    p_t, log_p_s = (t / 2).softmax(-1), (s / 2).log_softmax(-1)
    expected = 4 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert torch.allclose(distill_loss(s, t, 2.0), expected, atol=1e-6)
    # The teacher sees the same pixels normalised its own way.
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.mean(dim=(2, 3, 4))

    pixels = torch.rand(2, 3, 2, 4, 4)
    s_mean, s_std, t_mean, t_std = [0.45] * 3, [0.225] * 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    student_x = (pixels - torch.tensor(s_mean).view(1, 3, 1, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1, 1)
    teacher = Teacher(Probe(), s_mean, s_std, t_mean, t_std)
    teacher.train()
    assert not teacher.training and not teacher(student_x).requires_grad
    want = (pixels - torch.tensor(t_mean).view(1, 3, 1, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1, 1)
    assert torch.allclose(seen["x"], want, atol=1e-5)


def test_distillation_run_and_teacher_errors(pool_dir):
    """A Hiera student distils from an MViTv2 teacher (other normalisation); unfit teachers are one-line errors."""
    from videoapp.engine.train import TrainError
    from videoapp.weights import read_metadata

    teacher = pool_dir / "smoke" / "model.safetensors"
    if not teacher.exists():
        train(config_from_dict(_tiny_config(pool_dir, "smoke")))
    cfg = _tiny_config(pool_dir, "distilled", epochs=1)
    cfg["model"]["name"] = "hiera_xxs_st_8x64"
    cfg["distill"] = {"teacher": str(teacher), "alpha": 0.7, "temperature": 3.0}
    result = train(config_from_dict(cfg))
    assert result.step == 3
    meta = read_metadata(result.weights)
    assert meta["model"] == "hiera_xxs_st_8x64" and meta["train"]["config"]["distill"]["teacher"] == str(teacher)
    bad = _tiny_config(pool_dir, "bad_teacher", epochs=1)
    bad["data"]["pool"]["classes"] = ["pan_left", "pan_right", "static"]
    bad["distill"] = {"teacher": str(teacher)}
    with pytest.raises(TrainError, match="its labels are not the training labels") as err:
        train(config_from_dict(bad))
    assert "\n" not in str(err.value)
    bad = _tiny_config(pool_dir, "bad_teacher2", epochs=1)
    bad["data"].update(sampling_rate=2)
    bad["distill"] = {"teacher": str(teacher)}
    with pytest.raises(TrainError, match="sampling_rate is 4, the training clips have 2"):
        train(config_from_dict(bad))
    bad["distill"] = {"teacher": str(pool_dir / "missing.safetensors")}
    with pytest.raises(TrainError, match="distill.teacher"):
        train(config_from_dict(bad))


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["train", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such config file" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 1}\n")
    assert cli_main(["train", str(cfg), "--set", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert cli_main(["train", str(cfg), "--set", "data.source=folder", "--set", f"data.train={tmp_path}/none"]) == 2
    assert "no such" in capsys.readouterr().err
    assert cli_main(["train", str(cfg), "--print-config", "--set", "optim.lr=0.01"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.01


def test_shipped_train_configs_load():
    for path in sorted((REPO / "configs" / "train").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train.export and cfg.train.export.startswith("weights/"), path


# --------------------------------------------------------------------------- distributed
def test_two_process_ddp_gloo(pool_dir, tmp_path):
    import torch.multiprocessing as mp

    cfg = _tiny_config(pool_dir, "ddp", epochs=2)
    cfg["optim"]["accum_steps"] = 1
    cfg["train"]["steps_per_epoch"] = 2
    mp.spawn(_ddp_entry, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 4
    # DDP keeps the replicas identical: every parameter equal on both ranks after the steps.
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # Only rank 0 wrote files.
    assert r1["files"] == []
    out = pool_dir / "ddp"
    assert {Path(f).name for f in r0["files"]} == {p.name for p in out.iterdir()} == {
        "checkpoint.pt", "config.yaml", "log.jsonl", "curves.png", "model.safetensors"}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "step"] == [1, 2, 3, 4]  # logged once, not per rank
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], r0["params"][k]) for k in saved)
    # The replicas trained: they moved away from the initial weights.
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    assert any(not torch.equal(init[k], r0["params"][k]) for k in init)


def _ddp_entry(rank: int, world: int, port: int, cfg: dict, result_dir: str) -> None:
    import videoapp.engine.train as T

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    built = {}
    real_build = T.build_model

    def build_and_keep(*a, **kw):
        model = real_build(*a, **kw)
        built["model"] = model
        if rank == 0:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, Path(result_dir) / "init.pt")
        return model

    T.build_model = build_and_keep
    result = T.train(config_from_dict(cfg))
    params = {k: v.detach().clone() for k, v in built["model"].state_dict().items()}
    torch.save({"files": [str(p) for p in result.files_written], "rank": result.rank, "world": result.world_size,
                "step": result.step, "params": params}, Path(result_dir) / f"rank{rank}.pt")
