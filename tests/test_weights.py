"""Weights files: safetensors with metadata, checkpoint reading, strict import errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from videoapp.models import create_model
from videoapp.models.pretrained import import_checkpoint, load_raw_checkpoint, metadata_for
from videoapp.weights import CheckpointError, load_weights, read_metadata, save_weights

TINY = "mvitv2_xxs_8x64"


def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path):
    state = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    meta = {"model": TINY, "labels": ["pan left", "zoom_in"], "num_frames": 8, "mean": [0.1, 0.2, 0.3],
            "metrics": {"top1": 0.93}, "source": "test"}
    path = save_weights(tmp_path / "w.safetensors", state, meta)
    loaded, got = load_weights(path)
    assert set(loaded) == set(state)
    assert torch.equal(loaded["a.weight"], state["a.weight"]) and torch.equal(loaded["b"], state["b"])
    assert got == meta
    assert read_metadata(path)["labels"] == ["pan left", "zoom_in"]
    assert not list(tmp_path.glob("*.tmp")), "atomic write left its temporary file"
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others (safetensors alone writes 0600)


def test_save_requires_model_name(tmp_path):
    with pytest.raises(ValueError, match="model"):
        save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(1)}, {"labels": []})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not a checkpoint\n" * 10), "not a readable checkpoint"),
        (lambda p: torch.save({"epoch": 3}, p), "holds no tensors"),
    ],
    ids=["missing", "directory", "empty", "text", "no-tensors"],
)
def test_unreadable_checkpoints_are_one_line_errors(tmp_path, make, message):
    path = tmp_path / "ckpt.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_raw_checkpoint(path)
    assert "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model_state": {"w": _Evil()}}, f)
    with pytest.raises(CheckpointError):
        load_raw_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_containers_and_ddp_prefix_are_unwrapped(tmp_path):
    path = tmp_path / "ckpt.pyth"
    torch.save({"model_state": {"module.x": torch.ones(2)}, "epoch": 1, "cfg": "..."}, path)
    state, meta = load_raw_checkpoint(path)
    assert list(state) == ["x"] and meta == {}


def test_own_weights_import_round_trip_and_labels(tmp_path):
    model = create_model(TINY, num_classes=3)
    path = tmp_path / "tiny.safetensors"
    save_weights(path, model.state_dict(), {"model": TINY, "labels": ["a", "b", "c"], "num_frames": 8})
    state, report = import_checkpoint(path, TINY)
    assert report.source == "videoapp" and report.num_classes == 3 and report.labels == ["a", "b", "c"]
    assert report.data_config == {"num_frames": 8}
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    again = create_model(TINY, pretrained=str(path))
    assert again.pretrained_cfg.labels == ("a", "b", "c") and again.head.fc.out_features == 3
    # A new head keeps the backbone and drops the labels.
    probe = create_model(TINY, pretrained=str(path), num_classes=5)
    assert probe.head.fc.out_features == 5 and probe.pretrained_cfg.labels is None
    key = next(k for k in state if not k.startswith("head."))
    assert torch.equal(probe.state_dict()[key], state[key])


def test_import_names_mismatching_keys(tmp_path):
    model = create_model(TINY, num_classes=3)
    state = model.state_dict()
    bad_key = next(k for k in state if k.endswith("weight") and state[k].ndim == 2 and not k.startswith("head"))
    state[bad_key] = torch.zeros(state[bad_key].shape[0] + 1, state[bad_key].shape[1])
    state["extra.param"] = torch.zeros(1)
    dropped = next(k for k in state if k.endswith("bias") and not k.startswith("head"))
    del state[dropped]
    path = tmp_path / "bad.safetensors"
    save_weights(path, state, {"model": TINY})
    with pytest.raises(CheckpointError) as err:
        import_checkpoint(path, TINY)
    text = str(err.value)
    assert bad_key in text and "extra.param" in text and dropped in text and "\n" not in text


def test_weights_for_another_model_are_refused(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(1)}, {"model": "mvitv2_s_16x4"})
    with pytest.raises(CheckpointError, match="weights are for 'mvitv2_s_16x4'"):
        import_checkpoint(path, TINY)


def test_unknown_model_is_a_checkpoint_error(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(1)}, {"model": TINY})
    with pytest.raises(CheckpointError, match="unknown model 'mvitv9'"):
        import_checkpoint(path, "mvitv9")


def test_metadata_for_records_preprocessing(tmp_path):
    model = create_model(TINY, num_classes=2)
    path = save_weights(tmp_path / "w.safetensors", model.state_dict(), {"model": TINY, "labels": ["x", "y"]})
    _, report = import_checkpoint(path, TINY)
    meta = metadata_for(report, source="unit-test")
    assert meta["model"] == TINY and meta["labels"] == ["x", "y"] and meta["source"] == "unit-test"
    assert {"num_frames", "sampling_rate", "crop_size", "mean", "std"} <= set(meta)


def test_ssv2_slowfast_import_records_its_test_protocol(tmp_path):
    """174 classes from SlowFast: SSv2 names, uniform sampling, RGB, channel stats as SlowFast applied them."""
    from test_mvitv2 import ours_to_slowfast

    from videoapp.labels import load_labels
    from videoapp.models.pretrained import ssv2_slowfast_preprocessing

    model = create_model(TINY, num_classes=174)
    path = tmp_path / "ssv2.pyth"
    torch.save({"model_state": ours_to_slowfast(model.state_dict())}, path)
    _, report = import_checkpoint(path, TINY)
    assert report.source == "slowfast" and report.labels == list(load_labels("ssv2"))
    assert report.data_config["sampling"] == "uniform" and report.data_config["channel_order"] == "rgb"
    # ImageNet stats were applied to OpenCV's BGR frames before the channel flip.
    pre = ssv2_slowfast_preprocessing("mvitv2_l_40x3")
    assert pre["mean"] == [0.406, 0.456, 0.485] and pre["std"] == [0.225, 0.224, 0.229]
