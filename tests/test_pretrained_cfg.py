"""``create_model`` puts one typed ``pretrained_cfg`` (ModelConfig) on every model, true to the module as built."""
from __future__ import annotations

import pytest
import torch

from videoapp.models import ModelConfig, create_model, get_model_entry
from videoapp.weights import CheckpointError, save_weights


def test_registry_defaults_and_weights_metadata(tmp_path):
    model = create_model("mvitv2_xxs_8x64", num_classes=3)
    cfg = model.pretrained_cfg
    entry = get_model_entry("mvitv2_xxs_8x64").data
    assert isinstance(cfg, ModelConfig) and cfg.model_name == "mvitv2_xxs_8x64" and cfg.labels is None
    assert (cfg.num_frames, cfg.sampling_rate, cfg.crop_size) == (entry["num_frames"], entry["sampling_rate"],
                                                                  entry["crop_size"])
    assert cfg.task == "classification" and cfg.channel_order == "rgb" and cfg.sampling == "rate"
    assert not hasattr(model, "labels") and not hasattr(model, "data_config") and not hasattr(model, "model_name")
    path = save_weights(tmp_path / "w.safetensors", model.state_dict(),
                        {"model": "mvitv2_xxs_8x64", "labels": ["a", "b", "c"], "sampling_rate": 3,
                         "channel_order": "bgr", "sampling": "uniform"})
    loaded = create_model("mvitv2_xxs_8x64", pretrained=str(path)).pretrained_cfg
    assert loaded == cfg.replace(labels=("a", "b", "c"), sampling_rate=3, channel_order="bgr", sampling="uniform")
    with pytest.raises(Exception):
        loaded.num_frames = 4  # frozen
    assert create_model("mvitv2_xxs_8x64_ava").pretrained_cfg.data_config()["task"] == "detection"


@pytest.mark.parametrize("name, kwargs, want", [
    ("mvitv2_xxs_8x64", {"num_frames": 4, "crop_size": 32}, (4, 32)),
    ("hiera_xxs_8x64", {"num_frames": 4, "crop_size": 32}, (4, 32)),
    ("hiera_xxs_8x64", {"input_size": (4, 96, 96)}, (4, 96)),
    ("twins_svt_xxs_8x64", {"crop_size": 96}, (8, 96)),
    ("mvitv2_xxs_8x64_ava", {"num_frames": 4, "crop_size": 32}, (4, 32)),
])
def test_size_overrides_reach_the_cfg(name, kwargs, want):
    model = create_model(name, **kwargs)
    cfg = model.pretrained_cfg
    assert (cfg.num_frames, cfg.crop_size) == want
    assert cfg.sampling_rate == get_model_entry(name).data["sampling_rate"]  # untouched
    # The model really takes clips of the configured size.
    x = torch.randn(1, 3, cfg.num_frames, cfg.crop_size, cfg.crop_size)
    with torch.inference_mode():
        if cfg.task == "detection":
            out = model.eval()(x, torch.tensor([[0, 2.0, 2.0, cfg.crop_size - 2.0, cfg.crop_size - 2.0]]))
        else:
            out = model.eval()(x)
    assert out.shape[0] == 1


@pytest.mark.parametrize("name, size", [
    ("mvitv2_xxs_8x64", {"num_frames": 16}),    # 16-frame weights of an 8-frame variant (rel-pos tables differ)
    ("mvitv2_xxs_8x64", {"crop_size": 96}),
    ("hiera_xxs_8x64", {"num_frames": 4, "crop_size": 32}),  # position embeddings differ
])
def test_weights_at_another_size_load_strictly(name, size, tmp_path):
    torch.manual_seed(0)
    trained = create_model(name, num_classes=2, **size).eval()
    default = create_model(name, num_classes=2).state_dict()
    assert any(default[k].shape != v.shape for k, v in trained.state_dict().items())  # a real size difference
    meta = {"model": name, "labels": ["x", "y"], **trained.pretrained_cfg.data_config()}
    path = save_weights(tmp_path / "w.safetensors", trained.state_dict(), meta)
    again = create_model(name, pretrained=str(path)).eval()
    cfg = again.pretrained_cfg
    assert (cfg.num_frames, cfg.crop_size) == (trained.pretrained_cfg.num_frames, trained.pretrained_cfg.crop_size)
    assert cfg.labels == ("x", "y")
    for k, v in trained.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    x = torch.randn(1, 3, cfg.num_frames, cfg.crop_size, cfg.crop_size)
    with torch.inference_mode():
        assert torch.equal(again(x), trained(x))
    # An explicit, different size is still checked strictly against the weights.
    other = {k: v * 2 for k, v in size.items()}
    with pytest.raises(CheckpointError, match="shape mismatch"):
        create_model(name, pretrained=str(path), **other)
