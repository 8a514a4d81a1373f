"""Twins (SVT, PCPVT): parity with timm, inflation identity, the model contract, checkpoints, CLI.

Parity tests build timm's model with ``pretrained=False`` (nothing downloads),
re-randomise every parameter (norms, biases, PEG kernels away from their
neutral defaults, so a key mapped to the wrong place shows), copy the weights
into ours through the converter and compare logits. Identity tests inflate an
image model into the video model and feed T identical frames.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from videoapp.cli import main
from videoapp.engine.predict import Predictor
from videoapp.models.inflate import inflate_checkpoint, inflate_state_dict
from videoapp.models import create_model, list_models
from videoapp.models.twins import (
    _SIZES,
    LocallyGroupedAttention,
    Twins,
    convert_timm,
    detect_source,
)
from videoapp.models.pretrained import import_checkpoint
from videoapp.weights import CheckpointError, save_weights

from random_weights import random_model, randomise, rel_err, with_state
from videos import write_test_video

timm = pytest.importorskip("timm")

XXS = "twins_svt_xxs_8x64"
TIMM_NAMES = {"svt": "twins_svt_small", "pcpvt": "twins_pcpvt_small"}


def still_clip(image: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 3, frames, H, W]`` of identical frames."""
    return image[:, :, None].expand(-1, -1, frames, -1, -1).contiguous()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def timm_small():
    """Random timm ``twins_svt_small`` / ``twins_pcpvt_small`` (norms and biases re-randomised), by family."""
    return {fam: random_model(lambda name=name: timm.create_model(name, pretrained=False), seed=i + 1)
            for i, (fam, name) in enumerate(TIMM_NAMES.items())}


@pytest.fixture(scope="module")
def timm_files(timm_small, tmp_path_factory):
    """The same models saved as timm checkpoint files (``{"state_dict": ...}``, as timm's training scripts do)."""
    folder = tmp_path_factory.mktemp("timm")
    paths = {}
    for fam, model in timm_small.items():
        paths[fam] = folder / f"{TIMM_NAMES[fam]}.pth"
        torch.save({"state_dict": model.state_dict()}, paths[fam])
    return paths


# --------------------------------------------------------------------------- parity with timm
@pytest.mark.parametrize("fam, size", [("svt", 112), ("svt", 96), ("pcpvt", 112)])
def test_image_logits_match_timm(timm_small, fam, size):
    # 112 px: 28/14/7/3-token grids: whole 7x7 windows in stages 1-3, a padded one in stage 4, and the
    # stage-1 GSA reduction floors 28 / 8; 96 px: 24/12/6/3, so LSA pads every stage.
    ref = timm_small[fam]
    assert detect_source(ref.state_dict()) == "timm"
    model = with_state(lambda: create_model(f"twins_{fam}_s_224"), convert_timm(ref.state_dict()))
    assert n_params(model) == n_params(ref)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():
        expected = ref(x)
        got = model(x)
        assert rel_err(got, expected) <= 1e-5
        assert rel_err(model(x[:, :, None]), expected) <= 1e-5  # a one-frame clip is the image


def test_intermediates_match_timm(timm_small):
    ref = timm_small["svt"]
    model = with_state(lambda: create_model("twins_svt_s_224"), convert_timm(ref.state_dict()))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref_final, ref_maps = ref.forward_intermediates(x)
        final, maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
        for ours, theirs in zip(maps, ref_maps):
            assert rel_err(ours, theirs) <= 1e-5
        assert rel_err(final, ref_final) <= 1e-5
        assert rel_err(final, model.forward_features(x)) == 0
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert rel_err(normed, ref.forward_intermediates(x, indices=[-1], norm=True)[1][0]) <= 1e-5
        # timm's index rules: the last two stages, and stopping after stage 2.
        two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape[1] for m in two] == [256, 512] and torch.equal(two[1], maps[3])
        early, first = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        assert len(first) == 2 and torch.allclose(first[1], maps[1]) and early.shape == (1, 64, 128)


