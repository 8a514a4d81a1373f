"""Training and fine-tuning loop (``videoapp train CONFIG``), single process or ``torchrun``.

What one run does (see :mod:`videoapp.config` for every setting):

- data from the generated camera-motion pool or from video files
  (class-per-folder, Kinetics CSV, path lists, SSv2 JSON: :mod:`videoapp.data.datasets`);
- action detectors (``*_ava`` models) on AVA-format data (``data.source: ava``):
  one keyframe clip and its boxes per item (boxes jittered in training),
  multi-label BCE-with-logits on the AVA head's logits, and frame-mAP
  (:func:`videoapp.engine.ava_metrics.evaluate_ava`) over every box of every
  validation keyframe after each epoch (:func:`evaluate_detection`);
- any registered model, optionally starting from weights with a new head
  (``model.pretrained``, ``model.reset_head``) and a frozen backbone
  (``model.freeze_backbone``: a linear probe);
- AdamW (no weight decay on norms, biases, position tables), linear warmup then
  cosine decay per optimizer step, label-smoothed cross-entropy, global
  gradient-norm clipping, bf16 autocast on CPU and CUDA, gradient
  accumulation;
- a validation pass (loss, top-1, top-5, confusion matrix) after every epoch;
- ``out_dir/checkpoint.pt`` after every epoch (and every
  ``train.checkpoint_every`` optimizer steps), written atomically, so a killed
  run continues with ``--resume`` from the last checkpoint with exactly the
  state an uninterrupted run would have had (data order and augmentation are
  functions of ``(seed, epoch, index)``; the torch RNG is re-seeded from
  ``(seed, epoch, position, rank)`` at every checkpoint position);
- ``out_dir/log.jsonl`` (one JSON object per logged step and per epoch),
  ``out_dir/curves.png`` (loss and accuracy), ``out_dir/model.safetensors``
  (weights + metadata: labels, clip sampling, preprocessing, metrics) and a
  copy at ``train.export``.

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE`` > 1) the model is
wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA), each
process reads its shard of every epoch through a ``DistributedSampler``,
validation sums are all-reduced, and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from videoapp.config import Config, ConfigError, config_to_dict, dump_config
from videoapp.files import atomic_path, atomic_write_text, first_line, save_png
from videoapp.hardware import bf16_kind

logger = logging.getLogger("videoapp")

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "model.safetensors"
LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"
_CHECKPOINT_FORMAT = "videoapp-train-checkpoint"


class TrainError(ValueError):
    """A training run that cannot start or continue as asked; ``str()`` is one line."""


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``history``: one dict per finished epoch (train/val loss and accuracy);
    ``files_written``: paths this process wrote (empty on ranks other than 0);
    ``weights``: the final weights file (rank 0) or ``None``.
    """

    out_dir: Path
    weights: Path | None
    history: list[dict]
    step: int
    epochs_done: int
    rank: int
    world_size: int
    time_s: float
    stopped_early: bool = False
    files_written: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- distributed set-up
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float64)
        if self.enabled:
            t = t.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            t = t.cpu()
        return t


