"""MViTv2: parity with torchvision's ``mvit_v2_s``, SlowFast checkpoint import, model API, layers.

Parity runs the full-size MViTv2-S (about 1-2 s per forward on 2 cores); B and
L are only built on the meta device (parameter counts, key/shape round trips).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from videoapp.models import create_model, list_models
from videoapp.models import mvitv2 as mv
from videoapp.models.layers import DropPath, Mlp, PatchEmbed, grid_to_tokens, tokens_to_grid
from videoapp.models.mvitv2 import CONVERTERS, MViTv2, convert_slowfast, convert_torchvision, detect_source
from videoapp.models.pretrained import check_state_dict, expected_shapes, import_checkpoint
from videoapp.weights import CheckpointError

TINY = "mvitv2_xxs_8x64"
S = "mvitv2_s_16x4"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- reference models
def randomise_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter a random value, including the ones that default to 1/0.

    LayerNorm weights/biases, relative-position tables and the cls token start
    as ones/zeros (or tiny), which would hide mapping mistakes.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1 and name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 1 or "rel_pos" in name or "class_token" in name or "cls_token" in name:
                p.copy_(0.2 * noise)
    return model.eval()


def torchvision_to_slowfast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``mvit_v2_s`` keys -> SlowFast ``MViT`` keys (written from the two sources).

    SlowFast: ``patch_embed.proj``, ``cls_token [1, 1, C]``, fused ``attn.qkv``,
    ``attn.proj``, ``attn.pool_q.weight`` + ``attn.norm_q`` (k, v alike),
    ``mlp.fc1/fc2``, block ``proj``, ``norm``, ``head.projection``.
    """
    renames = [
        ("conv_proj.", "patch_embed.proj."),
        ("attn.project.0.", "attn.proj."),
        ("mlp.0.", "mlp.fc1."),
        ("mlp.3.", "mlp.fc2."),
        ("head.1.", "head.projection."),
    ] + [(f"attn.pool_{x}.pool.", f"attn.pool_{x}.") for x in "qkv"] + [
        (f"attn.pool_{x}.norm_act.0.", f"attn.norm_{x}.") for x in "qkv"
    ]
    out = {}
    for key, value in sd.items():
        if key == "pos_encoding.class_token":
            out["cls_token"] = value.reshape(1, 1, -1).clone()
            continue
        new = key
        for old, rep in renames:
            new = new.replace(old, rep)
        if new.startswith("blocks.") and ".project." in new:
            new = new.replace(".project.", ".proj.")
        out[new] = value.clone()
    return out


def ours_to_slowfast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys back to SlowFast's: fuse ``attn.q/k/v`` into ``attn.qkv``, ``head.fc`` -> ``head.projection``."""
    out = {}
    for key, value in sd.items():
        if ".attn.q." in key:
            k_key, v_key = key.replace(".attn.q.", ".attn.k."), key.replace(".attn.q.", ".attn.v.")
            out[key.replace(".attn.q.", ".attn.qkv.")] = torch.cat([value, sd[k_key], sd[v_key]], 0)
        elif ".attn.k." in key or ".attn.v." in key:
            continue
        elif key.startswith("head.fc."):
            out["head.projection." + key[len("head.fc."):]] = value
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def tv_model():
    from torchvision.models.video import mvit_v2_s

    torch.manual_seed(0)
    return randomise_(mvit_v2_s(weights=None), seed=1)


