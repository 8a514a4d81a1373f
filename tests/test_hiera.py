"""Hiera: parity with the official ``hiera-transformer`` and timm, variants, API, checkpoint import.

Parity tests build the reference with ``pretrained=False`` (nothing downloads),
re-randomise its norms, biases, position embeddings and head so that a key
mapped to the wrong place shows, copy its weights into ours through the
converter, and compare logits before the official head's eval-mode softmax.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from videoapp.models.hiera import (
    Hiera,
    convert_official,
    convert_timm,
    detect_source,
    reroll,
    unroll,
)
from videoapp.models import create_model, get_model_entry, list_models
from videoapp.models.pretrained import import_checkpoint

from random_weights import randomise, random_model, rel_err, with_state

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # hiera imports timm.models.layers (deprecated path)
    hiera_ref = pytest.importorskip("hiera")
timm = pytest.importorskip("timm")

TINY = "hiera_xxs_8x64"
# The official video layout at the XXS size (what hiera_xxs_8x64 builds).
XXS_CFG = dict(input_size=(8, 64, 64), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
               patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True, num_classes=400,
               embed_dim=24, num_heads=1, stages=(1, 1, 2, 1))


def _fast_trunc_normal(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, *args, **kwargs) -> torch.Tensor:
    # Building Hiera-L spends ~10 s in trunc_normal_ (erfinv over 213M values); any random draw will do here.
    with torch.no_grad():
        return tensor.normal_(mean, std)


def official(name: str, **kwargs) -> nn.Module:
    """A reference model from hiera-transformer (random init, no download) returning pre-softmax logits."""
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
        warnings.simplefilter("ignore")
        patch.setattr(nn.init, "trunc_normal_", _fast_trunc_normal)
        model = getattr(hiera_ref, name)(pretrained=False, **kwargs) if name != "Hiera" else hiera_ref.Hiera(**kwargs)
    model.head.act_func = lambda x: x  # the official head applies softmax in eval mode
    return model


def ours_from(state: dict[str, torch.Tensor], name: str, **kwargs) -> Hiera:
    """Our model ``name`` carrying ``state`` (built on the meta device: no init cost)."""
    return with_state(lambda: create_model(name, **kwargs), state)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- parity with the official code
@pytest.mark.slow
@pytest.mark.parametrize("name", ["hiera_base_16x224", "hiera_large_16x224"])
def test_video_logits_match_official(name):
    torch.manual_seed(0)
    ref = randomise(official(name), seed=1)
    source = {"model_state": ref.state_dict()}["model_state"]
    assert detect_source(source) == "official"
    model = ours_from(convert_official(source), name)
    assert n_params(model) == n_params(ref)
    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = ref(x)
        got = model(x)
    assert got.shape == expected.shape == (1, 400)
    assert rel_err(got, expected) <= 1e-5


def test_intermediates_and_masked_tokens_match_official():
    ref = randomise(official("Hiera", **XXS_CFG), seed=3)
    model = ours_from(convert_official(ref.state_dict()), TINY)
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref_logits, ref_maps = ref(x, return_intermediates=True)
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert rel_err(model(x), ref_logits) <= 1e-5
        assert [tuple(m.shape) for m in maps] == [(2, 24, 4, 16, 16), (2, 48, 4, 8, 8), (2, 96, 4, 4, 4),
                                                  (2, 192, 4, 2, 2)]
        for ours, theirs in zip(maps, ref_maps):  # official maps are [B, T, H, W, C]
            assert rel_err(ours.movedim(1, -1), theirs) <= 1e-5
        # MAE-style input: the official forward returns the last tokens of the kept units.
        mask = ref.get_random_mask(x, mask_ratio=0.75)
        assert int(mask.sum(1)[0]) == 4
        ref_tokens = ref(x, mask=mask)
        tokens = model.forward_features(x, mask=mask)
        assert tokens.shape == ref_tokens.shape == (2, 4, 192)
        assert rel_err(tokens, ref_tokens) <= 1e-5


def test_image_logits_match_timm():
    ref = random_model(lambda: timm.create_model("hiera_tiny_224", pretrained=False), seed=5)
    state = ref.state_dict()
    assert detect_source(state) == "timm"
    model = ours_from(convert_timm(state), "hiera_tiny_224")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        expected = ref(x)
        assert rel_err(model(x), expected) <= 1e-5
        # A one-frame clip is the same image.
        assert rel_err(model(x[:, :, None]), expected) <= 1e-5


# --------------------------------------------------------------------------- variants
# Parameter counts (millions) of the official models: timm's image table and
# the official video models (T and S have no official video version).
PARAMS_M = {
    "hiera_tiny_224": 27.9, "hiera_small_224": 35.0, "hiera_base_224": 51.5, "hiera_base_plus_224": 69.9,
    "hiera_large_224": 213.7, "hiera_huge_224": 672.8,
    "hiera_base_16x224": 51.1, "hiera_base_plus_16x224": 69.4, "hiera_large_16x224": 213.1,
    "hiera_huge_16x224": 671.6,
}
VIDEO = ["hiera_tiny_16x224", "hiera_small_16x224", "hiera_base_16x224", "hiera_base_plus_16x224",
         "hiera_large_16x224", "hiera_huge_16x224"]
IMAGE = ["hiera_tiny_224", "hiera_small_224", "hiera_base_224", "hiera_base_plus_224", "hiera_large_224",
         "hiera_huge_224"]


def test_registry_lists_all_variants():
    # The Hiera family's own entries (detectors built on Hiera live in videoapp.models.detector).
    registered = {n for n in list_models("hiera_*") if get_model_entry(n).module == Hiera.__module__}
    assert set(VIDEO + IMAGE + [TINY]) <= registered
    # Anything else is one of our small training variants.
    assert all(name.startswith("hiera_xxs_") for name in registered - set(VIDEO + IMAGE))


@pytest.mark.parametrize("name", VIDEO + IMAGE + [TINY])
def test_every_variant_builds_and_runs(name):
    video = name not in IMAGE
    # Full-size models are built on the meta device (shapes, no memory), a
    # small input size keeps the real forward cheap; large/huge run on meta.
    with torch.device("meta"):
        full = create_model(name)
    if name in PARAMS_M:
        assert abs(n_params(full) / 1e6 - PARAMS_M[name]) < 0.1
    assert full.num_classes == (400 if video else 1000)
    size = (2, 32, 32) if video else (32, 32)
    meta = "large" in name or "huge" in name
    if meta:
        with torch.device("meta"):
            model = create_model(name, input_size=size).eval()
            x = torch.randn(1, 3, *size)
    else:
        model = random_model(lambda: create_model(name, input_size=size))
        x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == (1, full.num_classes)
    if not meta:
        assert torch.isfinite(logits).all()


def test_tiny_variant_size_and_data_config():
    model = create_model(TINY)
    assert 0.6e6 < n_params(model) < 0.9e6
    assert model.pretrained_cfg.num_frames == 8 and model.pretrained_cfg.crop_size == 64
    assert model.mask_spatial_shape == (4, 2, 2)


# --------------------------------------------------------------------------- API
def test_model_api_shapes():
    model = create_model(TINY, num_classes=5).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        assert model(x).shape == (2, 5)
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 4 * 2 * 2, model.num_features) == (2, 16, 192)
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 192)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert [m.shape[1] for m in maps] == model.stage_dims
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.head.fc.weight.shape == (7, 192)
    model.reset_classifier(0)
    assert model(x).shape == (2, 192)


def test_image_intermediates_follow_the_input_layout():
    model = create_model("hiera_tiny_224", input_size=(64, 64)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        flat = model.forward_intermediates(x, intermediates_only=True)
        clip = model.forward_intermediates(x[:, :, None], intermediates_only=True)
    assert [tuple(m.shape) for m in flat] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]
    assert [tuple(m.shape) for m in clip] == [(1, 96, 1, 16, 16), (1, 192, 1, 8, 8), (1, 384, 1, 4, 4),
                                              (1, 768, 1, 2, 2)]
    assert all(torch.equal(a, b[:, :, 0]) for a, b in zip(flat, clip))


def test_wrong_input_size_is_a_clear_error():
    model = create_model(TINY)
    with pytest.raises(ValueError, match=r"\[B, C, 8, 64, 64\]"):
        model(torch.randn(1, 3, 8, 96, 96))
    with pytest.raises(ValueError, match="q_stride"):
        create_model(TINY, input_size=(8, 40, 40))


def test_num_frames_and_crop_size_set_the_input_size():
    with torch.device("meta"):
        assert create_model("hiera_base_16x224", num_frames=8, crop_size=256).input_size == (8, 256, 256)
        assert create_model("hiera_base_224", crop_size=256).input_size == (256, 256)
        with pytest.raises(ValueError, match="video"):
            create_model("hiera_base_224", num_frames=8)


def test_unroll_and_reroll_are_inverse():
    x = torch.randn(2, 5, 4, 16, 24)
    tokens = unroll(x, (1, 2, 2), 3)
    assert tokens.shape == (2, 4 * 16 * 24, 5)
    assert torch.equal(reroll(tokens, (4, 16, 24), (1, 2, 2), 3), x)
    # After one q-pool the finest digit is gone: pooling then re-rolling is a 2x2 max pool.
    pooled = tokens.view(2, -1, 4, 5).amax(2)
    expected = torch.nn.functional.max_pool3d(x, (1, 2, 2))
    assert torch.equal(reroll(pooled, (4, 8, 12), (1, 2, 2), 2), expected)


def test_masked_forward_and_training_step():
    model = create_model(TINY, num_classes=3, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 8, 64, 64)
    mask = model.get_random_mask(x, 0.5)
    assert mask.shape == (2, 16) and mask.sum(1).tolist() == [8, 8]
    loss = model(x, mask=mask).logsumexp(1).mean() + model(x).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert "pos_embed_spatial" in model.no_weight_decay()


# --------------------------------------------------------------------------- checkpoints
def test_detect_source():
    ref = official("Hiera", **XXS_CFG).state_dict()
    ours = create_model(TINY).state_dict()
    assert detect_source(ref) == "official"
    assert detect_source(ours) == "videoapp"
    headless = {k: v for k, v in ref.items() if not k.startswith("head.")}
    assert detect_source(headless) == "official"
    assert detect_source({"patch_embed.proj.weight": ours["patch_embed.proj.weight"], "cls_token": torch.zeros(1)}) \
        is None
    assert detect_source({"conv_proj.weight": torch.zeros(1)}) is None


def test_mae_checkpoint_keys_convert():
    state = {"encoder_norm.weight": torch.ones(2), "decoder_embed.weight": torch.ones(1), "mask_token": torch.ones(1),
             "multi_scale_fusion_heads.0.weight": torch.ones(1), "blocks.0.attn.qkv.weight": torch.ones(1)}
    assert set(convert_official(state)) == {"norm.weight", "blocks.0.attn.qkv.weight"}


def test_import_official_checkpoint_file(tmp_path):
    ref = randomise(official("Hiera", **XXS_CFG), seed=7)
    path = tmp_path / "hiera_xxs.pth"
    torch.save({"model_state": ref.state_dict(), "epoch": 100}, path)
    state, report = import_checkpoint(path, TINY)
    assert report.source == "official" and report.num_classes == 400
    model = ours_from(state, TINY)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) <= 1e-5


def test_import_timm_checkpoint_file(tmp_path):
    ref = timm.create_model("hiera_tiny_224", pretrained=False)
    path = tmp_path / "hiera_tiny_timm.pth"
    torch.save(ref.state_dict(), path)
    state, report = import_checkpoint(path, "hiera_tiny_224")
    assert report.source == "timm" and report.num_classes == 1000
    assert torch.equal(state["norm.weight"], ref.state_dict()["head.norm.weight"])
