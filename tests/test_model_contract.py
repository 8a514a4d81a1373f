"""Every registered model keeps timm's contract (DESIGN.md section 3), checked the same way for every family.

Models come from ``list_models()``, so a new family is checked as soon as it
registers. Two levels:

- every model, built on the meta device (no memory, no init): ``feature_info``
  (channels, strides, module names), ``get_classifier``, ``no_weight_decay``
  names, ``set_grad_checkpointing``. Forward passes on the meta device cost
  seconds per block (Python shape functions), so the big models stop here;
- the small models (registry clip at most 64 px) and reduced builds of the big
  layouts that have no small variant run the whole contract with random
  weights: ``forward == forward_head(forward_features)``, ``pre_logits``,
  ``forward_intermediates`` shapes against ``feature_info`` and the meaning of
  ``indices`` / ``stop_early`` / ``norm`` / ``output_fmt`` /
  ``intermediates_only``, ``reset_classifier``, and gradient checkpointing
  (same output and gradients, blocks really recomputed).

Detectors (registry ``task: detection``) score boxes: ``forward(x, boxes) ==
forward_head(forward_features(x), boxes, (H, W))`` with the backbone's last
map as features; the classifier, checkpointing and weight-decay checks are the same.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn

from videoapp.models import create_model, get_model_entry, list_models

from random_weights import randomise

ALL = list_models()
# Run for real: small registry clips (the tests' and shipped models' size).
SMALL = [n for n in ALL if get_model_entry(n).data["crop_size"] <= 64]
# Reduced builds of layouts no small variant covers: (registered name, overrides, input shape).
REDUCED = {
    "mvitv2_tiny_16x224": (dict(depths=(1, 1, 2, 1), embed_dim=16, crop_size=64, num_frames=4, num_classes=5),
                           (2, 3, 4, 64, 64)),  # no cls token, mean of the final-normed tokens
    "mvitv2_l_40x3": (dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=2, crop_size=64, num_frames=4, num_classes=5),
                      (2, 3, 4, 64, 64)),  # width change in the MLP, Q pooled at stage starts
    "hiera_tiny_224": (dict(input_size=(64, 64), embed_dim=16, stages=(1, 1, 2, 1), num_classes=5),
                       (2, 3, 64, 64)),  # image layout
    "twins_svt_s_224": (dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 1, 2, 1),
                             window_sizes=(4, 4, 4, 2), num_classes=5), (2, 3, 64, 64)),  # image layout
}
REDUCED = {k: v for k, v in REDUCED.items() if k in ALL}
BOXES = torch.tensor([[0, 4.0, 6.0, 40.0, 50.0], [1, 10.0, 10.0, 60.0, 62.0], [1, 0.0, 0.0, 64.0, 64.0]])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy 2-core machine
    # OpenMP workers waiting for each other made these tests ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def is_detector(name: str) -> bool:
    return get_model_entry(name).data.get("task") == "detection"


def clip_shape(name: str, batch: int = 2) -> tuple[int, ...]:
    """The registry clip: ``[B, 3, T, S, S]``, or ``[B, 3, S, S]`` for image models (one frame)."""
    data = get_model_entry(name).data
    t, s = data["num_frames"], data["crop_size"]
    return (batch, 3, s, s) if t == 1 else (batch, 3, t, s, s)


def stage_info(model: nn.Module) -> list[dict]:
    """``feature_info`` of a classifier, or of a detector's backbone (its features are the last map)."""
    return model.feature_info if hasattr(model, "feature_info") else model.backbone.feature_info


def close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-6) -> bool:
    """Same shape and ``max |got - ref| <= rel * max |ref|`` (rounding of a different kernel schedule)."""
    return got.shape == ref.shape and float((got - ref).abs().max()) <= rel * float(ref.abs().max()) + 1e-12


def map_shape(batch: int, info: dict, size: tuple[int, ...]) -> tuple[int, ...]:
    """Expected ``[B, C, *grid]`` of a stage for an input of spatial size ``size`` (``(T, H, W)`` or ``(H, W)``)."""
    stride = info["stride"][-len(size):]
    return (batch, info["num_chs"], *(math.ceil(n / s) for n, s in zip(size, stride)))


