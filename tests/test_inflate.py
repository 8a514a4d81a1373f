"""Inflation of 2-D image checkpoints into 3-D video models.

The property that makes inflation correct: the inflated video model on a clip
of T identical frames gives the image model's logits on that frame (max |diff|
<= 1e-5 x max |logit|), with random weights whose norms, biases and position
embeddings are re-randomised so nothing is at a neutral default.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from videoapp.models.inflate import (
    centre_frame_kernel,
    inflate_checkpoint,
    inflate_state_dict,
    resize_pos_embed_2d,
)
from videoapp.models.registry import create_model
from videoapp.weights import CheckpointError

from random_weights import random_model, rel_err, with_state

timm = pytest.importorskip("timm")


def still_clip(image: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 3, frames, H, W]`` of identical frames."""
    return image[:, :, None].expand(-1, -1, frames, -1, -1).contiguous()


@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory) -> tuple[nn.Module, str]:
    """A random timm ``hiera_tiny_224`` and its state dict saved as a timm checkpoint file."""
    model = random_model(lambda: timm.create_model("hiera_tiny_224", pretrained=False), seed=11)
    path = tmp_path_factory.mktemp("ckpt") / "hiera_tiny_224_timm.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, str(path)


# --------------------------------------------------------------------------- identity on still clips
@pytest.mark.slow
def test_timm_tiny_checkpoint_inflates_to_identity(timm_tiny):
    image_model, path = timm_tiny
    state, report = inflate_checkpoint(path, "hiera_tiny_16x224")
    assert report.source == "timm" and report.num_classes == 1000
    assert report.centre_frame == ["patch_embed.proj.weight"]
    assert report.zeroed == ["pos_embed_temporal"] and report.resized == [] and report.fresh == []
    video = with_state(lambda: create_model("hiera_tiny_16x224", num_classes=1000), state)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        expected = image_model(x)
        got = video(still_clip(x, 16))
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.slow
def test_small_state_dict_inflates_to_identity():
    image_model = random_model(lambda: create_model("hiera_small_224"), seed=13)
    with torch.device("meta"):
        video = create_model("hiera_small_16x224", num_classes=1000)
    state, report = inflate_state_dict(image_model.state_dict(), video)
    assert report.unused == [] and report.fresh == []
    video = with_state(lambda: create_model("hiera_small_16x224", num_classes=1000), state)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(14))
    with torch.inference_mode():
        assert rel_err(video(still_clip(x, 16)), image_model(x)) <= 1e-5


def test_spatial_pos_embed_is_resized_only_for_another_grid():
    image_model = random_model(lambda: create_model("hiera_tiny_224"), seed=15)
    image_state = image_model.state_dict()
    # Same grid (56 x 56): copied bit for bit.
    with torch.device("meta"):
        same = create_model("hiera_tiny_16x224", num_classes=1000)
    state, report = inflate_state_dict(image_state, same)
    assert torch.equal(state["pos_embed_spatial"], image_state["pos_embed"]) and report.resized == []
    assert not state["pos_embed_temporal"].any()
    # 128 px (32 x 32 tokens): resized, and still the image model at that size.
    def video_128() -> nn.Module:
        return create_model("hiera_tiny_16x224", num_classes=1000, input_size=(4, 128, 128))

    with torch.device("meta"):
        video = video_128()
    state, report = inflate_state_dict(image_state, video)
    assert report.resized == ["pos_embed_spatial"]
    resized = resize_pos_embed_2d(image_state["pos_embed"], (56, 56), (32, 32))
    assert torch.equal(state["pos_embed_spatial"], resized)
    video = with_state(video_128, state)
    image_128 = with_state(lambda: create_model("hiera_tiny_224", input_size=(128, 128)),
                           {**image_state, "pos_embed": resized})
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        assert rel_err(video(still_clip(x, 4)), image_128(x)) <= 1e-5


def test_centre_frame_kernel_sees_one_frame():
    w2 = torch.randn(8, 3, 7, 7)
    w3 = centre_frame_kernel(w2, 3)
    assert w3.shape == (8, 3, 3, 7, 7) and torch.equal(w3[:, :, 1], w2)
    assert not w3[:, :, 0].any() and not w3[:, :, 2].any()
    frames = torch.randn(1, 3, 4, 16, 16)  # different frames: output t is conv2d of frame 2t
    out = F.conv3d(frames, w3, stride=(2, 4, 4), padding=(1, 3, 3))
    for t in range(2):
        assert torch.allclose(out[:, :, t], F.conv2d(frames[:, :, 2 * t], w2, stride=4, padding=3), atol=1e-5)


# --------------------------------------------------------------------------- heads and errors
def test_another_class_count_gets_a_fresh_head(timm_tiny):
    _, path = timm_tiny
    state, report = inflate_checkpoint(path, "hiera_tiny_16x224", num_classes=400)
    assert report.num_classes == 400 and sorted(report.fresh) == ["head.fc.bias", "head.fc.weight"]
    assert state["head.fc.weight"].shape == (400, 768)
    with_state(lambda: create_model("hiera_tiny_16x224"), state)  # loads strictly


def test_image_of_another_size_is_a_clear_error(timm_tiny):
    _, path = timm_tiny
    with pytest.raises(CheckpointError, match="do not fit hiera_small_16x224.*blocks.10") as err:
        inflate_checkpoint(path, "hiera_small_16x224")
    assert "\n" not in str(err.value)


def test_unused_image_keys_are_an_error(timm_tiny, tmp_path):
    image_model, _ = timm_tiny
    path = tmp_path / "extra.pth"
    torch.save({**image_model.state_dict(), "extra.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="does not use: extra.weight"):
        inflate_checkpoint(path, "hiera_tiny_16x224")


def test_non_hiera_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint format"):
        inflate_checkpoint(path, "hiera_tiny_16x224")