def _setup_distributed(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError("train.device is cuda but no CUDA device is available")
        device = torch.device(device_name if ":" in device_name else f"cuda:{local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    d = _Dist(rank=rank, world=world, local_rank=local_rank, device=device)
    if dist.is_available() and dist.is_initialized():
        d.rank, d.world = dist.get_rank(), dist.get_world_size()
    elif world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        d.initialized_here = True
    return d


# --------------------------------------------------------------------------- small pieces
def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``base_lr``, then cosine to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices/kernels only (not norms, biases, tokens, position tables)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _reseed(seed: int, epoch: int, position: int, rank: int) -> None:
    # Dropout / drop-path randomness: a function of where we are, so a resumed run matches.
    torch.manual_seed(int(np.random.default_rng([seed, epoch, position, rank, 99]).integers(0, 2**62)))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bf16_kind() != "emulated"


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-``k`` logits, for each ``k``."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == target[:, None]
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


# --------------------------------------------------------------------------- data and model
def _resolve_classes(cfg: Config):
    """Class names and (for file datasets) the annotations of each split."""
    from videoapp.data import datasets as D

    d = cfg.data
    if d.source == "ava":
        return _ava_annotations(cfg)
    if d.source == "camera_motion":
        from videoapp.data.synthetic import CAMERA_MOTIONS

        classes = list(d.pool.classes) if d.pool.classes else list(CAMERA_MOTIONS)
        unknown = [c for c in classes if c not in CAMERA_MOTIONS]
        if unknown:
            raise ConfigError(f"data.pool.classes: unknown camera motions {unknown} (known: {', '.join(CAMERA_MOTIONS)})")
        if not 0.0 <= d.pool.large_movers <= 1.0:
            raise ConfigError(f"data.pool.large_movers: a probability in [0, 1], got {d.pool.large_movers}")
        return classes, None, None
    train_ann = D.read_annotations(d.source, d.train, d.root, d.labels)
    val_ann = D.read_annotations(d.source, d.val, d.root, train_ann.classes) if d.val else None
    return list(train_ann.classes), train_ann, val_ann


def _starts_backbone_only(cfg: Config) -> bool:
    """Whether ``model.pretrained`` only starts a detector's backbone: a classifier's weights (ours or any
    checkpoint of the backbone) under a detector, whose head and clip protocol then come from its own entry."""
    from videoapp.models.registry import get_model_entry

    pre = cfg.model.pretrained
    return bool(pre) and get_model_entry(cfg.model.name).data.get("task") == "detection" \
        and _weights_task(pre) != "detection"


def _data_config(cfg: Config) -> dict:
    """Clip sampling and preprocessing: registry entry < pretrained weights' metadata < config.

    A classifier's weights that only start a detector's backbone do not bring their protocol: a
    detector reads whole frames around keyframes, so its own registry entry decides.
    """
    from videoapp.models.registry import get_model_entry
    from videoapp.weights import DATA_KEYS, read_metadata

    data = dict(get_model_entry(cfg.model.name).data)
    pre = cfg.model.pretrained
    if pre and str(pre).endswith(".safetensors") and Path(pre).is_file() and not _starts_backbone_only(cfg):
        meta = read_metadata(pre)
        data.update({k: meta[k] for k in DATA_KEYS if k in meta})
    for k in ("num_frames", "sampling_rate", "crop_size", "mean", "std", "channel_order", "sampling"):
        v = getattr(cfg.data, k)
        if v is not None:
            data[k] = v
    data.setdefault("sampling", "rate")
    data.setdefault("channel_order", "rgb")
    data["num_frames"], data["sampling_rate"], data["crop_size"] = (
        int(data["num_frames"]), int(data["sampling_rate"]), int(data["crop_size"]))
    data["mean"], data["std"] = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    return data


def build_model(cfg: Config, classes: Sequence[str], data: dict) -> nn.Module:
    """The model of ``cfg.model`` with a ``len(classes)``-way head (fine-tuning / linear-probe set-up applied)."""
    from videoapp.models import create_model, get_model_entry

    entry = get_model_entry(cfg.model.name)
    kwargs = dict(cfg.model.kwargs)
    for k in ("num_frames", "crop_size"):
        if data[k] != entry.data[k] and k not in kwargs:
            kwargs[k] = data[k]
    pretrained, backbone_init = cfg.model.pretrained, None
    if _starts_backbone_only(cfg):
        pretrained, backbone_init = None, pretrained
    model = create_model(cfg.model.name, pretrained=pretrained, num_classes=len(classes), **kwargs)
    if backbone_init is not None:
        from videoapp.models.detector import load_backbone_weights
        from videoapp.weights import CheckpointError

        try:
            load_backbone_weights(model, backbone_init)
        except CheckpointError as exc:
            raise TrainError(f"model.pretrained: {exc}") from None
    old_labels = model.pretrained_cfg.labels
    if cfg.model.pretrained and (cfg.model.reset_head or (old_labels is not None and list(old_labels) != list(classes))):
        model.reset_classifier(len(classes))
    model.pretrained_cfg = model.pretrained_cfg.replace(labels=tuple(classes))
    if entry.data.get("task") == "detection":
        # A backbone with one input size (Hiera) takes crop x crop frames, as DetectionPredictor feeds it.
        data["fixed_size"] = getattr(model.backbone, "input_size", None) is not None
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.model.freeze_backbone:
        if not cfg.model.pretrained:
            logger.warning("model.freeze_backbone without model.pretrained: training a head on random features")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
    return model


class Teacher(nn.Module):
    """A frozen, trained model whose logits a student learns to match (``distill:`` section).

    ``forward(x)`` takes the *student's* normalised clips ``[B, C, T, H, W]``,
    re-normalises them with the teacher's own mean/std (per channel, the same
    pixels) and returns the teacher's logits ``[B, num_classes]`` without autograd.
    """

    def __init__(self, model: nn.Module, student_mean: Sequence[float], student_std: Sequence[float],
                 teacher_mean: Sequence[float], teacher_std: Sequence[float]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        s_mean, s_std, t_mean, t_std = (torch.tensor([float(v) for v in a]).view(1, -1, 1, 1, 1)
                                        for a in (student_mean, student_std, teacher_mean, teacher_std))
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std = x * scale + shift
        self.register_buffer("scale", s_std / t_std, persistent=False)
        self.register_buffer("shift", (s_mean - t_mean) / t_std, persistent=False)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always in eval mode (dropout, drop path off)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def build_teacher(cfg: Config, classes: Sequence[str], data: dict) -> Teacher | None:
    """The :class:`Teacher` of ``cfg.distill`` (``None`` when off); a :class:`TrainError` when it does not fit.

    The teacher must predict the same labels in the same order from the same
    clip (frames, sampling rate and mode, crop, channel order) as the student is trained on.
    """
    c = cfg.distill
    if not c.teacher:
        return None
    if cfg.data.source == "ava":
        raise TrainError("distill: distillation is for classifiers; data.source=ava trains a detector")
    if not 0.0 <= c.alpha <= 1.0 or c.temperature <= 0:
        raise TrainError(f"distill.alpha must be in [0, 1] and distill.temperature > 0 "
                         f"(got {c.alpha}, {c.temperature})")
    from videoapp.models import create_model
    from videoapp.weights import CheckpointError, read_metadata

    try:
        meta = read_metadata(c.teacher)
        if not meta.get("model"):
            raise TrainError(f"distill.teacher {c.teacher}: not a videoapp weights file (no model in its metadata)")
        model = create_model(meta["model"], pretrained=c.teacher)
    except (CheckpointError, OSError) as exc:
        raise TrainError(f"distill.teacher: {exc}") from None
    if list(meta.get("labels") or []) != list(classes):
        raise TrainError(f"distill.teacher {c.teacher}: its labels are not the training labels "
                         f"({len(meta.get('labels') or [])} vs {len(classes)} classes, or another order)")
    for key in ("num_frames", "sampling_rate", "sampling", "crop_size", "channel_order"):
        if key in meta and meta[key] != data[key]:
            raise TrainError(f"distill.teacher {c.teacher}: {key} is {meta[key]}, the training clips have {data[key]}")
    return Teacher(model, data["mean"], data["std"], meta.get("mean", data["mean"]), meta.get("std", data["std"]))


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch (a scalar)."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


def build_datasets(cfg: Config, classes: list[str], data: dict, train_ann, val_ann, d: _Dist):
    """``(train dataset, val dataset or None)``; the camera-motion pool is rendered (and cached) by rank 0."""
    from videoapp.data.datasets import PoolDataset, VideoDataset

    c = cfg.data
    seed = cfg.train.seed
    if c.source == "ava":
        return _ava_datasets(cfg, classes, data, train_ann, val_ann)
    if c.source == "camera_motion":
        from videoapp.data.synthetic import Pool, cached_pool, pool_key

        p = c.pool
        common = dict(num_frames=data["num_frames"], sampling_rate=data["sampling_rate"],
                      crop_size=data["crop_size"], classes=classes, large_movers=float(p.large_movers))
        specs = [("train", p.train_clips, p.seed)] + ([("test", p.val_clips, p.seed + 1)] if p.val_clips else [])
        pools = {}
        for split, n, s in specs:
            kw = dict(common, split=split, seed=s)
            if d.main:
                t0 = time.time()
                pools[split] = cached_pool(p.cache_dir, n, workers=p.workers, progress=cfg.train.progress, **kw)
                logger.info("%s pool: %d clips ready in %.1f s", split, n, time.time() - t0)
        d.barrier()
        if not d.main:
            for split, n, s in specs:
                key = pool_key(n, split=split, seed=s, **common)
                pools[split] = Pool.load(Path(p.cache_dir) / key)
        norm = dict(mean=data["mean"], std=data["std"], channel_order=data["channel_order"], seed=seed)
        train_ds = PoolDataset(pools["train"], train=True, augment=p.augment, **norm)
        val_ds = PoolDataset(pools["test"], train=False, **norm) if "test" in pools else None
        return train_ds, val_ds
    common = dict(num_frames=data["num_frames"], sampling_rate=data["sampling_rate"], crop_size=data["crop_size"],
                  mean=data["mean"], std=data["std"], sampling=data["sampling"], channel_order=data["channel_order"],
                  seed=seed)
    train_ds = VideoDataset(train_ann, train=True, min_scale=c.min_scale, max_scale=c.max_scale, flip=c.flip, **common)
    val_ds = VideoDataset(val_ann, train=False, **common) if val_ann is not None else None
    return train_ds, val_ds


# --------------------------------------------------------------------------- AVA-format detection
def _weights_task(path: str) -> str | None:
    """The ``task`` of the registry model a weights file was saved from (``None``: unknown or a foreign checkpoint)."""
    from videoapp.models.registry import get_model_entry
    from videoapp.weights import read_metadata

    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return None
    try:
        name = read_metadata(path).get("model")
        return get_model_entry(name).data.get("task") if name else None
    except Exception:  # an unknown model name or an unreadable header: treat as a foreign checkpoint
        return None


def _ava_label_map(cfg: Config) -> dict[int, str]:
    from videoapp.data.ava import AVAFormatError, read_label_map

    try:
        return read_label_map(cfg.data.labels)
    except AVAFormatError as exc:
        raise ConfigError(f"data.labels: {exc}") from None


def _ava_annotations(cfg: Config):
    """``(classes, train rows, val rows or None)`` of ``data.source: ava``.

    The head has one output per action id up to the label map's largest
    (output ``i`` is id ``i + 1``, as SlowFast's AVA heads); ids the map does
    not name are called ``action_<id>``.
    """
    from videoapp.data.ava import AVAFormatError, read_ava_csv

    labels = _ava_label_map(cfg)
    classes = [labels.get(i, f"action_{i}") for i in range(1, max(labels) + 1)]
    try:
        train_rows = read_ava_csv(cfg.data.train, "groundtruth")
        val_rows = read_ava_csv(cfg.data.val, "groundtruth") if cfg.data.val else None
    except AVAFormatError as exc:
        raise ConfigError(f"data: {exc}") from None
    return classes, train_rows, val_rows


def _ava_datasets(cfg: Config, classes: list[str], data: dict, train_rows, val_rows):
    """Training keyframes (boxes jittered) and validation keyframes (every keyframe of ``data.val`` with boxes)."""
    import functools

    from videoapp.data.datasets import AVADataset, DatasetError
    from videoapp.engine.detect import keyframe_clip_indices

    c = cfg.data
    common = dict(root=c.root, num_classes=len(classes), crop_size=data["crop_size"], mean=data["mean"],
                  std=data["std"], channel_order=data["channel_order"], fixed_size=bool(data.get("fixed_size")),
                  time_offset=c.time_offset, seed=cfg.train.seed,
                  indices_fn=functools.partial(keyframe_clip_indices, num_frames=data["num_frames"],
                                               sampling_rate=data["sampling_rate"]))
    index = {name: i for i, name in enumerate(classes)}
    augment = {}
    for name, pairs in (c.box_augment or {}).items():
        try:
            augment[name] = [(index[a], index[b]) for a, b in (pairs or [])]
        except KeyError as exc:
            raise ConfigError(f"data.box_augment.{name}: {exc.args[0]!r} is not an action of the label map "
                              f"(e.g. {', '.join(classes[:3])})") from None
        except (TypeError, ValueError):
            raise ConfigError(f"data.box_augment.{name}: expected pairs of action names, got {pairs!r}") from None
    try:
        train_ds = AVADataset(train_rows, train=True, jitter=c.box_jitter, augment=augment, **common)
        val_ds = AVADataset(val_rows, train=False, **common) if val_rows is not None else None
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    return train_ds, val_ds


def box_bce(logits: torch.Tensor, targets) -> torch.Tensor:
    """Multi-label BCE-with-logits of box logits ``[K, C]`` against ``targets.labels`` ``[K, C]`` (mean)."""
    return F.binary_cross_entropy_with_logits(logits, targets.labels)


def _num_correct(logits: torch.Tensor, y) -> int:
    """Classification: clips whose top class is the label. Detection: boxes whose actions (p >= 0.5) are all right."""
    if isinstance(y, torch.Tensor):
        return int((logits.argmax(1) == y).sum())
    return int(((logits >= 0) == (y.labels >= 0.5)).all(dim=1).sum())


@torch.no_grad()
def evaluate_detection(model: nn.Module, dataset, batch_size: int, device: torch.device, bf16: bool, d: _Dist,
                       label_map: dict[int, str], num_workers: int = 0) -> dict:
    """Frame-mAP of ``model`` on every keyframe of ``dataset`` (an :class:`~videoapp.data.datasets.AVADataset`).

    Every box of every keyframe gets a score per action (sigmoid, output
    ``i`` = action id ``i + 1``); the rows are scored against
    ``dataset.rows`` by :func:`videoapp.engine.ava_metrics.evaluate_ava`
    (official frame-mAP@0.5 over ``label_map``'s actions). Keyframes are
    sharded over ranks and the rows gathered. Returns ``val_loss`` (BCE),
    ``val_map`` (0-1), ``val_ap`` (``{action name: AP or None}``) and ``val_boxes``.
    """
    from videoapp.data.ava import AVARow
    from videoapp.data.datasets import IndexedAVADataset
    from videoapp.engine.ava_metrics import evaluate_ava

    was_training = model.training
    model.eval()
    shard = IndexedAVADataset(dataset, range(d.rank, len(dataset), d.world))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=shard.collate)
    rows: list = []
    loss_sum, n = 0.0, 0
    for x, y in loader:
        x, t = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, bf16):
            logits = model(x, t.rois)
        logits = logits.float()
        loss_sum += float(F.binary_cross_entropy_with_logits(logits, t.labels, reduction="sum")) / logits.shape[1]
        n += len(t)
        probs = logits.sigmoid().cpu().numpy()
        for k in range(len(probs)):
            vid, ts, boxes = dataset.keyframe(int(y.items[int(y.rois[k, 0])]))
            box = boxes[int(y.box_index[k])]
            for i, p in enumerate(probs[k]):
                rows.append(AVARow(vid, ts, box, i + 1, None, float(p)))
    if d.enabled:
        gathered: list = [None] * d.world
        dist.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    sums = d.all_reduce([loss_sum, n])
    model.train(was_training)
    report = evaluate_ava(dataset.rows, rows, label_map)
    return {"val_loss": float(sums[0]) / max(float(sums[1]), 1.0), "val_map": float(report["map"]),
            "val_ap": report["per_class_ap"], "val_boxes": int(sums[1])}


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int, device: torch.device, bf16: bool, d: _Dist,
             num_classes: int, num_workers: int = 0) -> dict:
    """Loss, top-1, top-5 and the confusion matrix over ``dataset`` (sharded over ranks, sums all-reduced)."""
    was_training = model.training
    model.eval()
    indices = list(range(d.rank, len(dataset), d.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, bf16):
            logits = model(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        a1, a5 = topk_correct(logits, y)
        c1, c5, n = c1 + a1, c5 + a5, n + len(y)
        pred = logits.argmax(1).cpu()
        confusion.index_put_((y.cpu(), pred), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    sums = d.all_reduce(torch.cat([torch.tensor([loss_sum, c1, c5, n], dtype=torch.float64), confusion.flatten()]))
    model.train(was_training)
    total = max(float(sums[3]), 1.0)
    return {
        "val_loss": float(sums[0]) / total, "val_top1": float(sums[1]) / total, "val_top5": float(sums[2]) / total,
        "val_clips": int(sums[3]), "val_confusion": sums[4:].view(num_classes, num_classes).long().tolist(),
    }


# --------------------------------------------------------------------------- outputs
class _Outputs:
    """Everything the run writes; a no-op on ranks other than 0 (and it records what it wrote)."""

    def __init__(self, out_dir: Path, d: _Dist) -> None:
        self.dir = out_dir
        self.enabled = d.main
        self.written: list[Path] = []
        self.records: list[dict] = []

    def _note(self, path: Path) -> None:
        if path not in self.written:
            self.written.append(path)

    def prepare(self, cfg: Config) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_text("config.yaml", dump_config(cfg))

    def write_text(self, name: str, text: str) -> None:
        if not self.enabled:
            return
        path = self.dir / name
        atomic_write_text(path, text)
        self._note(path)

    def log(self, record: dict) -> None:
        """Append one JSON record to ``log.jsonl`` (and keep it for the checkpoint)."""
        self.records.append(record)
        if not self.enabled:
            return
        path = self.dir / LOG_NAME
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._note(path)

    def restore_log(self, records: list[dict]) -> None:
        """Rewrite ``log.jsonl`` with the records of a checkpoint (drops what a killed run logged after it)."""
        self.records = list(records)
        if self.enabled:
            self.write_text(LOG_NAME, "".join(json.dumps(r) + "\n" for r in records))

    def save_checkpoint(self, state: dict) -> None:
        if not self.enabled:
            return
        path = self.dir / CHECKPOINT_NAME
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        self._note(path)

    def save_weights(self, model: nn.Module, metadata: dict, extra: str | None = None) -> Path | None:
        if not self.enabled:
            return None
        from videoapp.weights import save_weights

        path = save_weights(self.dir / WEIGHTS_NAME, model.state_dict(), metadata)
        self._note(path)
        if extra:
            target = Path(extra)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
            self._note(target)
        return path

    def plot(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        path = self.dir / PLOT_NAME
        plot_curves(self.records, path)
        self._note(path)


def plot_curves(records: Sequence[dict], path: str | os.PathLike) -> Path:
    """Loss and accuracy curves from log records (``type`` "step" and "epoch") into a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        ax1.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="train (steps)")
    if epochs:
        xs = [r["step"] for r in epochs]
        ax1.plot(xs, [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        if "val_loss" in epochs[0]:
            ax1.plot(xs, [r["val_loss"] for r in epochs], "s-", label="validation")
        ax2.plot(xs, [100 * r["train_top1"] for r in epochs], "o-", label="train top-1")
        if "val_top1" in epochs[0]:
            ax2.plot(xs, [100 * r["val_top1"] for r in epochs], "s-", label="val top-1")
            ax2.plot(xs, [100 * r["val_top5"] for r in epochs], "^--", label="val top-5")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.legend(loc="upper right")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("accuracy")
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right")
    fig.tight_layout()
    return save_png(fig, path)


# --------------------------------------------------------------------------- the loop
def _load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise TrainError(f"{path}: cannot read the checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a videoapp training checkpoint")
    return state


def train(cfg: Config, *, resume: bool = False, config_name: str | None = None) -> TrainResult:
    """Run (or with ``resume`` continue) the training described by ``cfg``; see the module docstring.

    Without ``resume`` an ``out_dir`` that already holds a checkpoint is an
    error (nothing is overwritten by accident); with ``resume`` and no
    checkpoint the run starts from scratch. ``config_name`` is recorded in the
    weights' ``source`` metadata.
    """
    t_start = time.time()
    run = cfg.train
    d = _setup_distributed(run.device)
    old_threads = torch.get_num_threads()
    if run.threads:
        torch.set_num_threads(run.threads)
    try:
        return _train(cfg, d, resume, config_name, t_start)
    finally:
        if run.threads:
            torch.set_num_threads(old_threads)
        if d.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, d: _Dist, resume: bool, config_name: str | None, t_start: float) -> TrainResult:
    run, opt_cfg = cfg.train, cfg.optim
    out_dir = Path(run.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    state = None
    if ckpt_path.is_file():
        if not resume:
            raise TrainError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, "
                             f"or choose another train.out_dir")
        state = _load_checkpoint(ckpt_path)
        if state["config"]["model"]["name"] != cfg.model.name:
            raise TrainError(f"{ckpt_path}: the checkpoint is for {state['config']['model']['name']}, "
                             f"not {cfg.model.name}")
    elif resume and d.main:
        logger.warning("%s: no checkpoint to resume from; starting a new run", out_dir)

    bf16 = native_bf16(d.device) if run.bf16 is None else bool(run.bf16)
    torch.manual_seed(run.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    classes, train_ann, val_ann = _resolve_classes(cfg)
    data = _data_config(cfg)
    model = build_model(cfg, classes, data)
    device = d.device
    model.to(device)
    teacher = build_teacher(cfg, classes, data)
    if teacher is not None:
        teacher.to(device)
        if d.main:
            logger.info("distilling from %s (alpha %.2f, temperature %.1f)", cfg.distill.teacher,
                        cfg.distill.alpha, cfg.distill.temperature)
    train_ds, val_ds = build_datasets(cfg, classes, data, train_ann, val_ann, d)

    bs, accum = cfg.data.batch_size, opt_cfg.accum_steps
    micro_available = len(train_ds) // d.world // bs
    steps_per_epoch = micro_available // accum
    if run.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, run.steps_per_epoch)
    if steps_per_epoch < 1:
        raise TrainError(f"the training set has {len(train_ds)} clips: fewer than one optimizer step per epoch "
                         f"(batch_size {bs} x accum_steps {accum} x {d.world} processes)")
    micro_per_epoch = steps_per_epoch * accum
    total_steps = steps_per_epoch * run.epochs
    warmup_steps = int(round(opt_cfg.warmup_epochs * steps_per_epoch))

    optimizer = torch.optim.AdamW(param_groups(model, opt_cfg.weight_decay), lr=opt_cfg.lr,
                                  betas=tuple(opt_cfg.betas))
    detection = cfg.data.source == "ava"
    criterion = box_bce if detection else nn.CrossEntropyLoss(label_smoothing=opt_cfg.label_smoothing)
    out = _Outputs(out_dir, d)

    epoch, micro_done, step, elapsed_before = 0, 0, 0, 0.0
    history: list[dict] = []
    ep_stats = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "clips": 0.0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, micro_done, step = int(state["epoch"]), int(state["micro"]), int(state["step"])
        history = list(state["history"])
        ep_stats = dict(state["epoch_stats"])
        elapsed_before = float(state["elapsed_s"])
        if int(state.get("world_size", d.world)) != d.world and d.main:
            logger.warning("resuming a %s-process run with %d processes: the data order changes",
                           state.get("world_size"), d.world)
    out.prepare(cfg)
    if state is not None:
        out.restore_log(list(state["log"]))
        if d.main:
            logger.info("resumed from %s: epoch %d, step %d", ckpt_path, epoch, step)

    trainable = [p for p in model.parameters() if p.requires_grad]
    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    from tqdm import tqdm

    def metadata(metrics: dict) -> dict:
        meta = {"model": cfg.model.name, "labels": list(classes)}
        if detection:
            meta["task"] = "detection"
        meta.update({k: data[k] for k in ("num_frames", "sampling_rate", "crop_size", "mean", "std",
                                          "channel_order", "sampling")})
        meta["source"] = f"videoapp train {config_name}" if config_name else "videoapp train"
        meta["metrics"] = metrics
        meta["train"] = {"steps": step, "epochs": len(history), "time_s": round(elapsed(), 1), "world_size": d.world,
                         "seed": run.seed, "bf16": bf16, "device": device.type, "config": config_to_dict(cfg)}
        return meta

    def elapsed() -> float:
        return elapsed_before + (time.time() - t_run)

    def checkpoint() -> None:
        out.save_checkpoint({
            "format": _CHECKPOINT_FORMAT, "version": 1, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "epoch": epoch, "micro": micro_done, "step": step,
            "epoch_stats": ep_stats, "history": history, "log": out.records, "classes": list(classes),
            "config": config_to_dict(cfg), "elapsed_s": elapsed(), "world_size": d.world,
        })

    def set_train_mode() -> None:
        model.train()
        if cfg.model.freeze_backbone:  # linear probe: the frozen backbone runs as in inference
            model.eval()
            model.head.train()

    t_run = time.time()
    stopped_early = False
    last_metrics: dict = history[-1].get("metrics", {}) if history else {}
    log_sum, log_n, log_t, log_clips = 0.0, 0, time.time(), 0
    while epoch < run.epochs and not stopped_early:
        train_ds.set_epoch(epoch)
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True,
                                                      seed=run.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)[: micro_per_epoch * bs]
        gen = torch.Generator().manual_seed(run.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, sampler=order[micro_done * bs:],
                                             num_workers=cfg.data.num_workers, drop_last=True, generator=gen,
                                             pin_memory=device.type == "cuda",
                                             collate_fn=getattr(train_ds, "collate", None))
        batches = iter(loader)
        _reseed(run.seed, epoch, micro_done, d.rank)
        set_train_mode()
        bar = tqdm(total=micro_per_epoch, initial=micro_done, desc=f"epoch {epoch + 1}/{run.epochs}", unit="batch",
                   disable=not (run.progress and d.main), leave=False, mininterval=2.0, file=sys.stderr)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            micro_done += 1
            boundary = micro_done % accum == 0
            sync = net.no_sync() if (d.enabled and not boundary) else contextlib.nullcontext()
            with sync:
                with _autocast(device, bf16):
                    logits = net(x, y.rois) if detection else net(x)
                loss = criterion(logits.float(), y)
                if teacher is not None:
                    with _autocast(device, bf16):
                        target = teacher(x)
                    alpha = cfg.distill.alpha
                    loss = (1 - alpha) * loss + alpha * distill_loss(logits.float(), target.float(),
                                                                     cfg.distill.temperature)
                (loss / accum).backward()
            lv = float(loss.detach())
            ep_stats["loss_sum"] += lv * len(y)
            ep_stats["correct"] += float(_num_correct(logits.detach(), y))
            ep_stats["count"] += len(y)
            ep_stats["clips"] += len(x) * d.world
            log_sum, log_n, log_clips = log_sum + lv, log_n + 1, log_clips + len(x) * d.world
            bar.update(1)
            if not boundary:
                continue
            lr = lr_at(step, total_steps, warmup_steps, opt_cfg.lr, opt_cfg.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            grad_norm = None
            if opt_cfg.clip_grad is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, opt_cfg.clip_grad))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % run.log_every == 0:
                red = d.all_reduce([log_sum, log_n])
                now = time.time()
                rec = {"type": "step", "step": step, "epoch": epoch + micro_done / micro_per_epoch,
                       "loss": round(float(red[0]) / max(float(red[1]), 1), 5), "lr": lr,
                       "clips_per_s": round(log_clips / max(now - log_t, 1e-9), 2)}
                if grad_norm is not None:
                    rec["grad_norm"] = round(grad_norm, 4)
                out.log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2e}")
                log_sum, log_n, log_t, log_clips = 0.0, 0, now, 0
            if run.time_limit_min is not None:
                over = d.all_reduce([1.0 if elapsed() > run.time_limit_min * 60 else 0.0])
                if float(over[0]) > 0:
                    stopped_early = True
            if micro_done >= micro_per_epoch or stopped_early:
                break
            if run.checkpoint_every and step % run.checkpoint_every == 0:
                checkpoint()
                _reseed(run.seed, epoch, micro_done, d.rank)
        bar.close()
        del batches
        if micro_done < micro_per_epoch and not stopped_early:
            raise RuntimeError(f"epoch {epoch} ended after {micro_done} of {micro_per_epoch} batches")
        # End of the epoch (or of the time budget): statistics, validation, checkpoint, weights.
        tr = d.all_reduce([ep_stats["loss_sum"], ep_stats["correct"], ep_stats["count"]])
        record = {"type": "epoch", "epoch": epoch + 1, "step": step,
                  "train_loss": float(tr[0]) / max(float(tr[2]), 1), "train_top1": float(tr[1]) / max(float(tr[2]), 1),
                  "clips_seen": int(ep_stats["clips"]), "time_s": round(elapsed(), 1)}
        if stopped_early:
            # Out of time mid-epoch: report, checkpoint at this position (--resume finishes the epoch).
            record["type"] = "stop"
        if val_ds is not None and detection:
            record.update(evaluate_detection(model, val_ds, bs, device, bf16, d, _ava_label_map(cfg),
                                             cfg.data.num_workers))
        elif val_ds is not None:
            record.update(evaluate(model, val_ds, bs, device, bf16, d, len(classes), cfg.data.num_workers))
        last_metrics = {k: round(record[k], 5) for k in ("val_top1", "val_top5", "val_loss", "val_map") if k in record}
        last_metrics["train_top1"] = round(record["train_top1"], 5)
        record["metrics"] = last_metrics
        out.log(record)
        if stopped_early:
            if d.main:
                logger.warning("time limit reached after %.0f s (step %d); weights saved, --resume continues",
                               elapsed(), step)
            checkpoint()
            break
        history.append(record)
        if d.main:
            msg = f"epoch {epoch + 1}/{run.epochs}: train loss {record['train_loss']:.4f} top-1 {100 * record['train_top1']:.1f}%"
            if "val_top1" in record:
                msg += f", val loss {record['val_loss']:.4f} top-1 {100 * record['val_top1']:.1f}% top-5 {100 * record['val_top5']:.1f}%"
            if "val_map" in record:
                msg += f", val loss {record['val_loss']:.4f} frame-mAP {100 * record['val_map']:.1f}%"
            logger.info("%s (%.0f s)", msg, elapsed())
        epoch, micro_done = epoch + 1, 0
        ep_stats = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "clips": 0.0}
        checkpoint()
        out.save_weights(model, metadata(last_metrics))
        if run.plot:
            out.plot(history)
    weights = out.save_weights(model, metadata(last_metrics), extra=run.export)
    d.barrier()
    return TrainResult(out_dir=out_dir, weights=weights, history=history, step=step, epochs_done=len(history),
                       rank=d.rank, world_size=d.world, time_s=time.time() - t_start, stopped_early=stopped_early,
                       files_written=list(out.written))


__all__ = ["train", "TrainResult", "TrainError", "evaluate", "evaluate_detection", "box_bce", "lr_at", "param_groups", "plot_curves", "topk_correct",
           "build_model", "build_datasets", "Teacher", "build_teacher", "distill_loss"]