@contextmanager
def count_module_calls():
    """Counts every ``nn.Module`` forward call in the block (``calls[0]``)."""
    calls = [0]

    def hook(module, args, output):
        calls[0] += 1

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


# --------------------------------------------------------------------------- every model (meta device)
@pytest.mark.parametrize("name", ALL)
def test_static_contract(name):
    with torch.device("meta"):
        model = create_model(name)
    params = dict(model.named_parameters())
    info = stage_info(model)
    assert len(info) >= 1
    prev = (1, 1, 1)
    for stage in info:
        assert set(stage) >= {"num_chs", "reduction", "module", "stride"}, stage
        stride = stage["stride"]
        assert isinstance(stride, tuple) and len(stride) == 3 and all(isinstance(s, int) and s >= 1 for s in stride)
        assert all(s >= p for s, p in zip(stride, prev)), info  # strides never shrink
        assert stage["reduction"] == stride[-1] and stage["num_chs"] >= 1
        backbone = model if hasattr(model, "feature_info") else model.backbone
        backbone.get_submodule(stage["module"])  # names a real module
        prev = stride
    assert info[-1]["num_chs"] == model.num_features
    fc = model.get_classifier()
    assert isinstance(fc, nn.Linear) and fc.out_features == model.num_classes and fc.in_features == model.num_features
    assert fc is model.get_submodule("head.fc")
    nwd = model.no_weight_decay()
    assert set(nwd) <= set(params), set(nwd) - set(params)
    model.set_grad_checkpointing(True)
    model.set_grad_checkpointing(False)


def test_every_family_has_a_model_that_runs_for_real():
    """The meta-only models are covered by a small variant or a reduced build of their family."""
    run = {get_model_entry(n).family for n in SMALL + list(REDUCED)}
    assert {get_model_entry(n).family for n in ALL} <= run


