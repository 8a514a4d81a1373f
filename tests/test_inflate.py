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
from videoapp.models.mvitv2 import convert_timm
from videoapp.models import create_model
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


# --------------------------------------------------------------------------- MViTv2 (timm mvitv2_* -> mvitv2_*_16x224)
MVIT_SIZES = ["tiny", "small", "base", "large"]


def timm_mvit(size: str, seed: int, img_size: int = 224) -> nn.Module:
    """A random timm ImageNet ``mvitv2_<size>`` (no cls token, mean pooling) at ``img_size``."""
    return random_model(lambda: timm.create_model(f"mvitv2_{size}", pretrained=False, img_size=img_size), seed=seed)


def to_official_mvit(timm_state: dict[str, torch.Tensor], depths: tuple[int, ...], expand_attn: bool) -> dict:
    """timm ``mvitv2_*`` keys -> the official MViT repo's ``MViTv2_*_in1k.pyth`` keys (``blocks.N``, ``proj``,
    ``head.projection``): the inverse of timm's own ``checkpoint_filter_fn``."""
    starts = [sum(depths[:i]) for i in range(len(depths))]
    out = {}
    for key, value in timm_state.items():
        if key.startswith("stages."):
            _, s, _, j, rest = key.split(".", 4)
            rest = rest.replace("shortcut_proj_attn." if expand_attn else "shortcut_proj_mlp.", "proj.")
            key = f"blocks.{starts[int(s)] + int(j)}.{rest}"
        out[key.replace("head.fc.", "head.projection.")] = value
    return out


@pytest.mark.parametrize("size", MVIT_SIZES)
def test_timm_mvitv2_fits_its_video_variant(size):
    """Every timm key has its place (shapes checked on the meta device): the stem and all Q/K/V pooling
    kernels go centre-frame, every rel_pos_t starts at zero, nothing else changes."""
    with torch.device("meta"):
        image = timm.create_model(f"mvitv2_{size}", pretrained=False)
        video = create_model(f"mvitv2_{size}_16x224", num_classes=1000)
    state, report = inflate_state_dict(convert_timm(image.state_dict()), video)
    blocks = len(video.blocks)
    pools = sum(b.attn.pool_q is not None for b in video.blocks) + 2 * blocks  # K/V pool in every block
    assert report.unused == [] and report.fresh == [] and report.resized == []
    assert len(report.zeroed) == blocks and all(k.endswith("rel_pos_t") for k in report.zeroed)
    assert "patch_embed.proj.weight" in report.centre_frame and len(report.centre_frame) == 1 + pools
    assert set(state) == set(video.state_dict())


@pytest.mark.slow
def test_timm_mvitv2_tiny_checkpoint_inflates_to_identity(tmp_path):
    image_model = timm_mvit("tiny", seed=21)
    path = tmp_path / "mvitv2_tiny_timm.pth"
    torch.save({"state_dict": image_model.state_dict()}, path)
    state, report = inflate_checkpoint(path, "mvitv2_tiny_16x224")
    assert report.source == "timm" and report.num_classes == 1000 and report.resized == []
    # On identical frames a per-frame temporal logit factors out of the softmax, so the identity below
    # cannot see rel_pos_t: check that it starts at zero (no frame told apart) directly.
    assert report.zeroed and all(not state[k].any() for k in report.zeroed)
    video = with_state(lambda: create_model("mvitv2_tiny_16x224", num_classes=1000), state)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(22))
    with torch.inference_mode():
        expected = image_model(x)
        got = video(still_clip(x, 4))  # 2 token frames: attention across time is exercised
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "large"])
def test_timm_mvitv2_inflates_to_identity_at_96px(size):
    """Small (width change in the attention) and large (width change in the MLP, 2 heads) at 96 px."""
    image_model = timm_mvit(size, seed=23, img_size=96)
    def factory() -> nn.Module:
        return create_model(f"mvitv2_{size}_16x224", num_classes=1000, crop_size=96, num_frames=4)

    with torch.device("meta"):
        video = factory()
    state, report = inflate_state_dict(convert_timm(image_model.state_dict()), video)
    assert report.resized == [] and report.unused == []
    video = with_state(factory, state)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(24))
    with torch.inference_mode():
        assert rel_err(video(still_clip(x, 4)), image_model(x)) <= 1e-5