# --------------------------------------------------------------------------- inflation identity
def test_timm_checkpoints_inflate_to_identity(timm_small, timm_files):
    """Official sizes (S) from timm files: 4 identical 64 px frames give timm's image logits."""
    for fam, path in timm_files.items():
        name = f"twins_{fam}_s_16x224"
        state, report = inflate_checkpoint(path, name)
        assert report.source == "timm" and report.num_classes == 1000 and report.fresh == []
        assert report.averaged == ["patch_embeds.0.proj.weight"]
        stems_and_pegs = {f"patch_embeds.{i}.proj.weight" for i in (1, 2, 3)} | {f"pos_block.{i}.proj.weight"
                                                                                  for i in range(4)}
        assert stems_and_pegs <= set(report.centre_frame)
        assert report.zeroed == [] and report.resized == []
        video = with_state(lambda: create_model(name, num_classes=1000), state)
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            expected = timm_small[fam](x)
            assert rel_err(video(still_clip(x, 4)), expected) <= 1e-5
            assert rel_err(video(x), expected) <= 1e-5  # a 4-D image is a still clip


@pytest.mark.parametrize("fam", ["svt", "pcpvt"])
@pytest.mark.parametrize("temporal_window", [8, 2])
def test_xxs_inflates_to_identity(fam, temporal_window):
    """Second size: the XXS layout (LSA windows 4-4-4-2), 8 frames at 64 px; the temporal LSA window
    covers the clip (8, clamped to 4 token frames) or splits it (2)."""
    image = random_model(lambda: Twins(**_SIZES[f"{fam}_xxs"]), seed=9)
    name = f"twins_{fam}_xxs_8x64"
    with torch.device("meta"):
        video = create_model(name, num_classes=1000, temporal_window=temporal_window)
    state, report = inflate_state_dict(image.state_dict(), video, family="twins")
    assert report.unused == [] and report.fresh == [] and len(report.averaged) == 1
    video = with_state(lambda: create_model(name, num_classes=1000, temporal_window=temporal_window), state)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    with torch.inference_mode():
        assert rel_err(video(still_clip(x, 8)), image(x)) <= 1e-5


def test_averaged_stem_is_the_mean_over_its_frames():
    image = random_model(lambda: Twins(**_SIZES["svt_xxs"]), seed=11)
    with torch.device("meta"):
        video = create_model(XXS, num_classes=1000)
    state, _ = inflate_state_dict(image.state_dict(), video, family="twins")
    w2, w3 = image.state_dict()["patch_embeds.0.proj.weight"], state["patch_embeds.0.proj.weight"]
    assert w3.shape == (16, 3, 2, 4, 4) and torch.equal(w3[:, :, 0], w3[:, :, 1])
    frames = torch.randn(1, 3, 4, 16, 16)  # different frames: token frame t is the mean of frames 2t, 2t+1
    out = F.conv3d(frames, w3, stride=(2, 4, 4))
    for t in range(2):
        mean = (F.conv2d(frames[:, :, 2 * t], w2, stride=4) + F.conv2d(frames[:, :, 2 * t + 1], w2, stride=4)) / 2
        assert torch.allclose(out[:, :, t], mean, atol=1e-6)