# --------------------------------------------------------------------------- the whole contract, for real
def build(case: str) -> tuple[nn.Module, torch.Tensor]:
    """Random-weight model and a seeded input for a small registered model or a reduced build."""
    torch.manual_seed(0)
    kwargs, shape = REDUCED.get(case, ({}, clip_shape(case)))
    model = randomise(create_model(case, **kwargs), seed=1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    return model, x


def check_classifier(model: nn.Module, x: torch.Tensor) -> None:
    b, size = x.shape[0], tuple(x.shape[2:])
    info = model.feature_info
    n = len(info)
    with torch.inference_mode():
        logits = model(x)
        feats = model.forward_features(x)
        ref = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        final, maps = model.forward_intermediates(x)
        tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        normed = model.forward_intermediates(x, norm=True, output_fmt="NLC", intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        with count_module_calls() as full_calls:
            model.forward_intermediates(x, indices=[1], intermediates_only=True)
        with count_module_calls() as early_calls:
            early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True, output_fmt="NLC")

    # forward = forward_head(forward_features(x)); features are un-pooled tokens.
    assert logits.shape == (b, model.num_classes)
    assert close(logits, ref)
    assert feats.dim() == 3 and feats.shape[0] == b and feats.shape[-1] == model.num_features
    assert pre.shape == (b, model.num_features)
    assert close(final, feats)
    # One map per stage, channels and grid from feature_info.
    assert len(maps) == n
    for m, t, stage in zip(maps, tokens, info):
        assert tuple(m.shape) == map_shape(b, stage, size), (tuple(m.shape), stage, size)
        assert torch.equal(t, m.flatten(2).transpose(1, 2))  # NLC: the same values in raster order
    # The cls token (if any) comes first in the final tokens; the rest is the last stage's grid.
    assert feats.shape[1] - tokens[-1].shape[1] in (0, 1)
    # indices: last n, or the listed stages (negative from the end), in stage order.
    assert len(last_two) == 2 and all(torch.equal(a, c) for a, c in zip(last_two, maps[-2:]))
    assert len(picked) == 2 and torch.equal(picked[0], maps[0]) and torch.equal(picked[1], maps[-1])
    # stop_early: fewer modules run, same map; final = the last run stage's (un-normed) tokens.
    assert early_calls[0] < full_calls[0]
    assert len(early) == 1 and torch.equal(early[0], tokens[1])
    assert torch.equal(early_final[:, early_final.shape[1] - tokens[1].shape[1]:], tokens[1])
    # norm: the final norm on the last stage's map only.
    assert all(torch.equal(a, c) for a, c in zip(normed[:-1], tokens[:-1]))
    with torch.inference_mode():
        assert close(normed[-1], model.norm(tokens[-1]))
    assert not torch.equal(normed[-1], tokens[-1])
    # Bad arguments are clear errors.
    for kwargs in (dict(indices=0), dict(indices=n + 1), dict(indices=[n]), dict(output_fmt="NHWC")):
        with pytest.raises(ValueError):
            model.forward_intermediates(x, **kwargs)

    # Images: an image model takes a one-frame clip too; a video model takes an image or says what it wants.
    with torch.inference_mode():
        if x.dim() == 4:
            clip_maps = model.forward_intermediates(x[:, :, None], intermediates_only=True)
            assert close(model(x[:, :, None]), logits)
            assert [tuple(m.shape) for m in clip_maps] == [(m.shape[0], m.shape[1], 1, *m.shape[2:]) for m in maps]
        else:
            try:
                out = model(x[:, :, 0])
            except ValueError as exc:
                assert "[B, C" in str(exc)
            else:
                assert out.shape == (b, model.num_classes) and torch.isfinite(out).all()

    # reset_classifier: a new head of the asked size, the backbone untouched; 0 gives the pooled features.
    model = copy.deepcopy(model)
    model.reset_classifier(7)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 7
    with torch.inference_mode():
        assert model(x).shape == (b, 7) and torch.equal(model.forward_features(x), feats)
    model.reset_classifier(0)
    with torch.inference_mode():
        assert close(model(x), pre)


def check_detector(model: nn.Module, x: torch.Tensor) -> None:
    b, size = x.shape[0], tuple(x.shape[2:])
    with torch.inference_mode():
        logits = model(x, BOXES)
        feats = model.forward_features(x)
        ref = model.forward_head(feats, BOXES, size[-2:])
        pre = model.forward_head(feats, BOXES, size[-2:], pre_logits=True)
    assert logits.shape == (len(BOXES), model.num_classes) and close(logits, ref)
    assert tuple(feats.shape) == map_shape(b, stage_info(model)[-1], size)
    assert pre.shape == (len(BOXES), model.num_features)
    model = copy.deepcopy(model)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    with torch.inference_mode():
        assert model(x, BOXES).shape == (len(BOXES), 7)


def check_grad_checkpointing(model: nn.Module, x: torch.Tensor, detector: bool) -> None:
    """Checkpointed blocks: same output and gradients (dropout / drop-path replayed), blocks recomputed."""
    model = copy.deepcopy(model).train()
    weights = None

    def step(enable: bool):
        nonlocal weights
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        with count_module_calls() as calls:
            out = model(x, BOXES) if detector else model(x)
            if weights is None:
                weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
            (out * weights).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, calls[0]

    out, grads, calls = step(False)
    out_ckpt, grads_ckpt, calls_ckpt = step(True)
    model.set_grad_checkpointing(False)
    assert calls_ckpt > calls  # the blocks ran again in backward
    assert close(out_ckpt, out, 1e-6)
    assert set(grads_ckpt) == set(grads) and len(grads) == len(list(model.parameters()))
    bad = [k for k in grads if not close(grads_ckpt[k], grads[k], 1e-5)]
    assert not bad, bad[:5]


@pytest.mark.parametrize("case", SMALL + list(REDUCED))
def test_contract(case):
    model, x = build(case)
    detector = is_detector(case)
    if detector:
        check_detector(model, x)
    else:
        check_classifier(model, x)
    check_grad_checkpointing(model, x, detector)
    assert set(model.no_weight_decay()) <= {k for k, _ in model.named_parameters()}


# --------------------------------------------------------------------------- training wires it in
def test_train_config_turns_on_grad_checkpointing():
    from videoapp.config import config_from_dict
    from videoapp.engine.train import build_model

    data = {"num_frames": 8, "crop_size": 64}
    cfg = config_from_dict({"model": {"name": "mvitv2_xxs_8x64", "grad_checkpointing": True}})
    assert build_model(cfg, ["a", "b"], data).grad_checkpointing is True
    cfg = config_from_dict({"model": {"name": "mvitv2_xxs_8x64"}})
    assert build_model(cfg, ["a", "b"], data).grad_checkpointing is False