def test_official_mvit_image_checkpoint_inflates_like_timm(tmp_path):
    """The official ``MViTv2_T_in1k.pyth`` layout (``model_state``, ``blocks.N``) gives the same video weights."""
    image_model = timm_mvit("tiny", seed=25, img_size=64)
    timm_path, official_path = tmp_path / "timm.pth", tmp_path / "MViTv2_T_in1k.pyth"
    torch.save(image_model.state_dict(), timm_path)
    torch.save({"model_state": to_official_mvit(image_model.state_dict(), (1, 2, 5, 2), True)}, official_path)
    from_timm, _ = inflate_checkpoint(timm_path, "mvitv2_tiny_16x224")
    from_official, report = inflate_checkpoint(official_path, "mvitv2_tiny_16x224")
    assert report.source == "slowfast"
    assert from_timm.keys() == from_official.keys()
    assert all(torch.equal(from_timm[k], from_official[k]) for k in from_timm)


def test_mvitv2_rel_pos_tables_are_resized_only_for_another_grid():
    timm_state = timm_mvit("tiny", seed=26, img_size=64).state_dict()
    image_state = convert_timm(timm_state)
    # Same grid (64 px): copied bit for bit.
    with torch.device("meta"):
        same = create_model("mvitv2_tiny_16x224", num_classes=1000, crop_size=64)
    state, report = inflate_state_dict(image_state, same)
    assert report.resized == [] and "blocks.0.attn.rel_pos_h" in report.copied
    assert torch.equal(state["blocks.0.attn.rel_pos_h"], image_state["blocks.0.attn.rel_pos_h"])
    # 64 px -> 128 px: stage-1 tables go from 2*16-1 to 2*32-1 rows, as timm's own checkpoint filter resizes them.
    with torch.device("meta"):
        video = create_model("mvitv2_tiny_16x224", num_classes=1000, crop_size=128)
        timm_128 = timm.create_model("mvitv2_tiny", pretrained=False, img_size=128)
    state, report = inflate_state_dict(image_state, video)
    assert "blocks.0.attn.rel_pos_h" in report.resized and len(report.resized) == 2 * len(video.blocks)
    from timm.models.mvitv2 import checkpoint_filter_fn

    timm_resized = convert_timm(checkpoint_filter_fn(dict(timm_state), timm_128))
    for key in ("blocks.0.attn.rel_pos_h", "blocks.0.attn.rel_pos_w", "blocks.9.attn.rel_pos_h"):
        assert state[key].shape == timm_resized[key].shape
        assert torch.allclose(state[key], timm_resized[key], atol=1e-6), key
    assert state["blocks.0.attn.rel_pos_h"].shape[0] == 63


def test_mvitv2_with_a_cls_token_is_not_an_inflation_target_for_timm(tmp_path):
    """timm's ImageNet MViTv2 has no cls token: the SlowFast video layout (cls token, K/V stride 8) does not fit."""
    image_model = timm_mvit("small", seed=27, img_size=64)
    path = tmp_path / "mvitv2_small.pth"
    torch.save(image_model.state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit mvitv2_s_16x4.*cls_token missing") as err:
        inflate_checkpoint(path, "mvitv2_s_16x4")
    assert "\n" not in str(err.value)


def test_importing_an_image_checkpoint_into_a_video_model_points_to_inflate(tmp_path):
    from videoapp.models.pretrained import import_checkpoint

    path = tmp_path / "mvitv2_tiny.pth"
    torch.save(timm_mvit("tiny", seed=28, img_size=64).state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatch: patch_embed.proj.weight .*use 'videoapp weights inflate'"):
        import_checkpoint(path, "mvitv2_tiny_16x224")
