"""Training configuration: YAML -> typed dataclasses, with ``--set a.b=c`` overrides.

A config file has sections that map one-to-one onto :class:`ModelConfig`,
:class:`DataConfig` (with :class:`PoolConfig`), :class:`OptimConfig`,
:class:`RunConfig` and (optional) :class:`DistillConfig`::

    model: {name: mvitv2_xxs_8x64, kwargs: {drop_path_rate: 0.1}}
    data:  {source: camera_motion, batch_size: 32, pool: {train_clips: 8000}}
    optim: {lr: 1.0e-3, warmup_epochs: 1}
    train: {epochs: 10, out_dir: runs/camera_mvitv2}
    distill: {teacher: weights/camera_mvitv2_xxs.safetensors, alpha: 0.5}

Unknown keys and values of the wrong type are errors that name the key (a
:class:`ConfigError`, one line). Overrides are ``dotted.key=value`` with the
value parsed as YAML (``train.epochs=3``, ``optim.betas=[0.9,0.95]``,
``model.pretrained=null``); keys under ``model.kwargs`` are free-form (they
are the model factory's keyword arguments). Relative paths in a config file
are relative to the directory the command runs in.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; ``str()`` is one line."""


@dataclass
class ModelConfig:
    """The network: registry ``name`` and factory ``kwargs``.

    ``pretrained``: weights to start from (ours or any checkpoint the importer
    reads); the classifier is replaced when the class count differs, or always
    with ``reset_head``. ``freeze_backbone``: train only the classifier (linear probe).
    ``grad_checkpointing``: recompute each block in the backward pass instead of
    keeping its activations (``model.set_grad_checkpointing()``): fits larger
    models or batches in memory for about one more forward pass of compute.
    """

    name: str = "mvitv2_xxs_8x64"
    kwargs: dict = field(default_factory=dict)
    pretrained: Optional[str] = None
    reset_head: bool = False
    freeze_backbone: bool = False
    grad_checkpointing: bool = False