# --------------------------------------------------------------------------- attention over time
def _window_mask(size, window):
    """Boolean ``[N, N]``: tokens in the same window (independent of the partition code)."""
    grids = torch.meshgrid(*[torch.arange(n) // w for n, w in zip(size, window)], indexing="ij")
    wid = torch.stack([g.flatten() for g in grids], dim=1)
    return (wid[:, None, :] == wid[None, :, :]).all(-1)


def test_lsa_equals_masked_global_attention():
    """Spatio-temporal LSA = full attention restricted to same-window pairs (plain softmax math)."""
    torch.manual_seed(12)
    size, window, heads, dim = (4, 14, 7), (2, 7, 7), 2, 8
    attn = randomise(LocallyGroupedAttention(dim, heads, window))
    x = torch.randn(2, 4 * 14 * 7, dim)
    qkv = attn.qkv(x).view(2, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    logits = qkv[0] @ qkv[1].transpose(-1, -2) / (dim // heads) ** 0.5
    logits = logits.masked_fill(~_window_mask(size, window), float("-inf"))
    expected = attn.proj((logits.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(2, -1, dim))
    with torch.inference_mode():
        assert rel_err(attn(x, size), expected) <= 1e-5


def test_receptive_field_over_time():
    """Changing the last frame changes every token frame through GSA / a full temporal window, and only
    its own window's frames with LSA alone (temporal window 1)."""
    x = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(13))
    y = x.clone()
    y[:, :, -1] += 1.0
    for kwargs, changed in [(dict(), [True] * 4), (dict(temporal_window=1, depths=(1, 1, 1, 1)), None)]:
        model = random_model(lambda: create_model(XXS, **kwargs), seed=14)
        with torch.inference_mode():
            a = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
            b = model.forward_intermediates(y, indices=[0], intermediates_only=True)[0]
        differs = [(a[:, :, t] - b[:, :, t]).abs().max().item() > 1e-6 for t in range(4)]
        # Stage 1 with one LSA block (temporal window 1) + PEG (3 frames): frames 2-3 only.
        assert differs == (changed or [False, False, True, True])


# --------------------------------------------------------------------------- variants
# Parameter counts (millions): timm's image models; the video models add the time taps of the
# stem (x2) and PEG (x3) kernels.
PARAMS_M = {"twins_pcpvt_s_224": 24.11, "twins_pcpvt_b_224": 43.83, "twins_pcpvt_l_224": 60.99,
            "twins_svt_s_224": 24.06, "twins_svt_b_224": 56.07, "twins_svt_l_224": 99.27}
IMAGE = sorted(PARAMS_M)
TIMM_OF = {f"twins_{fam}_{s}_224": f"twins_{fam}_{size}" for fam in ("svt", "pcpvt")
           for s, size in (("s", "small"), ("b", "base"), ("l", "large"))}
VIDEO = [n.replace("_224", "_16x224") for n in IMAGE]
SMALL = ["twins_pcpvt_xxs_8x64", "twins_svt_xxs_8x64"]


def test_registry_lists_all_variants():
    # The AVA detectors over Twins backbones (models/detector.py) share the prefix.
    assert {n for n in list_models("twins_*") if not n.endswith("_ava")} == set(IMAGE + VIDEO + SMALL)


@pytest.mark.parametrize("image, video", list(zip(IMAGE, VIDEO)))
def test_full_variants_match_timm_sizes(image, video):
    with torch.device("meta"):
        ref = timm.create_model(TIMM_OF[image], pretrained=False)
        img = create_model(image)
        vid = create_model(video, num_classes=1000)
    assert n_params(img) == n_params(ref) and abs(n_params(img) / 1e6 - PARAMS_M[image]) < 0.01
    pegs = sum(p.numel() for n, p in vid.named_parameters() if n.startswith("pos_block.") and n.endswith("weight"))
    assert n_params(vid) == n_params(img) + pegs * 2 // 3 + vid.patch_embeds[0].proj.weight.numel() // 2
    assert [f["stride"] for f in vid.feature_info] == [(2, 4, 4), (2, 8, 8), (2, 16, 16), (2, 32, 32)]
    assert [f["stride"] for f in img.feature_info] == [(1, 4, 4), (1, 8, 8), (1, 16, 16), (1, 32, 32)]


@pytest.mark.parametrize("name", SMALL)
def test_small_variants_run(name):
    model = create_model(name).eval()
    assert 0.5e6 < n_params(model) < 0.8e6
    assert model.pretrained_cfg.num_frames == 8 and model.pretrained_cfg.crop_size == 64
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 8, 64, 64))
        odd = model(torch.randn(1, 3, 7, 48, 80))  # no position tables: other sizes run too
    assert logits.shape == (2, 400) and odd.shape == (1, 400) and torch.isfinite(logits).all()


# --------------------------------------------------------------------------- model contract
def test_model_contract():
    model = random_model(lambda: create_model(XXS, num_classes=5), seed=15)
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        logits = model(x)
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 4 * 2 * 2, 128)
        assert torch.equal(model.forward_head(tokens), logits)
        pooled = model.forward_head(tokens, pre_logits=True)
        assert pooled.shape == (2, 128) and torch.allclose(model.get_classifier()(pooled), logits, atol=1e-6)
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 4, 16, 16), (2, 32, 4, 8, 8), (2, 64, 4, 4, 4),
                                                  (2, 128, 4, 2, 2)]
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert torch.allclose(normed.flatten(2).transpose(1, 2), tokens, atol=1e-6)
        nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)[0]
        assert torch.equal(nlc, model.forward_intermediates(x, indices=1, intermediates_only=True)[0]
                           .flatten(2).transpose(1, 2))
    for info, m in zip(model.feature_info, maps):
        assert info["num_chs"] == m.shape[1] and info["stride"] == (2, 64 // m.shape[3], 64 // m.shape[4])
        assert info["module"] in dict(model.named_modules())
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[4])
    assert model.no_weight_decay() == {f"pos_block.{i}.proj.{p}" for i in range(4) for p in ("weight", "bias")}
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.head.fc.weight.shape == (7, 128)
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)