@pytest.fixture(scope="module")
def tv_checkpoint(tv_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "mvit_v2_s.pth"
    torch.save(tv_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ours_s(tv_checkpoint):
    return create_model(S, pretrained=str(tv_checkpoint)).eval()


@pytest.fixture(scope="module")
def clip1():
    return torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def reference_out(tv_model, clip1):
    """torchvision logits and final-normed cls token for ``clip1``."""
    feats = {}
    hook = tv_model.norm.register_forward_hook(lambda m, i, o: feats.__setitem__("x", o[:, 0].clone()))
    with torch.inference_mode():
        logits = tv_model(clip1)
    hook.remove()
    return logits, feats["x"]


# --------------------------------------------------------------------------- parity
def test_torchvision_import_report(tv_checkpoint):
    state, report = import_checkpoint(tv_checkpoint, S)
    assert report.source == "torchvision" and report.num_classes == 400
    assert state["blocks.0.attn.q.weight"].shape == (96, 96)
    assert state["blocks.1.attn.v.weight"].shape == (192, 96)
    assert state["cls_token"].shape == (1, 1, 96)


def test_parity_with_torchvision(ours_s, reference_out, clip1):
    ref_logits, ref_feat = reference_out
    with torch.inference_mode():
        tokens = ours_s.forward_features(clip1)
        feat = ours_s.forward_head(tokens, pre_logits=True)
        logits = ours_s.forward_head(tokens)
    assert logits.shape == (1, 400)
    assert rel_err(logits, ref_logits) <= 1e-5, rel_err(logits, ref_logits)
    assert rel_err(feat, ref_feat) <= 1e-5
    assert logits.argmax() == ref_logits.argmax()


def test_parity_with_torchvision_batch_of_two(ours_s, tv_model):
    x = torch.randn(2, 3, 16, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = tv_model(x)
        out = ours_s(x)
    assert rel_err(out, ref) <= 1e-5
    assert not torch.allclose(out[0], out[1])  # the two samples really differ


def test_other_input_size_matches_torchvision_interpolation(tv_model):
    """8 x 160 x 192 input with tables sized for 16 x 224 x 224: both interpolate them linearly."""
    # torchvision's forward takes the token grid from pos_encoding (no absolute
    # embedding with rel pos): point it at the smaller grid for this input.
    enc = tv_model.pos_encoding
    saved = enc.temporal_size, enc.spatial_size
    ours = create_model(S)
    ours.load_state_dict(convert_torchvision(tv_model.state_dict()))
    ours.eval()
    x = torch.randn(1, 3, 8, 160, 192, generator=torch.Generator().manual_seed(4))
    try:
        enc.temporal_size, enc.spatial_size = 4, (40, 48)
        with torch.inference_mode():
            ref = tv_model(x)
    finally:
        enc.temporal_size, enc.spatial_size = saved
    with torch.inference_mode():
        out = ours(x)
        maps = ours.forward_intermediates(x, intermediates_only=True)
    assert rel_err(out, ref) <= 1e-5
    assert [tuple(m.shape) for m in maps] == [(1, 96, 4, 40, 48), (1, 192, 4, 20, 24), (1, 384, 4, 10, 12),
                                              (1, 768, 4, 5, 6)]


def slowfast_block_settings(embed_dim, num_heads, depths, dim_mul_in_att, q_pool_every_block, kv_stride_adaptive):
    """torchvision ``MSBlockConfig`` list for a SlowFast MViTv2 config, derived as SlowFast's ``MViT.__init__`` does.

    ``DIM_MUL`` = ``HEAD_MUL`` = 2.0 at each stage start; ``POOL_Q_STRIDE``
    (1, 2, 2) at stage starts and (1, 1, 1) elsewhere when Q is pooled in every
    block; K/V stride adaptive, divided by each Q stride; ``POOL_KVQ_KERNEL``
    (3, 3, 3). Written from the SlowFast source independently of our model.
    """
    from torchvision.models.video.mvit import MSBlockConfig

    depth = sum(depths)
    starts = [sum(depths[:i]) for i in range(1, len(depths))]
    dim_mul = [2.0 if i in starts else 1.0 for i in range(depth + 1)]
    stride_q = [[1, 2, 2] if i in starts else ([1, 1, 1] if q_pool_every_block else []) for i in range(depth)]
    stride_kv, cur = [], list(kv_stride_adaptive)
    for i in range(depth):
        if stride_q[i]:
            cur = [max(cur[d] // stride_q[i][d], 1) for d in range(3)]
        stride_kv.append(cur)
    settings, dim, heads = [], embed_dim, num_heads
    for i in range(depth):
        heads = int(heads * dim_mul[i])
        dim_out = int(dim * (dim_mul[i] if dim_mul_in_att else dim_mul[i + 1]))
        settings.append(MSBlockConfig(
            num_heads=heads, input_channels=dim, output_channels=dim_out,
            kernel_q=[3, 3, 3] if stride_q[i] else [], kernel_kv=[3, 3, 3],
            stride_q=stride_q[i], stride_kv=stride_kv[i],
        ))
        dim = dim_out
    return settings


@pytest.mark.parametrize("layout", [
    dict(dim_mul_in_att=True, q_pool_every_block=True, kv_stride_adaptive=(1, 8, 8)),  # S / B
    dict(dim_mul_in_att=False, q_pool_every_block=False, kv_stride_adaptive=(2, 4, 4)),  # L
], ids=["s_b_layout", "l_layout"])
def test_small_configs_match_torchvision_generic_mvit(layout):
    """Both MViTv2 layouts at a small width against torchvision's generic ``MViT`` with the same settings."""
    from torchvision.models.video.mvit import MViT

    torch.manual_seed(12)
    tv = MViT(spatial_size=(64, 64), temporal_size=8,
              block_setting=slowfast_block_settings(16, 2, (1, 2, 2, 1), **layout),
              residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True,
              proj_after_attn=layout["dim_mul_in_att"], num_classes=10)
    randomise_(tv, seed=13)
    ours = MViTv2(num_classes=10, num_frames=8, crop_size=64, embed_dim=16, num_heads=2, depths=(1, 2, 2, 1), **layout)
    ours.load_state_dict(convert_torchvision(tv.state_dict()))
    ours.eval()
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(14))
    with torch.inference_mode():
        ref = tv(x)
        out = ours(x)
    assert rel_err(out, ref) <= 1e-5


def test_slowfast_checkpoint_gives_same_logits(tv_model, tmp_path, clip1, reference_out, ours_s):
    path = tmp_path / "MViTv2_S_16x4_k400.pyth"
    sd = torchvision_to_slowfast(tv_model.state_dict())
    assert "blocks.0.attn.qkv.weight" in sd and sd["blocks.0.attn.pool_q.weight"].shape == (96, 1, 3, 3, 3)
    torch.save({"model_state": sd, "epoch": 200, "optimizer_state": {}}, path)
    state, report = import_checkpoint(path, S)
    assert report.source == "slowfast" and report.num_classes == 400
    ref_state = ours_s.state_dict()
    assert set(state) == set(ref_state)
    for k, v in state.items():
        assert torch.equal(v, ref_state[k]), k
    model = create_model(S, pretrained=str(path)).eval()
    with torch.inference_mode():
        logits = model(clip1)
    assert rel_err(logits, reference_out[0]) <= 1e-5


@pytest.mark.parametrize("name", ["mvitv2_s_16x4", "mvitv2_b_32x3", "mvitv2_l_40x3", "mvitv2_l_40x3_ssv2"])
def test_slowfast_key_round_trip_for_real_variants(name):
    """Our keys -> SlowFast keys -> converter gives exactly our names and shapes (meta tensors: no memory)."""
    with torch.device("meta"):
        ours = create_model(name).state_dict()
    sf = ours_to_slowfast(ours)
    assert any(k.endswith("attn.qkv.weight") for k in sf) and "head.projection.weight" in sf
    assert detect_source(sf) == "slowfast"
    back = convert_slowfast(sf)
    check_state_dict(back, expected_shapes(name, None), name)  # raises on any mismatch
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_slowfast_round_trip_tiny_through_file(tmp_path):
    torch.manual_seed(5)
    model = randomise_(create_model(TINY, num_classes=7), seed=6)
    path = tmp_path / "tiny.pyth"
    torch.save({"model_state": ours_to_slowfast(model.state_dict())}, path)
    again = create_model(TINY, pretrained=str(path)).eval()
    assert again.head.fc.out_features == 7
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))


def test_detect_source():
    with torch.device("meta"):
        from torchvision.models.video import mvit_v2_s

        tv = mvit_v2_s().state_dict()
        ours = create_model(TINY).state_dict()
    assert detect_source(tv) == "torchvision"
    assert detect_source(ours_to_slowfast(ours)) == "slowfast"
    assert detect_source(ours) == "videoapp"
    assert detect_source({"encoder.layer.0.weight": torch.zeros(1)}) is None
    assert set(CONVERTERS) >= {"videoapp", "torchvision", "slowfast"}


def test_converters_do_not_mutate_their_input():
    sd = {"blocks.0.attn.qkv.weight": torch.randn(6, 2), "head.projection.bias": torch.zeros(3)}
    before = dict(sd)
    out = convert_slowfast(sd)
    assert sd.keys() == before.keys() and all(sd[k] is before[k] for k in sd)
    assert set(out) == {"blocks.0.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight", "head.fc.bias"}
    assert torch.equal(out["blocks.0.attn.k.weight"], sd["blocks.0.attn.qkv.weight"][2:4])


def test_mismatched_checkpoints_name_the_key(tmp_path):
    torch.manual_seed(7)
    sf = ours_to_slowfast(create_model(TINY).state_dict())
    bad = dict(sf)
    bad["blocks.1.attn.qkv.weight"] = bad["blocks.1.attn.qkv.weight"][:, :-1]
    del bad["blocks.2.attn.rel_pos_t"]
    path = tmp_path / "bad.pyth"
    torch.save({"model_state": bad}, path)
    with pytest.raises(CheckpointError) as err:
        import_checkpoint(path, TINY)
    text = str(err.value)
    assert "blocks.1.attn.q.weight" in text and "blocks.2.attn.rel_pos_t" in text and "\n" not in text


def test_torchvision_s_does_not_fit_b(tv_checkpoint):
    with pytest.raises(CheckpointError, match="does not fit mvitv2_b_32x3"):
        import_checkpoint(tv_checkpoint, "mvitv2_b_32x3")


# --------------------------------------------------------------------------- variants
@pytest.mark.parametrize(
    "name, num_classes, millions",
    [
        ("mvitv2_s_16x4", 400, 34.5),
        ("mvitv2_b_32x3", 400, 51.2),
        ("mvitv2_l_40x3", 400, 217.6),
        ("mvitv2_s_16x4", 174, 34.4),  # SSv2 heads (SlowFast model zoo)
        ("mvitv2_b_32x3", 174, 51.1),
        ("mvitv2_l_40x3_ssv2", 174, 213.1),
    ],
)
def test_parameter_counts_match_the_paper(name, num_classes, millions):
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - millions) <= 0.2, count


def test_registry_and_data_config():
    names = list_models("mvitv2*")
    assert {"mvitv2_s_16x4", "mvitv2_b_32x3", "mvitv2_l_40x3", TINY} <= set(names)
    with torch.device("meta"):
        s, l_ = create_model(S), create_model("mvitv2_l_40x3")
    assert s.pretrained_cfg.num_frames == 16 and s.pretrained_cfg.sampling_rate == 4
    assert s.pretrained_cfg.mean == (0.45,) * 3 and s.pretrained_cfg.std == (0.225,) * 3
    assert l_.pretrained_cfg.crop_size == 312 and l_.pretrained_cfg.mean == (0.485, 0.456, 0.406)
    assert len(s.blocks) == 16 and s.stage_dims == [96, 192, 384, 768] and s.stage_ends == [0, 2, 13, 15]
    tiny = create_model(TINY)
    assert 0.4e6 <= sum(p.numel() for p in tiny.parameters()) <= 0.7e6


def test_kwargs_are_not_mutated():
    kwargs = {"depths": [1, 1, 1, 1], "crop_size": [64, 64], "num_frames": 4, "embed_dim": 8}
    snapshot = {k: (list(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    MViTv2(**kwargs)
    create_model(TINY, **kwargs)
    assert kwargs == snapshot


# --------------------------------------------------------------------------- model API (tiny)
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(8)
    return randomise_(create_model(TINY), seed=9)


def test_api_shapes(tiny):
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        logits = tiny(x)
        tokens = tiny.forward_features(x)
        feats = tiny.forward_head(tokens, pre_logits=True)
        maps = tiny.forward_intermediates(x, intermediates_only=True)
        head = tiny.forward_head(tokens)
    d = tiny.num_features
    assert logits.shape == (2, 400) and feats.shape == (2, d) and d == 160
    assert tokens.shape == (2, 1 + 4 * 2 * 2, d) and torch.equal(feats, tokens[:, 0])
    assert [tuple(m.shape) for m in maps] == [(2, 20, 4, 16, 16), (2, 40, 4, 8, 8), (2, 80, 4, 4, 4), (2, 160, 4, 2, 2)]
    # forward's cls-row-only last block against the full computation (rounding only).
    assert rel_err(logits, head) <= 1e-6


def test_cls_only_last_block_equals_full_computation(tiny):
    """forward() skips the last block's token rows; the cls result must be the same."""
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        full = tiny._run(x, cls_only=False)
        ref = tiny.head(tiny.norm(full[:, 0]))
        out = tiny(x)
        last = tiny.forward_intermediates(x, norm=True, intermediates_only=True)[-1]
        normed = tokens_to_grid(tiny.norm(full)[:, 1:], last.shape[2:])
    assert rel_err(out, ref) <= 1e-6
    # forward_intermediates' last map is the final-normed token grid.
    assert torch.allclose(last, normed)


def test_row_chunks_give_the_same_result(tiny, monkeypatch):
    """Inference splits each block into query-row chunks; the split must not change the numbers."""
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        whole = tiny.forward_intermediates(x, norm=True, intermediates_only=True)
        monkeypatch.setattr(mv, "_CHUNK_ELEMENTS", 64)  # many small chunks
        monkeypatch.setattr(mv, "_CHUNK_MIN_ROWS", 7)
        chunked = tiny.forward_intermediates(x, norm=True, intermediates_only=True)
    for a, b in zip(whole, chunked):
        assert rel_err(b, a) <= 1e-5
    # The autograd path (no chunks, out-of-place ops) agrees too.
    grad_out = tiny.forward_intermediates(x, norm=True, intermediates_only=True)
    for a, b in zip(whole, grad_out):
        assert rel_err(b.detach(), a) <= 1e-5


def test_model_without_cls_token_pools_the_mean():
    """The ImageNet layout (no cls token): features are the mean of the final-normed tokens, every
    path (row chunks, autograd, bf16 autocast, intermediates) agrees, and training reaches every parameter."""
    torch.manual_seed(12)
    model = randomise_(create_model("mvitv2_tiny_16x224", depths=(1, 1, 2, 1), embed_dim=16, crop_size=64,
                                    num_frames=4, num_classes=5), seed=13)
    assert model.cls_token is None and "cls_token" not in model.state_dict()
    x = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(14))
    with torch.inference_mode():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        maps = model.forward_intermediates(x, norm=True, intermediates_only=True)
        tokens = model.norm(model._run(x, cls_only=False))
        logits = model.head(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 2, 16, 16), (2, 32, 2, 8, 8), (2, 64, 2, 4, 4), (2, 128, 2, 2, 2)]
    assert tokens.shape == (2, 8, 128) and torch.allclose(feats, tokens.mean(1), atol=1e-6)
    assert torch.allclose(maps[-1], tokens_to_grid(tokens, (2, 2, 2)))
    assert rel_err(low.float(), logits) <= 0.05
    grad_tokens = model.forward_features(x)  # autograd path: out-of-place, no row chunks
    assert rel_err(grad_tokens.detach(), tokens) <= 1e-5
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_image_input_is_one_frame_clip(tiny):
    img = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        a = tiny(img)
        b = tiny(img.unsqueeze(2))
        maps = tiny.forward_intermediates(img, intermediates_only=True)
    assert a.shape == (2, 400) and torch.equal(a, b)
    assert maps[0].shape == (2, 20, 1, 16, 16)


def test_other_input_sizes_run(tiny):
    for shape in [(1, 3, 4, 64, 64), (1, 3, 16, 96, 80), (2, 3, 7, 50, 70)]:
        with torch.inference_mode():
            out = tiny(torch.randn(shape))
        assert out.shape == (shape[0], 400) and torch.isfinite(out).all(), shape


def test_bad_input_rank_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        tiny(torch.randn(3, 64, 64))


def test_reset_classifier(tiny):
    model = create_model(TINY)
    model.load_state_dict(tiny.state_dict())
    model.eval()
    x = torch.randn(1, 3, 8, 64, 64)
    model.reset_classifier(7)
    assert model.head.fc.out_features == 7 and model(x).shape == (1, 7)
    model.reset_classifier(0)
    with torch.inference_mode():
        assert rel_err(model(x), tiny.forward_head(tiny.forward_features(x), pre_logits=True)) <= 1e-6


def test_bf16_autocast_close_to_fp32(tiny):
    # Tiny model: bf16 matmuls are emulated (slow) on CPUs without AVX-512 BF16.
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        ref = tiny(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = tiny(x)
            maps = tiny.forward_intermediates(x, intermediates_only=True)
    assert logits.dtype == torch.bfloat16 and len(maps) == 4
    assert rel_err(logits.float(), ref) <= 0.05, rel_err(logits.float(), ref)


def test_bf16_autocast_tiny_train_mode(tiny):
    model = create_model(TINY, drop_path_rate=0.2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 8, 64, 64))
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_mode_backward_with_drop_path():
    torch.manual_seed(10)
    model = create_model(TINY, num_classes=5, drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 8, 64, 64)
    y = torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # Every parameter takes part (DDP without find_unused_parameters needs that).
    assert [n for n, g in grads.items() if g is None] == []
    assert grads["blocks.0.attn.rel_pos_h"].abs().sum() > 0 and grads["cls_token"].abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    # Drop path is random in training and off in eval.
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# --------------------------------------------------------------------------- layers
@pytest.mark.parametrize("kernel, stride, padding, size, out", [
    ((3, 7, 7), (2, 4, 4), (1, 3, 3), (8, 64, 64), (4, 16, 16)),
    ((7, 7), (4, 4), (3, 3), (64, 48), (16, 12)),
])
def test_patch_embed_2d_and_3d(kernel, stride, padding, size, out):
    pe = PatchEmbed(3, 16, kernel, stride, padding)
    assert isinstance(pe.proj, nn.Conv3d if len(kernel) == 3 else nn.Conv2d)
    grid = pe(torch.randn(2, 3, *size))
    assert grid.shape == (2, 16, *out)
    tokens, got = PatchEmbed.flatten(grid)
    assert got == out and tokens.shape == (2, math.prod(out), 16)
    assert torch.equal(tokens[1, 5], grid[1].flatten(1)[:, 5])


def test_token_grid_views_share_memory():
    x = torch.randn(2, 4 * 6 * 5, 8)
    grid = tokens_to_grid(x, (4, 6, 5))
    assert grid.shape == (2, 8, 4, 6, 5) and grid.data_ptr() == x.data_ptr()
    assert grid.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(grid[1, :, 2, 3, 4], x[1, 2 * 30 + 3 * 5 + 4])
    back = grid_to_tokens(grid)
    assert back.data_ptr() == x.data_ptr() and torch.equal(back, x)


def test_mlp_and_drop_path():
    mlp = Mlp(8, 32, 4)
    assert mlp(torch.randn(3, 5, 8)).shape == (3, 5, 4)
    dp = DropPath(0.5)
    x = torch.ones(1000, 3)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = y[:, 0] != 0
    assert torch.all((y[kept] == 2.0)) and 300 < int(kept.sum()) < 700
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_per_stage_q_stride_keeps_the_last_map_at_stride_16():
    """One Q stride per stage start: (1, 1, 1) last leaves the last map at stride 16; the XXS detector's
    backbone keeps the camera classifier's parameter shapes, so that classifier initialises it."""
    from videoapp.models.mvitv2 import MViTv2

    kw = dict(num_classes=5, depths=(1, 1, 1), embed_dim=8, num_heads=1, num_frames=4, crop_size=64)
    plain = MViTv2(**kw)
    dilated = MViTv2(**kw, q_stride=[(1, 2, 2), (1, 1, 1)])
    assert [f["stride"] for f in dilated.feature_info] == [(2, 4, 4), (2, 8, 8), (2, 8, 8)]
    assert [f["stride"] for f in plain.feature_info][-1] == (2, 16, 16)
    feats = dilated.forward_intermediates(torch.randn(1, 3, 4, 64, 64), intermediates_only=True)
    assert feats[-1].shape[-2:] == (8, 8)
    with pytest.raises(ValueError, match="one \\(t, h, w\\) per stage start"):
        MViTv2(**kw, q_stride=[(1, 2, 2)])

    detector = create_model("mvitv2_xxs_8x64_s16_ava", num_classes=8).backbone
    classifier = create_model("mvitv2_xxs_8x64", num_classes=0)
    assert detector.feature_info[-1]["stride"] == (2, 16, 16)
    assert {k: v.shape for k, v in detector.state_dict().items()} == \
        {k: v.shape for k, v in classifier.state_dict().items()}