@dataclass
class PoolConfig:
    """The generated camera-motion data (``data.source: camera_motion``).

    ``train_clips`` clips from training pictures (seed ``seed``) and
    ``val_clips`` from held-out pictures, rendered once and cached in
    ``cache_dir`` (``workers`` processes). ``classes``: a subset of the camera
    motions (default all ten). ``augment``: label-swapping augmentations.
    ``large_movers``: the probability (0-1) that a clip of either pool has
    1-2 large person-like figures walking, waving or bending in it, whatever
    the camera does (the label follows the camera only, so a tripod shot of a
    walking person stays ``static``); 0 renders the pools as before the
    option existed. It is part of the pools' cache key.
    """

    train_clips: int = 8000
    val_clips: int = 1000
    seed: int = 0
    classes: Optional[list] = None
    cache_dir: str = ".cache/pools"
    workers: int = 2
    augment: list = field(default_factory=lambda: ["reverse", "hflip", "vflip", "transpose"])
    large_movers: float = 0.0


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled.

    ``source``: ``camera_motion`` (generated, see :class:`PoolConfig`),
    ``folder`` (class-per-folder tree), ``kinetics`` (CSV), ``path_list``,
    ``ssv2`` (JSON), ``ava`` (AVA-format ground-truth CSVs for action
    detection: ``labels`` is the ``.pbtxt`` label map, ``root`` the videos,
    boxes of ``train`` jittered by up to ``box_jitter`` of their size,
    frame-mAP on every keyframe of ``val``; ``time_offset`` seconds are
    subtracted from their timestamps, 900 for AVA's trimmed 15-minute clips),
    or ``auto`` (guessed from ``train``). ``train``/``val``:
    the annotation file or folder of each split; ``root``: the videos' folder;
    ``labels``: class names (a file or a built-in set like ``kinetics400``).
    ``num_frames``, ``sampling_rate``, ``sampling`` ("rate" | "uniform"),
    ``crop_size``, ``mean``, ``std``, ``channel_order``: default to the
    pretrained weights' metadata, else the model's registry entry.
    ``min_scale``/``max_scale``: training short-side range (default
    ``crop * 256/224`` .. ``crop * 320/224``); ``flip``: random horizontal flips
    (turn off for direction-sensitive labels). ``box_augment`` (``ava``
    training): label-swapping augmentations, each applied to half the
    keyframes: ``{hflip|vflip|reverse: [[action, action], ...]}`` flips the
    clip and its boxes left-right / up-down, or plays the clip backwards, and
    swaps the named actions of every box (``reverse: [[approach, recede]]``);
    an empty list applies the transform without swaps, an absent key never.
    ``batch_size`` is per process and per micro-batch.
    """

    source: str = "camera_motion"
    train: Optional[str] = None
    val: Optional[str] = None
    root: Optional[str] = None
    labels: Optional[str] = None
    num_frames: Optional[int] = None
    sampling_rate: Optional[int] = None
    sampling: Optional[str] = None
    crop_size: Optional[int] = None
    mean: Optional[list] = None
    std: Optional[list] = None
    channel_order: Optional[str] = None
    min_scale: Optional[int] = None
    max_scale: Optional[int] = None
    flip: bool = True
    box_jitter: float = 0.1
    box_augment: dict = field(default_factory=dict)
    time_offset: float = 0.0
    batch_size: int = 32
    num_workers: int = 0
    pool: PoolConfig = field(default_factory=PoolConfig)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr`` (per optimizer step).

    ``lr`` is for the whole effective batch (``batch_size * accum_steps *
    world size``); no scaling is applied. Norms, biases and the model's
    ``no_weight_decay()`` parameters get no weight decay. ``clip_grad``: max
    global gradient norm (``null``: off). ``accum_steps``: micro-batches per
    optimizer step.
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: Optional[float] = 1.0
    accum_steps: int = 1


@dataclass
class RunConfig:
    """The run itself (the ``train:`` section).

    ``out_dir`` receives ``checkpoint.pt`` (every epoch, and every
    ``checkpoint_every`` optimizer steps if > 0), ``log.jsonl``, ``curves.png``,
    ``model.safetensors`` and ``config.yaml``; ``export`` is an extra path for
    the final weights. ``bf16``: bf16 autocast (CPU and CUDA); ``null`` (the
    default) turns it on where bf16 is native (CUDA GPUs that support it,
    CPUs with AVX512-BF16 or AMX) and off elsewhere: on an AVX2-only CPU
    emulated bf16 is several times *slower* than float32. ``device``:
    ``auto`` (CUDA when available), ``cpu`` or ``cuda``. ``threads``: CPU
    threads per process (``null``: torch's default). ``steps_per_epoch``: cap on
    optimizer steps per epoch (quick runs). ``time_limit_min``: stop cleanly
    (checkpoint, weights) after this many minutes.
    """

    epochs: int = 10
    seed: int = 0
    out_dir: str = "runs/train"
    export: Optional[str] = None
    bf16: Optional[bool] = None
    device: str = "auto"
    threads: Optional[int] = None
    checkpoint_every: int = 0
    log_every: int = 20
    steps_per_epoch: Optional[int] = None
    time_limit_min: Optional[float] = None
    progress: bool = True
    plot: bool = True


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher (the ``distill:`` section; off without ``teacher``).

    ``teacher``: a weights file (``.safetensors`` with metadata) for the same
    labels in the same order and the same clip (frames, sampling, crop); its
    own mean/std are applied to the student's input. The loss becomes
    ``(1 - alpha) * cross-entropy(labels) + alpha * T**2 * KL(teacher_T || student_T)``
    with both logits divided by ``temperature`` T (Hinton et al., 2015).
    """

    teacher: Optional[str] = None
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass
class Config:
    """A whole training configuration (see the module docstring)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# --------------------------------------------------------------------------- building from dicts
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (with int -> float widening)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp in (list, typing.List) or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if tp in (dict, typing.Dict) or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else \
                f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{key}'{hint}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> Config:
    """A :class:`Config` from a plain dict (missing keys take their defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with sections model, data, optim, train")
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """The plain-dict form of ``cfg`` (round-trips through :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> ``(["a", "b"], value)`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: bad key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=c`` overrides to a plain config dict (in place; also returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (``None``: all defaults) and apply ``overrides``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping with sections model, data, optim, train")
    apply_overrides(data, overrides)
    return config_from_dict(data)


def dump_config(cfg: Config) -> str:
    """``cfg`` as YAML text (what ``out_dir/config.yaml`` holds)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def validate(cfg: Config) -> None:
    """Range checks that types alone do not catch; raises :class:`ConfigError`."""
    d, o, t = cfg.data, cfg.optim, cfg.train
    sources = ("camera_motion", "folder", "kinetics", "path_list", "ssv2", "ava", "auto")
    if d.source not in sources:
        raise ConfigError(f"data.source: {d.source!r} is not one of {', '.join(sources)}")
    if d.source != "camera_motion" and not d.train:
        raise ConfigError(f"data.train: needed for data.source={d.source} (annotation file or folder)")
    if d.source == "ava" and not d.labels:
        raise ConfigError("data.labels: the label map (.pbtxt) is needed for data.source=ava")
    if not 0 <= d.box_jitter < 0.5:
        raise ConfigError(f"data.box_jitter: must be in [0, 0.5), got {d.box_jitter}")
    if d.sampling not in (None, "rate", "uniform"):
        raise ConfigError(f"data.sampling: {d.sampling!r} is not 'rate' or 'uniform'")
    if d.channel_order not in (None, "rgb", "bgr"):
        raise ConfigError(f"data.channel_order: {d.channel_order!r} is not 'rgb' or 'bgr'")
    for name in ("num_frames", "sampling_rate", "crop_size"):
        v = getattr(d, name)
        if v is not None and v < 1:
            raise ConfigError(f"data.{name}: must be >= 1, got {v}")
    for name, v in (("data.mean", d.mean), ("data.std", d.std)):
        if v is not None and len(v) != 3:
            raise ConfigError(f"{name}: needs 3 values, got {v}")
    checks = [
        ("data.batch_size", d.batch_size >= 1), ("data.num_workers", d.num_workers >= 0),
        ("data.pool.train_clips", d.pool.train_clips >= 1), ("data.pool.val_clips", d.pool.val_clips >= 0),
        ("data.pool.workers", d.pool.workers >= 1),
        ("optim.lr", o.lr > 0), ("optim.min_lr", 0 <= o.min_lr <= o.lr), ("optim.weight_decay", o.weight_decay >= 0),
        ("optim.warmup_epochs", o.warmup_epochs >= 0), ("optim.label_smoothing", 0 <= o.label_smoothing < 1),
        ("optim.accum_steps", o.accum_steps >= 1), ("optim.clip_grad", o.clip_grad is None or o.clip_grad > 0),
        ("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)),
        ("train.epochs", t.epochs >= 1), ("train.checkpoint_every", t.checkpoint_every >= 0),
        ("train.log_every", t.log_every >= 1),
        ("train.steps_per_epoch", t.steps_per_epoch is None or t.steps_per_epoch >= 1),
        ("train.time_limit_min", t.time_limit_min is None or t.time_limit_min > 0),
        ("train.threads", t.threads is None or t.threads >= 1),
    ]
    for name, ok in checks:
        if not ok:
            raise ConfigError(f"{name}: value out of range ({_get(cfg, name)!r})")
    if t.device not in ("auto", "cpu") and not t.device.startswith("cuda"):
        raise ConfigError(f"train.device: {t.device!r} is not auto, cpu or cuda[:N]")


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


__all__ = [
    "Config", "ModelConfig", "DataConfig", "PoolConfig", "OptimConfig", "RunConfig", "ConfigError",
    "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "parse_override", "dump_config",
    "validate",
]