def test_image_intermediates_follow_the_input_layout():
    model = random_model(lambda: create_model("twins_pcpvt_s_224"), seed=16)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        flat = model.forward_intermediates(x, intermediates_only=True)
        clip = model.forward_intermediates(x[:, :, None], intermediates_only=True)
    assert [tuple(m.shape) for m in flat] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 320, 4, 4), (1, 512, 2, 2)]
    assert all(torch.equal(a, b[:, :, 0]) for a, b in zip(flat, clip))


def test_training_step_with_grad_checkpointing():
    torch.manual_seed(17)
    model = create_model(XXS, num_classes=3, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 8, 64, 64)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(18)  # same drop-path draws
        model(x).logsumexp(1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(g is not None for g in grads[0].values()) and len(grads[0]) == len(list(model.parameters()))
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6, rtol=1e-5), name


def test_bad_inputs_are_clear_errors():
    model = create_model(XXS)
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match=r"expects \[B, C, T, H, W\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="one frame"):
        create_model("twins_svt_s_224", num_frames=8)
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model(XXS, depths=(1, 1, 1))


# --------------------------------------------------------------------------- checkpoints and CLI
def test_detect_source_and_strict_import(timm_files, tmp_path):
    ours = create_model(XXS).state_dict()
    assert detect_source(ours) == "videoapp"
    assert detect_source({"patch_embed.proj.weight": torch.zeros(1)}) is None
    state, report = import_checkpoint(timm_files["svt"], "twins_svt_s_224")
    assert report.source == "timm" and report.num_classes == 1000
    assert "head.fc.weight" in state and "pos_block.0.proj.weight" in state
    with pytest.raises(CheckpointError, match="does not fit twins_svt_b_224") as err:
        import_checkpoint(timm_files["svt"], "twins_svt_b_224")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="image checkpoint: use 'videoapp weights inflate'"):
        import_checkpoint(timm_files["svt"], "twins_svt_s_16x224")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_import_and_inflate_round_trip(capsys, timm_small, timm_files, tmp_path):
    src = timm_files["pcpvt"]
    image_out, video_out = tmp_path / "image.safetensors", tmp_path / "video.safetensors"
    code, out, err = _cli(capsys, "weights", "import", src, "--model", "twins_pcpvt_s_224", "--out", image_out)
    assert code == 0, err
    assert "twins_pcpvt_s_224, 1000 classes, from timm" in out
    code, out, err = _cli(capsys, "weights", "inflate", image_out, "--model", "twins_pcpvt_s_16x224",
                          "--out", video_out)
    assert code == 0, err
    assert "1000 classes" in out
    image = create_model("twins_pcpvt_s_224", pretrained=str(image_out)).eval()
    video = create_model("twins_pcpvt_s_16x224", pretrained=str(video_out)).eval()
    assert video.pretrained_cfg.num_frames == 16
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(19))
    with torch.inference_mode():
        expected = timm_small["pcpvt"](x)
        assert rel_err(image(x), expected) <= 1e-5
        assert rel_err(video(still_clip(x, 2)), expected) <= 1e-5
    code, _, err = _cli(capsys, "weights", "inflate", src, "--model", "twins_svt_s_16x224",
                        "--out", tmp_path / "wrong.safetensors")
    assert code == 2 and err.startswith("videoapp: error:") and len(err.strip().splitlines()) == 1


def test_predict_with_small_twins_weights(capsys, tmp_path):
    labels = ["pan_left", "pan_right", "zoom_in"]
    model = random_model(lambda: create_model(XXS, num_classes=3), seed=20)
    weights = tmp_path / "twins_xxs.safetensors"
    save_weights(weights, model.state_dict(), {"model": XXS, "labels": labels, "num_frames": 8, "sampling_rate": 2})
    clip = write_test_video(tmp_path / "clip.mp4", num_frames=40, fps=20, width=96, height=72)
    code, out, err = _cli(capsys, "predict", clip, "--weights", weights, "--format", "json", "--top-k", "3")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == XXS and sorted(e["label"] for e in result["top_k"]) == sorted(labels)
    expected = Predictor(str(weights)).predict(clip, top_k=3)
    assert [e["label"] for e in result["top_k"]] == [s.label for s in expected.top_k]
    assert [e["score"] for e in result["top_k"]] == pytest.approx([s.score for s in expected.top_k], abs=1e-6)
