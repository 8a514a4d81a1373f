"""Action detectors: any registered backbone + :class:`~videoapp.models.heads.AVAHead`.

An :class:`ActionDetector` scores person boxes on a clip, as SlowFast's AVA
models do: the backbone's last feature map (``forward_intermediates`` with
``norm=True``: the final LayerNorm, as SlowFast's MViT applies before its
detection head) goes through the AVA head, which gives one multi-label logit
per action and box. Nothing here depends on the backbone family beyond the
model contract (``forward_intermediates``, ``num_features``,
``no_weight_decay``), so every family that keeps it works.

State-dict keys are ``backbone.*`` (the backbone without its classifier) and
``head.fc.*`` (the action classifier), so ``head.fc.weight.shape[0]`` is the
action count, as for classifiers, and our weights files load through
:func:`videoapp.models.pretrained.import_checkpoint` unchanged. Weights metadata carries
``task: "detection"`` (from the registry entry) and ``labels`` (action names,
indexed like the head's outputs; head output ``i`` is AVA action id ``i + 1``,
the 1-based ids of the 80-action list that SlowFast's heads predict).

Registered variants (clip protocol in the registry entry):

- ``mvitv2_s_16x4_ava``, ``mvitv2_b_32x3_ava``: MViTv2-S 16x4 / B 32x3 at
  224 px, the backbones and clips of the MViTv2 paper's AVA v2.2 results
  (its Kinetics-pretrained backbones; SlowFast's repository has no MViTv2 AVA
  config, so head settings follow its AVA configs: RoIAlign 7x7 aligned,
  dropout 0.5, 80 actions, keyframe-centred clips, short side 224 at test time).
- ``hiera_base_16x224_ava``: Hiera-B 16x4 at 224 px (its Kinetics protocol;
  Hiera's input size is fixed, so frames are resized to 224 x 224).
- ``twins_svt_s_16x224_ava``: Twins-SVT-S 16x4, 224 px short side (the video
  Twins protocol; Twins takes any input size, its positions come from PEG
  convolutions, so the frames keep their aspect ratio as for MViTv2).
- ``mvitv2_xxs_8x64_ava``, ``hiera_xxs_8x64_ava``, ``twins_svt_xxs_8x64_ava``:
  8 frames every 8th at 64 px (tests, small models).
- ``mvitv2_xxs_8x64_s16_ava``: 8 frames 4 apart at 64 px, last stage at
  stride 16 (the shipped generated-motion detector).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn as nn

from videoapp.models.heads import AVAHead
from videoapp.models.registry import keep_keys, get_model_entry, register_converters, register_model

__all__ = [
    "ActionDetector",
    "AVA_NUM_ACTIONS",
    "CONVERTERS",
    "detect_source",
    "load_backbone_weights",
    "mvitv2_s_16x4_ava",
    "mvitv2_b_32x3_ava",
    "hiera_base_16x224_ava",
    "twins_svt_s_16x224_ava",
    "mvitv2_xxs_8x64_ava",
    "mvitv2_xxs_8x64_s16_ava",
    "hiera_xxs_8x64_ava",
    "twins_svt_xxs_8x64_ava",
]

#: Outputs of an AVA head (the AVA v2.x action list; 60 of them are evaluated).
AVA_NUM_ACTIONS = 80


class ActionDetector(nn.Module):
    """A video backbone with an AVA head: clips + person boxes -> per-box action logits.

    ``forward(x, boxes)``: ``x`` normalised clips ``[B, 3, T, H, W]``, ``boxes``
    ``[K, 5]`` rows ``[batch_index, x1, y1, x2, y2]`` in pixels of ``x``;
    returns logits ``[K, num_classes]`` (sigmoid for probabilities).

    Args:
        backbone: a registered model built with ``num_classes=0`` (its
            classifier is not used; :meth:`forward_features` reads its last
            stage through ``forward_intermediates``).
        num_classes: actions (80 for AVA).
        head_dropout: dropout before the action classifier (SlowFast's AVA 0.5).
        roi_size: RoIAlign output bins per side (7).
        backbone_name: registry name of the backbone (for loading its weights).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = AVA_NUM_ACTIONS, head_dropout: float = 0.5,
                 roi_size: int = 7, backbone_name: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.num_features = int(backbone.num_features)
        self.head = AVAHead(self.num_features, num_classes, head_dropout, roi_size)
        # Asked once: timm's signature returns only the maps with
        # intermediates_only=True and can stop at the last stage (indices=1);
        # older ones take just ``norm`` and return the list.
        params = inspect.signature(backbone.forward_intermediates).parameters
        self._intermediates_kwargs: dict[str, Any] = {"norm": True}
        if "intermediates_only" in params:
            self._intermediates_kwargs["intermediates_only"] = True
        if "indices" in params:
            self._intermediates_kwargs["indices"] = 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last-stage map, final-normed: ``[B, num_features, T', H', W']``."""
        maps = self.backbone.forward_intermediates(x, **self._intermediates_kwargs)
        if isinstance(maps, tuple):  # (final, intermediates) from a backbone without intermediates_only
            maps = maps[1]
        return maps[-1]

    def forward_head(self, features: torch.Tensor, boxes: torch.Tensor, input_size: int | tuple[int, int],
                     pre_logits: bool = False) -> torch.Tensor:
        """Map ``[B, C, T', H', W']`` + boxes ``[K, 5]`` (pixels of an input ``input_size`` = ``(H, W)``)
        -> logits ``[K, num_classes]`` (pooled ``[K, C]`` with ``pre_logits``)."""
        return self.head(features, boxes, input_size, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Clips ``[B, 3, T, H, W]`` + boxes ``[K, 5]`` in input pixels -> logits ``[K, num_classes]``."""
        if boxes is None:
            # Classification code paths call model(x): say what is missing instead of a TypeError.
            raise ValueError("an action detector scores person boxes: call it as model(clips, boxes) "
                             "(on the command line: videoapp detect)")
        return self.forward_head(self.forward_features(x), boxes, (int(x.shape[-2]), int(x.shape[-1])))

    def get_classifier(self) -> nn.Module:
        """The action classifier (``head.fc``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the action classifier with a fresh one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the backbone's blocks in training (see the backbone's method)."""
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """The backbone's no-weight-decay parameters, with their ``backbone.`` prefix."""
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{n}" for n in inner}


def load_backbone_weights(detector: ActionDetector, path: str, source: str = "auto") -> list[str]:
    """Initialise ``detector.backbone`` from a classifier checkpoint of its backbone (e.g. Kinetics weights).

    The checkpoint is read with :func:`videoapp.models.pretrained.import_checkpoint` for
    the backbone's registry name (any format it understands); its classifier is
    dropped. Returns the notes of the import. Raises ``CheckpointError`` when
    the weights do not fit the backbone.
    """
    from videoapp.models.pretrained import import_checkpoint
    from videoapp.weights import CheckpointError

    if detector.backbone_name is None:
        raise CheckpointError("the detector does not know its backbone's registry name")
    state, report = import_checkpoint(path, detector.backbone_name, source=source)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = detector.backbone.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise CheckpointError(f"{path}: does not fit {detector.backbone_name}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return list(report.notes)


# --------------------------------------------------------------------------- checkpoints
#: Checkpoint format -> converter (read by :func:`videoapp.models.pretrained.import_checkpoint`). Detectors are
#: saved in our format only; a backbone's own checkpoints go through :func:`load_backbone_weights`.
CONVERTERS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {"videoapp": keep_keys}


def detect_source(state_dict: dict[str, torch.Tensor]) -> str | None:
    """``"videoapp"`` for a detector state dict (``backbone.*`` + ``head.fc.*``), else ``None``."""
    keys = set(state_dict)
    if "head.fc.weight" in keys and any(k.startswith("backbone.") for k in keys):
        return "videoapp"
    return None


# The pretrained layer (models/pretrained.py) finds the converters here, by registry entry.
register_converters(__name__, detect_source=detect_source, convert=CONVERTERS)


# --------------------------------------------------------------------------- variants
def _build(backbone_name: str, overrides: dict[str, Any]) -> ActionDetector:
    """Detector over registry model ``backbone_name``; ``num_classes``, ``head_dropout`` and
    ``roi_size`` configure the AVA head, every other keyword goes to the backbone."""
    kwargs = dict(overrides)
    num_classes = int(kwargs.pop("num_classes", AVA_NUM_ACTIONS))
    head_dropout = float(kwargs.pop("head_dropout", 0.5))
    roi_size = int(kwargs.pop("roi_size", 7))
    backbone = get_model_entry(backbone_name).factory(num_classes=0, **kwargs)
    return ActionDetector(backbone, num_classes, head_dropout, roi_size, backbone_name=backbone_name)


def _detector(backbone: str, **protocol: Any):
    # A detector takes its clip protocol from its backbone's registry entry (one source; ``protocol``
    # names what a detector variant changes), and shares its family name (``videoapp models`` groups them).
    entry = get_model_entry(backbone)
    return register_model(entry.family, **{**entry.data, **protocol, "task": "detection", "backbone": backbone})


@_detector("mvitv2_s_16x4")
def mvitv2_s_16x4_ava(**kwargs: Any) -> ActionDetector:
    """MViTv2-S 16x4 AVA detector, 224 px short side: RoIAlign head on the last stage, 80 actions."""
    return _build("mvitv2_s_16x4", kwargs)


@_detector("mvitv2_b_32x3")
def mvitv2_b_32x3_ava(**kwargs: Any) -> ActionDetector:
    """MViTv2-B 32x3 AVA detector, 224 px short side: RoIAlign head on the last stage, 80 actions."""
    return _build("mvitv2_b_32x3", kwargs)


@_detector("hiera_base_16x224")
def hiera_base_16x224_ava(**kwargs: Any) -> ActionDetector:
    """Hiera-B 16x4 AVA detector, 224 x 224 px: RoIAlign head on the last stage, 80 actions."""
    return _build("hiera_base_16x224", kwargs)


@_detector("twins_svt_s_16x224")
def twins_svt_s_16x224_ava(**kwargs: Any) -> ActionDetector:
    """Twins-SVT-S 16x4 AVA detector, 224 px short side: RoIAlign head on the last stage, 80 actions."""
    return _build("twins_svt_s_16x224", kwargs)


@_detector("mvitv2_xxs_8x64")
def mvitv2_xxs_8x64_ava(**kwargs: Any) -> ActionDetector:
    """MViTv2-XXS 8x8 detector, 64 px short side (tests, small models): 80 actions by default."""
    return _build("mvitv2_xxs_8x64", kwargs)


@_detector("mvitv2_xxs_8x64", sampling_rate=4)
def mvitv2_xxs_8x64_s16_ava(**kwargs: Any) -> ActionDetector:
    """MViTv2-XXS detector, 8 frames 4 apart at 64 px, last stage at stride 16 (the shipped detector).

    The last stage keeps stride 16 (no Q pooling into it), as SlowFast's AVA
    detectors keep res5 at stride 16, so RoIAlign reads a 4 x 5 map of a 4:3
    clip instead of 2 x 3. Parameter shapes and clip protocol equal the camera
    classifier ``mvitv2_xxs_8x64``'s, whose weights initialise its backbone.
    """
    return _build("mvitv2_xxs_8x64", {"q_stride": [(1, 2, 2), (1, 2, 2), (1, 1, 1)], **kwargs})


@_detector("hiera_xxs_8x64")
def hiera_xxs_8x64_ava(**kwargs: Any) -> ActionDetector:
    """Hiera-XXS 8x8 detector, 64 x 64 px (tests, small models): 80 actions by default."""
    return _build("hiera_xxs_8x64", kwargs)


@_detector("twins_svt_xxs_8x64")
def twins_svt_xxs_8x64_ava(**kwargs: Any) -> ActionDetector:
    """Twins-SVT-XXS 8x8 detector, 64 px short side (tests, small models): 80 actions by default."""
    return _build("twins_svt_xxs_8x64", kwargs)
