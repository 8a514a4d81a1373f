"""Datasets for training and evaluation: annotation readers/writers and torch ``Dataset`` classes.

Annotation formats (each read into :class:`Annotations`: ``items`` =
``[(video path, class index)]`` and ``classes`` = class names):

- **class-per-folder** trees: ``root/<class name>/**/<video>`` (:func:`read_folder`);
- **Kinetics CSV**: ``label,youtube_id,time_start,time_end,split[,is_cc]``;
  the video of a row is ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>``
  anywhere under the root (the official download layouts all qualify)
  (:func:`read_kinetics_csv`, :func:`write_kinetics_csv`);
- **path-label lists** (PySlowFast ``train.csv``): one ``<path> <label>`` per
  line, the label a class index or a class name (:func:`read_path_list`,
  :func:`write_path_list`);
- **Something-Something v2 JSON**: a list of ``{"id", "template", "label",
  "placeholders"}``; the class is the template without brackets, as in the
  official ``labels.json`` (:func:`read_ssv2`, :func:`write_ssv2`);
- the generated camera-motion **pool** (:class:`PoolDataset`, see
  :mod:`videoapp.data.synthetic`);
- **AVA-format** keyframes with person boxes and multi-label actions for
  action detection (:class:`AVADataset`, rows from :mod:`videoapp.data.ava`;
  items are ``(clip, boxes, labels)``, batched by :meth:`AVADataset.collate`).

Videos that an annotation names but that are not on disk are counted in
``Annotations.missing`` and left out (Kinetics downloads always miss some).

Datasets return ``(clip float32 [C, T, H, W], label int)``. Random choices
(clip start, scale, crop, flip, label-swapping augmentation) come from a
generator seeded by ``(seed, epoch, index)``, so an epoch is reproducible
whatever the number of data-loader workers and however it was interrupted:
call :meth:`set_epoch` before each epoch.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from videoapp.data.sampling import clip_indices, random_clip_indices, uniform_indices
from videoapp.data.transforms import ClipTransform, TrainTransform, normalize, short_side_for_crop, to_tensor
from videoapp.data.video import VIDEO_EXTENSIONS

logger = logging.getLogger("videoapp")

# The columns of a Kinetics annotation CSV (the store's Kinetics export writes these first).
KINETICS_FIELDS = ("label", "youtube_id", "time_start", "time_end", "split")


class DatasetError(ValueError):
    """Annotations that cannot be read or do not match the videos; ``str()`` is one line."""


@dataclass
class Annotations:
    """Labelled videos: ``items`` ``[(path, class index)]``, ``classes`` names, ``missing`` videos not found."""

    items: list[tuple[Path, int]]
    classes: list[str]
    missing: int = 0

    def __len__(self) -> int:
        return len(self.items)


# --------------------------------------------------------------------------- helpers
def load_class_names(spec: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    """Class names from a list, a built-in set name (``kinetics400``, ``ssv2``, ...), a text file
    (one name per line) or a JSON file (a list, or SSv2's ``{name: index}`` labels file)."""
    if spec is None:
        return None
    if not isinstance(spec, (str, os.PathLike)):
        return [str(c) for c in spec]
    from videoapp.labels import _FILES, load_labels

    if str(spec) in _FILES:
        return list(load_labels(str(spec)))
    path = Path(spec)
    if not path.is_file():
        raise DatasetError(f"{spec}: no such label file (or built-in label set: {', '.join(sorted(_FILES))})")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):  # {"name": "index"}
            return [name for name, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
        return [str(c) for c in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _index_videos(root: Path) -> dict[str, Path]:
    """``{file stem: path}`` of every video file under ``root`` (first one wins, sorted walk)."""
    index: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                index.setdefault(stem, Path(dirpath) / name)
    return index


def _check_root(root: str | os.PathLike | None, what: str) -> Path:
    if root is None:
        raise DatasetError(f"{what}: the videos' root folder is needed (data.root)")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    return root


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such annotation file")
    return path


def _class_map(classes: Sequence[str]) -> dict[str, int]:
    return {c: i for i, c in enumerate(classes)}


def _finish(items: list[tuple[Path, int]], classes: list[str], missing: int, what: str) -> Annotations:
    if missing:
        logger.warning("%s: %d listed videos were not found and are left out", what, missing)
    if not items:
        raise DatasetError(f"{what}: no videos found" + (f" ({missing} listed but missing)" if missing else ""))
    return Annotations(items, classes, missing)


# --------------------------------------------------------------------------- class-per-folder
def read_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> Annotations:
    """A class-per-folder tree: each sub-folder of ``root`` is a class (sorted names), its videos (any depth) the items.

    With ``classes`` the indices follow that list and folders not in it are an error.
    """
    root = _check_root(root, "folder dataset")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = [p.name for p in folders]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DatasetError(f"{root}: folders {unknown[:3]} are not among the {len(classes)} classes")
    cmap = _class_map(classes)
    items = []
    for folder in folders:
        for path in sorted(_index_videos(folder).values()):
            items.append((path, cmap[folder.name]))
    return _finish(items, list(classes), 0, str(root))


# --------------------------------------------------------------------------- Kinetics CSV
def kinetics_stem(youtube_id: str, time_start: float | int | str, time_end: float | int | str) -> str:
    """Kinetics video file stem: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def read_kinetics_csv(csv_path: str | os.PathLike, root: str | os.PathLike,
                      classes: Sequence[str] | str | None = None, split: str | None = None) -> Annotations:
    """Kinetics-style CSV ``label,youtube_id,time_start,time_end,split`` (extra columns ignored).

    Videos are found by stem (:func:`kinetics_stem`) anywhere under ``root``.
    ``classes``: names or a built-in set (default: the sorted labels of the
    file, which for the full Kinetics lists is the official order). ``split``
    keeps only rows of that split.
    """
    csv_path = _check_file(csv_path)
    root = _check_root(root, str(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        need = [k for k in ("label", "youtube_id", "time_start", "time_end") if k not in fields]
        if need:
            raise DatasetError(f"{csv_path}: not a Kinetics CSV (missing columns: {', '.join(need)})")
        rows = [r for r in reader if split is None or r.get("split") == split]
    names = load_class_names(classes) or sorted({r["label"] for r in rows})
    cmap = _class_map(names)
    index = _index_videos(root)
    items, missing = [], 0
    for line, r in enumerate(rows, start=2):
        if r["label"] not in cmap:
            raise DatasetError(f"{csv_path}:{line}: label {r['label']!r} is not a known class")
        try:
            stem = kinetics_stem(r["youtube_id"], r["time_start"], r["time_end"])
        except ValueError:
            raise DatasetError(f"{csv_path}:{line}: bad time_start/time_end") from None
        path = index.get(stem)
        if path is None:
            missing += 1
            continue
        items.append((path, cmap[r["label"]]))
    return _finish(items, names, missing, str(csv_path))


def write_kinetics_csv(csv_path: str | os.PathLike, rows: Iterable[Sequence]) -> Path:
    """Write ``(label, youtube_id, time_start, time_end, split)`` rows with the Kinetics header."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(KINETICS_FIELDS)
        for label, yid, t0, t1, split in rows:
            w.writerow([label, yid, int(t0), int(t1), split])
    return csv_path


# --------------------------------------------------------------------------- path-label lists
def read_path_list(list_path: str | os.PathLike, root: str | os.PathLike | None = None,
                   classes: Sequence[str] | str | None = None) -> Annotations:
    """``<path> <label>`` per line (space, tab or comma separated; PySlowFast's ``train.csv``).

    Relative paths are taken from ``root`` (default: the list's folder). Labels
    are class indices (names from ``classes``, else ``class_<i>``) or class
    names (indices from ``classes``, else sorted names).
    """
    list_path = _check_file(list_path)
    base = Path(root) if root is not None else list_path.parent
    entries = []
    for n, raw in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = "," if "," in line and not any(c in line for c in " \t") else None
        parts = line.rsplit(sep, 1) if sep else line.rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{list_path}:{n}: expected '<path> <label>'")
        entries.append((parts[0].strip(), parts[1].strip(), n))
    names = load_class_names(classes)
    numeric = all(lab.lstrip("-").isdigit() for _, lab, _ in entries)
    if numeric:
        top = max((int(lab) for _, lab, _ in entries), default=-1)
        names = names or [f"class_{i}" for i in range(top + 1)]
    else:
        names = names or sorted({lab for _, lab, _ in entries})
    cmap = _class_map(names)
    items, missing = [], 0
    for p, lab, n in entries:
        idx = int(lab) if numeric else cmap.get(lab, -1)
        if not 0 <= idx < len(names):
            raise DatasetError(f"{list_path}:{n}: label {lab!r} is not a known class")
        path = Path(p) if os.path.isabs(p) else base / p
        if not path.is_file():
            missing += 1
            continue
        items.append((path, idx))
    return _finish(items, names, missing, str(list_path))


def write_path_list(list_path: str | os.PathLike, items: Iterable[tuple[str | os.PathLike, int]],
                    root: str | os.PathLike | None = None) -> Path:
    """Write ``<path> <label index>`` lines; paths relative to ``root`` when given."""
    list_path = Path(list_path)
    list_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for path, label in items:
        p = os.path.relpath(path, root) if root is not None else str(path)
        if any(c.isspace() for c in p):
            raise DatasetError(f"{p}: paths in a path-label list cannot contain spaces")
        lines.append(f"{p} {int(label)}")
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_path


# --------------------------------------------------------------------------- Something-Something v2
def ssv2_class_name(template: str) -> str:
    """SSv2 class of a template: the template without its brackets (``[something]`` -> ``something``)."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(json_path: str | os.PathLike, root: str | os.PathLike,
              classes: Sequence[str] | str | os.PathLike | None = "ssv2") -> Annotations:
    """SSv2 annotations: a JSON list of ``{"id", "template", "label", ...}``; videos ``<id>.<ext>`` under ``root``.

    The class is ``template`` without brackets (or ``label`` when there is no
    template and it is a class name). ``classes``: the official 174 names
    (default, same order as ``something-something-v2-labels.json``), a labels
    JSON ``{name: "index"}``, another list, or ``None`` for the sorted names in the file.
    """
    json_path = _check_file(json_path)
    root = _check_root(root, str(json_path))
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{json_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
        raise DatasetError(f"{json_path}: expected a JSON list of objects with an 'id'")

    def name_of(e: dict) -> str | None:
        if e.get("template"):
            return ssv2_class_name(str(e["template"]))
        if e.get("label"):
            return ssv2_class_name(str(e["label"]))
        return None

    names = load_class_names(classes) or sorted({n for e in entries if (n := name_of(e)) is not None})
    cmap = _class_map(names)
    index = _index_videos(root)
    items, missing = [], 0
    for e in entries:
        name = name_of(e)
        if name is None or name not in cmap:
            raise DatasetError(f"{json_path}: video {e['id']}: class {name!r} is not among the {len(names)} classes")
        path = index.get(str(e["id"]))
        if path is None:
            missing += 1
            continue
        items.append((path, cmap[name]))
    return _finish(items, names, missing, str(json_path))


def write_ssv2(json_path: str | os.PathLike, entries: Iterable[dict]) -> Path:
    """Write SSv2-style annotations: ``entries`` of ``{"id", "template"[, "label", "placeholders"]}``."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for e in entries:
        d = {"id": str(e["id"]), "template": e["template"]}
        d["label"] = e.get("label", ssv2_class_name(e["template"]).lower())
        d["placeholders"] = list(e.get("placeholders", []))
        out.append(d)
    json_path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return json_path


def write_ssv2_labels(json_path: str | os.PathLike, classes: Sequence[str]) -> Path:
    """Write an SSv2 labels file ``{class name: "index"}``."""
    json_path = Path(json_path)
    json_path.write_text(json.dumps({c: str(i) for i, c in enumerate(classes)}, indent=1), encoding="utf-8")
    return json_path


def read_annotations(source: str, path: str | os.PathLike, root: str | os.PathLike | None = None,
                     classes: Sequence[str] | str | None = None) -> Annotations:
    """Read annotations of kind ``source`` ("folder", "kinetics", "path_list", "ssv2", or "auto":
    a folder, a ``.json`` (SSv2), a ``.csv`` with a ``youtube_id`` column (Kinetics), else a path list)."""
    p = Path(path)
    if source == "auto":
        if p.is_dir():
            source = "folder"
        elif p.suffix == ".json":
            source = "ssv2"
        elif p.suffix == ".csv" and p.is_file() and "youtube_id" in p.open(encoding="utf-8").readline():
            source = "kinetics"
        else:
            source = "path_list"
    if source == "folder":
        return read_folder(p, load_class_names(classes))
    if source == "kinetics":
        return read_kinetics_csv(p, root if root is not None else p.parent, classes)
    if source == "path_list":
        return read_path_list(p, root, classes)
    if source == "ssv2":
        return read_ssv2(p, root if root is not None else p.parent, "ssv2" if classes is None else classes)
    raise DatasetError(f"unknown data source {source!r} (folder, kinetics, path_list, ssv2, camera_motion, auto)")


# --------------------------------------------------------------------------- torch datasets
class _Epoch:
    """Seed / epoch bookkeeping shared by the datasets."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random choices of ``epoch`` (call before iterating an epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])


class VideoDataset(_Epoch, torch.utils.data.Dataset):
    """Clips decoded from video files.

    Training (``train=True``): a random clip (``sampling="rate"``: ``num_frames``
    frames ``sampling_rate`` apart at a random start; ``"uniform"``: one random
    frame per segment over the whole video) through a :class:`TrainTransform`
    (random short-side scale in ``[min_scale, max_scale]``, random crop,
    optional flip). Evaluation: the centre clip (or the segment centres) and
    the Predictor's one-crop preprocessing. A video that fails to decode is
    replaced by another one (logged), as PySlowFast does.
    """

    def __init__(self, annotations: Annotations, *, num_frames: int, sampling_rate: int, crop_size: int,
                 mean: Sequence[float], std: Sequence[float], sampling: str = "rate", train: bool = True,
                 min_scale: int | None = None, max_scale: int | None = None, flip: bool = True,
                 channel_order: str = "rgb", seed: int = 0) -> None:
        if sampling not in ("rate", "uniform"):
            raise ValueError(f"sampling must be 'rate' or 'uniform', got {sampling!r}")
        self.items = list(annotations.items)
        self.classes = list(annotations.classes)
        self.num_frames, self.sampling_rate, self.sampling = int(num_frames), int(sampling_rate), sampling
        self.train = train
        self.seed = seed
        if train:
            lo = int(min_scale or short_side_for_crop(crop_size))
            hi = int(max_scale or max(lo, short_side_for_crop(crop_size, 320)))
            self.transform = TrainTransform(crop_size, mean, std, min_scale=lo, max_scale=hi, flip=flip,
                                            inverse_uniform=sampling == "uniform", channel_order=channel_order)
        else:
            self.transform = ClipTransform(crop_size, mean, std, num_crops=1, channel_order=channel_order)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.items], dtype=np.int64)

    def _indices(self, n: int, rng: np.random.Generator | None) -> np.ndarray:
        if self.sampling == "uniform":
            return uniform_indices(n, self.num_frames, rng)
        span = self.num_frames * self.sampling_rate
        if rng is not None:
            return random_clip_indices(n, self.num_frames, self.sampling_rate, rng)
        return clip_indices(n, self.num_frames, max(n - span, 0) / 2.0, span)

    def load(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        """The preprocessed clip ``[C, T, H, W]`` of item ``index``; raises ``VideoError``."""
        from videoapp.data.video import VideoReader

        path, _ = self.items[index]
        with VideoReader(path) as reader:
            frames = reader.get_frames(self._indices(reader.info.num_frames, rng))
        if self.train:
            self.transform.rng = rng
            return self.transform(frames)
        return self.transform(frames)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from videoapp.data.video import VideoError

        rng = self._rng(index) if self.train else None
        tried = index
        for attempt in range(10):
            try:
                return self.load(tried, rng if rng is not None else None), self.items[tried][1]
            except VideoError as exc:
                logger.warning("skipping unreadable video: %s", exc)
                pick = rng if rng is not None else np.random.default_rng([self.seed, index, attempt])
                tried = int(pick.integers(0, len(self.items)))
        raise RuntimeError(f"10 videos in a row failed to decode (last: {self.items[tried][0]})")


class PoolDataset(_Epoch, torch.utils.data.Dataset):
    """Clips of a generated camera-motion :class:`~videoapp.data.synthetic.Pool`.

    The pool is already sampled and preprocessed like the Predictor does;
    this only normalises. In training each clip gets the label-swapping
    augmentations in ``augment`` ("reverse", "hflip", "vflip", "transpose"),
    each with probability 0.5, and its label changes to match.
    """

    AUGMENTATIONS = ("reverse", "hflip", "vflip", "transpose")

    def __init__(self, pool, *, mean: Sequence[float], std: Sequence[float], train: bool = True,
                 augment: Sequence[str] = AUGMENTATIONS, channel_order: str = "rgb", seed: int = 0) -> None:
        unknown = [a for a in augment if a not in self.AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentations {unknown} (known: {', '.join(self.AUGMENTATIONS)})")
        self.pool = pool
        self.classes = list(pool.classes)
        self.mean, self.std = list(mean), list(std)
        self.train = train
        # Only augmentations that map the classes onto themselves (all do for the full label set).
        from videoapp.data.synthetic import HFLIP, TIME_REVERSE, TRANSPOSE, VFLIP

        tables = {"reverse": TIME_REVERSE, "hflip": HFLIP, "vflip": VFLIP, "transpose": TRANSPOSE}
        closed = {a for a in augment if all(tables[a].get(c, None) in self.classes for c in self.classes)}
        if set(augment) - closed:
            logger.warning("augmentations %s skipped: they turn some of these classes into others",
                           sorted(set(augment) - closed))
        self.augment = closed
        self.bgr = channel_order == "bgr"
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pool)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.pool.labels, dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from videoapp.data.synthetic import augment_clip

        frames = np.asarray(self.pool.clips[index])
        label = self.classes[int(self.pool.labels[index])]
        if self.train and self.augment:
            frames, label = augment_clip(
                frames, label, self._rng(index), reverse="reverse" in self.augment, hflip="hflip" in self.augment,
                vflip="vflip" in self.augment, transpose="transpose" in self.augment)
        x = to_tensor(np.array(frames, dtype=np.uint8))  # a writable copy (the pool may be memory-mapped)
        if self.bgr:
            x = x.flip(0)
        return normalize(x, self.mean, self.std), self.classes.index(label)


# --------------------------------------------------------------------------- AVA-format detection data
@dataclass
class BoxTargets:
    """The boxes of a batch of keyframe clips (what :meth:`AVADataset.collate` returns beside the clips).

    ``rois``: float32 ``[K, 5]`` rows ``[batch_index, x1, y1, x2, y2]`` in pixels
    of the batch input (what an :class:`~videoapp.models.detector.ActionDetector`
    takes); ``labels``: float32 multi-hot ``[K, num_classes]`` (output ``i`` is
    action id ``i + 1``); ``items``: int64 ``[B]`` dataset indices of the clips;
    ``box_index``: int64 ``[K]`` index of each box within its keyframe. ``len()`` is ``K``.
    """

    rois: torch.Tensor
    labels: torch.Tensor
    items: torch.Tensor
    box_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.rois.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "BoxTargets":
        """The same targets with ``rois`` and ``labels`` on ``device``."""
        return BoxTargets(self.rois.to(device, non_blocking=non_blocking),
                          self.labels.to(device, non_blocking=non_blocking), self.items, self.box_index)


#: Label-swapping augmentations of :class:`AVADataset` (training only).
_BOX_AUGMENTS = ("hflip", "vflip", "reverse")


class AVADataset(_Epoch, torch.utils.data.Dataset):
    """Keyframe clips with their person boxes and multi-hot actions, from AVA-format rows.

    One item per keyframe that has boxes: ``rows`` are ground-truth (or box)
    :class:`~videoapp.data.ava.AVARow` rows, grouped by ``(video_id,
    timestamp)`` (timestamps compared by value), the video of ``video_id`` is
    ``root/<video_id>.<ext>``. A box's label vector has a 1 at ``action_id - 1``
    for each of its actions below ``num_classes`` (other ids are ignored, as
    AVA's 80-action files against a 60-action head's evaluation).

    The clip is ``indices_fn(keyframe_frame, num_video_frames=n)`` (the frames
    the detector reads around the keyframe, e.g.
    :func:`videoapp.engine.detect.keyframe_clip_indices`), with the keyframe
    frame ``round((timestamp - time_offset) * fps)``, preprocessed as
    :class:`~videoapp.engine.detect.DetectionPredictor` does: the whole frame,
    short side to ``crop_size`` (``crop_size`` x ``crop_size`` when
    ``fixed_size``), bilinear without antialiasing, normalised. Decoded clips
    are kept in memory (float16, ``[3, T, h, w]``) after their first use.

    ``rows`` stays available as :attr:`rows` (the ground truth of an evaluation).
    In training each box is jittered: every coordinate moves by up to
    ``jitter`` times the box's width (x) or height (y), uniformly, then the
    box is clipped to the frame; then each transform of ``augment``
    (``{"hflip" | "vflip" | "reverse": [(i, j), ...]}``, class indices) is
    applied with probability 1/2: the clip (and the boxes) mirrored left-right
    or up-down, or its frames reversed in time, and the labels of each pair
    ``(i, j)`` exchanged (a box moving left moves right in the mirror). ``__getitem__`` returns ``(clip float32
    [3, T, h, w], boxes float32 [k, 4] normalised, labels float32 [k, C])``;
    :meth:`collate` batches them (zero-padding clips to the largest size) into
    ``(clips [B, 3, T, H, W], BoxTargets)``.
    """

    def __init__(self, rows: Sequence, root: str | os.PathLike, num_classes: int, *,
                 indices_fn, crop_size: int, mean: Sequence[float], std: Sequence[float],
                 channel_order: str = "rgb", fixed_size: bool = False, train: bool = True, jitter: float = 0.1,
                 time_offset: float = 0.0, seed: int = 0,
                 augment: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> None:
        from videoapp.data.ava import canonical_timestamp

        unknown = sorted(set(augment or {}) - set(_BOX_AUGMENTS))
        if unknown:
            raise DatasetError(f"unknown box augmentation {unknown[0]!r} (known: {', '.join(_BOX_AUGMENTS)})")
        self.augment = {name: [(int(i), int(j)) for i, j in pairs] for name, pairs in (augment or {}).items()}

        self.root = _check_root(root, "data.root (the videos' folder)")
        self.rows = list(rows)
        videos = _index_videos(self.root)
        self.num_classes = int(num_classes)
        self.indices_fn = indices_fn
        self.crop_size = int(crop_size)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.channel_order = channel_order
        self.fixed_size = fixed_size
        self.train = train
        self.jitter = float(jitter)
        self.time_offset = float(time_offset)
        self.seed = seed
        keyframes: dict[tuple[str, str], dict[tuple, list[int]]] = {}
        stamps: dict[tuple[str, str], str] = {}
        missing: set[str] = set()
        for r in rows:
            if r.box is None:
                continue
            if r.video_id not in videos:
                missing.add(r.video_id)
                continue
            key = (r.video_id, canonical_timestamp(r.timestamp))
            stamps.setdefault(key, r.timestamp)
            acts = keyframes.setdefault(key, {}).setdefault(tuple(r.box), [])
            if r.action_id is not None and 1 <= r.action_id <= self.num_classes:
                acts.append(int(r.action_id) - 1)
        if missing:
            logger.warning("%d videos of the annotations are not under %s (left out), e.g. %s", len(missing),
                           self.root, sorted(missing)[0])
        if not keyframes:
            raise DatasetError(f"no keyframe with a box has its video under {self.root}")
        # Keyframes in (video, time) order; boxes in file order.
        self.items: list[tuple[Path, str, str, list[tuple[float, float, float, float]], np.ndarray]] = []
        for key in sorted(keyframes, key=lambda k: (k[0], float(k[1]))):
            boxes = list(keyframes[key])
            labels = np.zeros((len(boxes), self.num_classes), np.float32)
            for j, b in enumerate(boxes):
                labels[j, keyframes[key][b]] = 1.0
            self.items.append((videos[key[0]], key[0], stamps[key], boxes, labels))
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def keyframe(self, index: int) -> tuple[str, str, list[tuple[float, float, float, float]]]:
        """``(video_id, timestamp as written, boxes)`` of item ``index`` (boxes normalised, not jittered)."""
        _, vid, ts, boxes, _ = self.items[index]
        return vid, ts, boxes

    def clip(self, index: int) -> torch.Tensor:
        """The preprocessed clip of item ``index``: float32 ``[3, T, h, w]``; raises ``VideoError``."""
        from videoapp.data.transforms import resize_short_side
        from videoapp.data.video import VideoReader

        cached = self._cache.get(index)
        if cached is None:
            path, _, ts, _, _ = self.items[index]
            with VideoReader(path) as reader:
                info = reader.info
                centre = min(max(int(round((float(ts) - self.time_offset) * info.fps)), 0), info.num_frames - 1)
                frames = reader.get_frames(self.indices_fn(centre, num_video_frames=info.num_frames))
            clip = to_tensor(frames)
            if self.fixed_size:
                clip = torch.nn.functional.interpolate(clip, size=(self.crop_size, self.crop_size), mode="bilinear",
                                                       align_corners=False)
            else:
                clip = resize_short_side(clip, self.crop_size)
            if self.channel_order == "bgr":
                clip = clip.flip(0)
            cached = self._cache[index] = clip.to(torch.float16)
        return normalize(cached.float(), self.mean, self.std)

    def _jitter(self, boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        out = np.clip(boxes + rng.uniform(-self.jitter, self.jitter, size=boxes.shape) * wh, 0.0, 1.0)
        # A box never flips or collapses: at least a tenth of its size on each axis.
        out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 0.1 * wh[:, :2])
        return np.clip(out, 0.0, 1.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, _, boxes, labels = self.items[index]
        b = np.asarray(boxes, dtype=np.float64)
        clip, labels = self.clip(index), labels.copy()
        if self.train:
            rng = self._rng(index)
            if self.jitter > 0:
                b = self._jitter(b, rng)
            for name, pairs in self.augment.items():
                if rng.uniform() >= 0.5:
                    continue
                if name == "hflip":
                    clip, b = clip.flip(-1), np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1)
                elif name == "vflip":
                    clip, b = clip.flip(-2), np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], axis=1)
                else:  # reverse
                    clip = clip.flip(1)
                for i, j in pairs:
                    labels[:, [i, j]] = labels[:, [j, i]]
        return clip, torch.from_numpy(b.astype(np.float32)), torch.from_numpy(labels)

    def collate(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                items: Sequence[int] | None = None) -> tuple[torch.Tensor, BoxTargets]:
        """Stack ``(clip, boxes, labels)`` items: clips zero-padded (right/bottom) to ``[B, 3, T, H, W]``."""
        h = max(int(c.shape[-2]) for c, _, _ in batch)
        w = max(int(c.shape[-1]) for c, _, _ in batch)
        x = torch.zeros((len(batch), *batch[0][0].shape[:2], h, w), dtype=batch[0][0].dtype)
        rois, labels, box_index = [], [], []
        for i, (c, b, y) in enumerate(batch):
            ch, cw = int(c.shape[-2]), int(c.shape[-1])
            x[i, :, :, :ch, :cw] = c
            scale = torch.tensor([cw, ch, cw, ch], dtype=torch.float32)
            rois.append(torch.cat([torch.full((len(b), 1), float(i)), b * scale], dim=1))
            labels.append(y)
            box_index.append(torch.arange(len(b)))
        item_ids = torch.as_tensor(list(items) if items is not None else [-1] * len(batch), dtype=torch.int64)
        return x, BoxTargets(torch.cat(rois), torch.cat(labels), item_ids, torch.cat(box_index))


class IndexedAVADataset(torch.utils.data.Dataset):
    """An :class:`AVADataset` whose items also carry their index (for evaluation: which keyframe a box is on)."""

    def __init__(self, dataset: AVADataset, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.indices[i], self.dataset[self.indices[i]]

    def collate(self, batch: Sequence[tuple[int, tuple]]) -> tuple[torch.Tensor, BoxTargets]:
        """:meth:`AVADataset.collate` with the items' indices in ``BoxTargets.items``."""
        return self.dataset.collate([b for _, b in batch], items=[i for i, _ in batch])


__all__ = [
    "Annotations", "DatasetError", "VIDEO_EXTENSIONS", "load_class_names", "read_folder", "kinetics_stem",
    "read_kinetics_csv", "write_kinetics_csv", "read_path_list", "write_path_list", "ssv2_class_name",
    "read_ssv2", "write_ssv2", "write_ssv2_labels", "read_annotations", "VideoDataset", "PoolDataset",
    "AVADataset", "IndexedAVADataset", "BoxTargets",
]
