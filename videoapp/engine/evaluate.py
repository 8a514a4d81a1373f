"""Multi-view evaluation of classification weights on a labelled video set (``videoapp eval``).

What one run does:

- reads the annotations with the training readers (:mod:`videoapp.data.datasets`:
  Kinetics CSV, SSv2 JSON, ``path label`` lists, class-per-folder trees) and maps
  their class names onto the weights' labels by name (case, ``_`` and SSv2's
  ``[]`` ignored); a name the weights do not know is one :class:`EvalError`;
- samples and preprocesses every video exactly as ``videoapp predict`` does
  (:class:`~videoapp.engine.predict.ViewSampler`, :func:`~videoapp.engine.predict.view_probs`):
  the weights' metadata decides frames, stride, crop, mean/std and channel
  order, the protocol preset (``configs/eval/*.yaml``) only the views; the
  video score is the mean of the per-view softmax (crops averaged first);
- decodes in DataLoader worker processes (one reader per video, each worker
  its own) while the main process runs the model; a video's views are
  forwarded together (in chunks of ``batch_size`` views) and never mixed with
  another video's, so its scores do not depend on the sharding or on a resume;
- streams one JSON line per video to ``<report>.scores.jsonl`` (scores or the
  decoding error), so ``resume=True`` skips what a killed run finished;
- under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes every
  ``world``-th video still to do, the per-video records are gathered
  (gloo on CPU, NCCL on CUDA) and rank 0 writes the report, which is the same
  as a one-process run's (apart from the ``throughput`` and ``run`` entries);
- the report (JSON): ``top1``, ``top5``, ``mean_class_accuracy`` (fractions in
  [0, 1]), ``num_videos``, per-class accuracy, the top confusions, the
  confusion matrix (also as ``<report>.confusion.png``), counts, every missing
  and undecodable video, the weights file and its SHA-256, the protocol and
  the throughput.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from videoapp.data.datasets import (
    Annotations,
    DatasetError,
    kinetics_stem,
    load_class_names,
    read_folder,
    read_kinetics_csv,
    read_path_list,
    read_ssv2,
)
from videoapp.engine.predict import ViewSampler, resolve_weights_model, view_probs
from videoapp.files import atomic_path, atomic_write_text, first_line, save_png
from videoapp.models.registry import get_pretrained_cfg

logger = logging.getLogger("videoapp")

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"
DATASETS = ("kinetics", "kinetics400", "kinetics600", "kinetics700", "ssv2", "folder", "path_list")
DEFAULT_PROTOCOL = {"ssv2": "ssv2_1x3"}
FALLBACK_PROTOCOL = "kinetics_5x1"
TOP_CONFUSIONS = 10
_SCORES_SUFFIX = ".scores.jsonl"
_RECORD_FORMAT = "videoapp-eval-scores"


class EvalError(ValueError):
    """An evaluation that cannot run as asked; ``str()`` is one line."""


# --------------------------------------------------------------------------- protocol presets
@dataclass
class Protocol:
    """The views of the test protocol: ``clips`` x ``crops`` per video.

    ``sampling``: ``"rate"`` (clips spread over the video), ``"uniform"`` (one
    clip of segment centres, SSv2) or ``None`` (what the weights say);
    ``use_offset``: PySlowFast ``DATA.USE_OFFSET_SAMPLING``; ``source``: where
    the numbers come from.
    """

    name: str
    clips: int
    crops: int
    sampling: str | None = None
    use_offset: bool = False
    source: str = ""


def list_protocols() -> list[str]:
    """Names of the presets in ``configs/eval/``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_protocol(spec: str | os.PathLike | None, dataset: str = "kinetics") -> Protocol:
    """A preset by name (``configs/eval/<name>.yaml``) or YAML path; ``None``: the dataset's default."""
    import yaml

    if spec is None:
        spec = DEFAULT_PROTOCOL.get(dataset, FALLBACK_PROTOCOL)
    path = Path(spec)
    if not path.suffix:
        path = PRESETS_DIR / f"{spec}.yaml"
    if not path.is_file():
        raise EvalError(f"unknown protocol {str(spec)!r} (presets: {', '.join(list_protocols()) or 'none found'})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise EvalError(f"{path}: not valid YAML ({first_line(exc)})") from None
    unknown = sorted(set(data) - {"name", "clips", "crops", "sampling", "use_offset", "source"})
    if unknown:
        raise EvalError(f"{path}: unknown protocol keys {unknown}")
    try:
        proto = Protocol(name=str(data.get("name", path.stem)), clips=int(data["clips"]), crops=int(data["crops"]),
                         sampling=data.get("sampling"), use_offset=bool(data.get("use_offset", False)),
                         source=" ".join(str(data.get("source", "")).split()))
    except (KeyError, TypeError, ValueError):
        raise EvalError(f"{path}: a protocol needs integer 'clips' and 'crops'") from None
    if proto.clips < 1 or proto.crops not in (1, 3) or proto.sampling not in (None, "rate", "uniform"):
        raise EvalError(f"{path}: clips >= 1, crops 1 or 3, sampling 'rate' or 'uniform'")
    return proto


# --------------------------------------------------------------------------- annotations -> items
@dataclass
class EvalItem:
    """One listed video: ``key`` (its name in the report), ``path``, ``target`` (index into the weights' labels)."""

    key: str
    path: Path
    target: int


def _norm(name: str) -> str:
    # Kinetics lists differ in case, underscores and quotes; SSv2 templates carry [].
    name = name.replace("[", "").replace("]", "").strip().strip('"').strip("'")
    return re.sub(r"[\s_]+", " ", name).strip().casefold()


def _quote_few(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" ... ({len(names)} in all)" if len(names) > n else "")


def map_classes(classes: Sequence[str], labels: Sequence[str], what: str) -> list[int]:
    """Index into ``labels`` of each name in ``classes`` (matched exactly, else after :func:`_norm`).

    Raises :class:`EvalError` naming a few unknown classes and a few of the labels.
    """
    exact = {c: i for i, c in enumerate(labels)}
    normed: dict[str, int] = {}
    for i, c in enumerate(labels):
        normed.setdefault(_norm(c), i)
    out, unknown = [], []
    for c in classes:
        i = exact.get(c, normed.get(_norm(c)))
        if i is None:
            unknown.append(c)
        out.append(-1 if i is None else i)
    if unknown:
        raise EvalError(f"{what}: {len(unknown)} class(es) the weights do not know: {_quote_few(unknown)} "
                        f"(the weights' {len(labels)} labels include {_quote_few(list(labels))})")
    return out


def _check_official(classes: Sequence[str], dataset: str, what: str) -> None:
    from videoapp.labels import load_labels

    official = {_norm(c) for c in load_labels(dataset)}
    unknown = [c for c in classes if _norm(c) not in official]
    if unknown:
        raise EvalError(f"{what}: {len(unknown)} class(es) are not in the official {dataset} list: "
                        f"{_quote_few(unknown)} (use --dataset kinetics for other classes)")


def _listed_missing(dataset: str, annotations: Path, root: Path, found: set[Path]) -> list[str]:
    """Names of the videos the annotation file lists but the readers did not find (they only count them)."""
    found_stems = {p.stem for p in found}
    if dataset.startswith("kinetics"):
        import csv

        with open(annotations, newline="", encoding="utf-8") as f:
            stems = [kinetics_stem(r["youtube_id"], r["time_start"], r["time_end"]) for r in csv.DictReader(f)]
        return [s for s in stems if s not in found_stems]
    if dataset == "ssv2":
        ids = [str(e["id"]) for e in json.loads(annotations.read_text(encoding="utf-8"))]
        return [i for i in ids if i not in found_stems]
    if dataset == "path_list":
        out = []
        for raw in annotations.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            sep = "," if "," in line and not any(c in line for c in " \t") else None
            p = (line.rsplit(sep, 1) if sep else line.rsplit(None, 1))[0].strip()
            if (Path(p) if os.path.isabs(p) else root / p) not in found:
                out.append(p)
        return out
    return []


def read_items(dataset: str, annotations: str | os.PathLike | None, data_root: str | os.PathLike | None,
               labels: Sequence[str], class_names: str | os.PathLike | None = None
               ) -> tuple[list[EvalItem], list[str], Annotations]:
    """The listed videos that exist (``EvalItem`` targets index ``labels``), the missing ones' names, and the annotations."""
    if dataset not in DATASETS:
        raise EvalError(f"unknown dataset {dataset!r} ({', '.join(DATASETS)})")
    try:
        if dataset == "folder":
            root = Path(data_root or annotations or ".")
            ann = read_folder(root)
        else:
            if annotations is None:
                raise EvalError(f"--dataset {dataset} needs --annotations FILE")
            ann_path = Path(annotations)
            root = Path(data_root) if data_root is not None else ann_path.parent
            if dataset.startswith("kinetics"):
                ann = read_kinetics_csv(ann_path, root, classes=load_class_names(class_names))
            elif dataset == "ssv2":
                ann = read_ssv2(ann_path, root, classes=class_names if class_names is not None else "ssv2")
            else:
                ann = read_path_list(ann_path, root, classes=load_class_names(class_names) or list(labels))
    except DatasetError as exc:
        raise EvalError(str(exc)) from None
    what = str(annotations or root)
    if dataset in ("kinetics400", "kinetics600", "kinetics700"):
        _check_official(sorted({ann.classes[t] for _, t in ann.items}), dataset, what)
    used = sorted({t for _, t in ann.items})
    mapping = dict(zip(used, map_classes([ann.classes[t] for t in used], labels, what)))
    items = []
    for path, t in ann.items:
        try:
            key = path.relative_to(root).as_posix()
        except ValueError:
            key = str(path)
        items.append(EvalItem(key, path, mapping[t]))
    missing: list[str] = []
    if ann.missing:
        missing = _listed_missing(dataset, Path(annotations), root, {p for p, _ in ann.items})  # type: ignore[arg-type]
        if len(missing) != ann.missing:  # the readers' rules changed: keep the count honest
            missing = [f"<{ann.missing} videos>"]
    return items, missing, ann


# --------------------------------------------------------------------------- decoding (DataLoader workers)
class _VideoViews(torch.utils.data.Dataset):
    """Item ``i`` -> ``{"i", "x": float32 [views * crops, C, T, H, W] or None, "error", "decode_s"}``."""

    def __init__(self, items: Sequence[EvalItem], sampler: ViewSampler) -> None:
        self.items = list(items)
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from videoapp.data.video import VideoError, VideoReader

        t0 = time.perf_counter()
        try:
            with VideoReader(self.items[i].path, num_threads=1) as reader:
                clips = self.sampler.clips(reader)
            x = torch.cat([self.sampler.transform(c) for c in clips])
            return {"i": i, "x": x, "views": len(clips), "error": None, "decode_s": time.perf_counter() - t0}
        except VideoError as exc:
            error = exc.problem
        except Exception as exc:  # a decoder failing mid-file: listed as undecodable, never a crash
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return {"i": i, "x": None, "views": 0, "error": error, "decode_s": time.perf_counter() - t0}


def _identity(x: Any) -> Any:
    return x


def default_workers() -> int:
    """Decoding workers per process: half the CPU cores (shared by the local ranks), at least 1."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 2) // 2 // max(1, local))


# --------------------------------------------------------------------------- scores file
def scores_path(report_path: str | os.PathLike) -> Path:
    """``report.json`` -> ``report.scores.jsonl`` (the per-video records)."""
    p = Path(report_path)
    return p.with_name(p.stem + _SCORES_SUFFIX)


def _part_path(final: Path, rank: int) -> Path:
    return final.with_name(f"{final.name}.rank{rank}")


def _read_records(path: Path, header: dict) -> dict[str, dict]:
    """Records of one scores file; a torn last line (a killed run) is ignored; a different run is an error."""
    out: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 2:  # the unfinished last line of a killed run
                break
            raise EvalError(f"{path}:{n + 1}: not a scores record") from None
        if rec.get("format") == _RECORD_FORMAT:
            if rec != header:
                diff = sorted(k for k in set(rec) | set(header) if rec.get(k) != header.get(k))
                raise EvalError(f"{path}: written by a different evaluation ({', '.join(diff)} differ); "
                                "remove it or use another --out")
            continue
        out[rec["video"]] = rec
    return out


def _write_records(path: Path, header: dict, records: Sequence[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for r in records:
            f.write(json.dumps(r) + "\n")


def _record(item: EvalItem, probs: np.ndarray | None, error: str | None, views: int) -> dict:
    if probs is None:
        return {"video": item.key, "target": item.target, "error": error}
    return {"video": item.key, "target": item.target, "views": views, "scores": [float(v) for v in probs]}


# --------------------------------------------------------------------------- metrics
def compute_metrics(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy metrics of per-video scores.

    ``scores``: float ``[N, K]`` (K = len(labels)); ``targets``: int ``[N]``
    indices into ``labels``. Ranks break ties by the lower class index. Returns
    ``top1``, ``top5`` (top-min(5, K)), ``mean_class_accuracy`` (the mean of
    the top-1 accuracy of every class with at least one video), ``per_class``
    (``{name: {"accuracy", "videos"}}``), ``confusion`` (``classes``: the
    classes that occur as truth or prediction, in label order; ``matrix``:
    counts, rows true, columns predicted) and ``top_confusions`` (the largest
    off-diagonal counts, ``{"true", "predicted", "count"}``).
    """
    n, k = scores.shape if scores.ndim == 2 else (0, len(labels))
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class_accuracy": 0.0, "per_class": {},
                "confusion": {"classes": [], "matrix": []}, "top_confusions": []}
    order = np.argsort(-scores, axis=1, kind="stable")
    pred = order[:, 0]
    hit1 = pred == targets
    hit5 = (order[:, : min(5, k)] == targets[:, None]).any(1)
    per_class = {}
    for c in np.unique(targets):
        sel = targets == c
        per_class[labels[c]] = {"accuracy": float(hit1[sel].mean()), "videos": int(sel.sum())}
    used = np.union1d(np.unique(targets), np.unique(pred))
    pos = {int(c): i for i, c in enumerate(used)}
    matrix = np.zeros((len(used), len(used)), dtype=np.int64)
    np.add.at(matrix, ([pos[int(t)] for t in targets], [pos[int(p)] for p in pred]), 1)
    off = [(-int(matrix[i, j]), int(used[i]), int(used[j])) for i, j in zip(*np.nonzero(matrix)) if i != j]
    top = [{"true": labels[t], "predicted": labels[p], "count": -c} for c, t, p in sorted(off)[:TOP_CONFUSIONS]]
    return {
        "top1": float(hit1.mean()), "top5": float(hit5.mean()),
        "mean_class_accuracy": float(np.mean([v["accuracy"] for v in per_class.values()])),
        "per_class": per_class,
        "confusion": {"classes": [labels[int(c)] for c in used], "matrix": matrix.tolist()},
        "top_confusions": top,
    }


def plot_confusion(confusion: dict, path: str | os.PathLike, title: str = "") -> Path:
    """The confusion matrix (rows true, normalised per row) as a PNG (matplotlib, Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    classes, matrix = confusion["classes"], np.asarray(confusion["matrix"], dtype=np.float64)
    k = max(1, len(classes))
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1) if matrix.size else np.zeros((1, 1))
    size = min(20.0, 4.0 + 0.25 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return save_png(fig, path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the run
@dataclass
class EvalResult:
    """What :func:`evaluate` did: ``report`` (rank 0; ``None`` elsewhere), ``problems`` (missing + undecodable)."""

    report: dict[str, Any] | None
    problems: int = 0
    problems_line: str = ""
    rank: int = 0
    world_size: int = 1
    files: list[Path] = field(default_factory=list)


def _load_model(weights: str | os.PathLike | None, model: nn.Module | None, model_name: str | None) -> nn.Module:
    if model is not None:
        return model
    if weights is None:
        raise EvalError("no weights to evaluate")
    from videoapp.models import create_model

    return create_model(resolve_weights_model(weights, model_name), pretrained=str(weights))


def _gather(obj: Any, rank: int, world: int) -> list[Any]:
    """Every rank's ``obj`` on rank 0 (in rank order); ``[]`` on the other ranks."""
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def evaluate(
    *,
    dataset: str,
    annotations: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    model: nn.Module | None = None,
    model_name: str | None = None,
    protocol: str | os.PathLike | None = None,
    num_clips: int | None = None,
    num_crops: int | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    out: str | os.PathLike = "eval_report.json",
    resume: bool = False,
    limit: int | None = None,
    strict: bool = False,
    device: str = "cpu",
    bf16: bool = False,
    progress: bool | None = None,
) -> EvalResult:
    """Evaluate ``weights`` (or an ``nn.Module`` ``model`` with a ``pretrained_cfg``: labels, clip protocol) on a video set.

    See the module docstring. ``labels``: class names of the annotations
    (SSv2 ``labels.json``, a text file); ``num_clips``/``num_crops`` override
    the protocol's views; ``batch_size``: views per forward pass (a video's
    views only); ``workers``: decoding processes (``None``:
    :func:`default_workers`, 0: decode in this process); ``limit``: the first
    N videos found. ``strict``: a missing video is an :class:`EvalError`
    before anything runs (undecodable ones are reported in ``problems`` for the
    caller to fail on). Without ``resume`` an existing scores file is an error.
    Writes ``out`` (JSON), its ``.scores.jsonl`` and ``.confusion.png`` (rank 0).
    """
    from videoapp.engine.train import _setup_distributed

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError("--device cuda requested but no CUDA device is available")
    d = _setup_distributed(device)
    try:
        return _evaluate(d, dataset=dataset, annotations=annotations, data_root=data_root, labels=labels,
                         weights=weights, model=model, model_name=model_name, protocol=protocol, num_clips=num_clips,
                         num_crops=num_crops, batch_size=batch_size, workers=workers, out=Path(out), resume=resume,
                         limit=limit, strict=strict, bf16=bf16, progress=progress)
    finally:
        if d.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _evaluate(d, *, dataset, annotations, data_root, labels, weights, model, model_name, protocol, num_clips,
              num_crops, batch_size, workers, out: Path, resume, limit, strict, bf16, progress) -> EvalResult:
    from tqdm import tqdm

    t_start = time.perf_counter()
    proto = load_protocol(protocol, dataset)
    clips = int(num_clips or proto.clips)
    crops = int(num_crops or proto.crops)
    net = _load_model(weights, model, model_name).eval().to(d.device)
    cfg = get_pretrained_cfg(net)
    model_labels = list(cfg.labels or [])
    if not model_labels:
        raise EvalError("the weights carry no class names (labels), so the annotations cannot be matched to them")
    sampler = ViewSampler(cfg.data_config(), num_clips=clips, num_crops=crops, sampling=proto.sampling,
                          use_offset=proto.use_offset)
    items, missing, ann = read_items(dataset, annotations, data_root, model_labels, labels)
    if limit is not None:
        items = items[: int(limit)]
    if strict and missing:
        raise EvalError(f"{len(missing)} listed video(s) missing: {_quote_few(missing)} (--strict)")

    weights_info: dict[str, Any] = {"model": cfg.model_name}
    if weights is not None:
        weights_info.update(file=str(weights), sha256=sha256_file(weights))
    transform = sampler.transform
    protocol_info = {
        "name": proto.name if (clips, crops) == (proto.clips, proto.crops) else f"{proto.name} ({clips}x{crops})",
        "source": proto.source, "clips": clips, "crops": crops, "sampling": sampler.sampling,
        "use_offset": sampler.use_offset, "num_frames": sampler.num_frames, "sampling_rate": sampler.sampling_rate,
        "crop_size": transform.crop_size, "short_side": transform.short_side, "mean": transform.mean,
        "std": transform.std, "channel_order": transform.channel_order,
    }
    header = {"format": _RECORD_FORMAT, "weights": weights_info, "protocol": protocol_info, "dataset": dataset}

    # ---- what is done already (every rank reads the same files, so every rank computes the same shards)
    final = scores_path(out)
    parts = sorted(final.parent.glob(final.name + ".rank*"))
    existing = [p for p in [final, *parts] if p.is_file()]
    if existing and not resume:
        raise EvalError(f"{existing[0]}: scores of an earlier run exist; pass --resume to continue it, "
                        "or remove the file")
    done: dict[str, dict] = {}
    for p in existing:
        done.update(_read_records(p, header))
    keys = {it.key for it in items}
    done = {k: r for k, r in done.items() if k in keys}
    d.barrier()
    if d.main:  # one clean file of what is done; the ranks then stream their new records
        _write_records(final, header, [done[it.key] for it in items if it.key in done])
        for p in parts:
            p.unlink(missing_ok=True)
    d.barrier()
    todo = [i for i, it in enumerate(items) if it.key not in done]
    shard = todo[d.rank::d.world]
    stream = final if d.world == 1 else _part_path(final, d.rank)
    if d.world > 1:
        _write_records(stream, header, [])

    # ---- decode in workers, forward here
    n_workers = default_workers() if workers is None else max(0, int(workers))
    ds = _VideoViews([items[i] for i in shard], sampler)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=n_workers,
                                         collate_fn=_identity, prefetch_factor=4 if n_workers else None)
    new: list[dict] = []
    timing = {"forward_s": 0.0, "wait_s": 0.0, "decode_s": 0.0, "views": 0, "videos": 0}
    bar = tqdm(total=len(shard), desc="eval", unit="video", leave=False,
               disable=(not d.main) or (None if progress is None else not progress))
    step = max(1, int(batch_size)) * crops
    t_loop = time.perf_counter()
    with open(stream, "a", encoding="utf-8") as f, torch.inference_mode():
        t_wait = time.perf_counter()
        for sample in loader:
            timing["wait_s"] += time.perf_counter() - t_wait
            timing["decode_s"] += sample["decode_s"]
            item = ds.items[sample["i"]]
            probs = None
            if sample["x"] is not None:
                t0 = time.perf_counter()
                x = sample["x"]
                chunks = [view_probs(net, x[s:s + step].to(d.device), crops, bf16).cpu().numpy()
                          for s in range(0, x.shape[0], step)]
                probs = np.concatenate(chunks).mean(0)
                if d.device.type == "cuda":
                    torch.cuda.synchronize(d.device)
                timing["forward_s"] += time.perf_counter() - t0
                timing["views"] += int(sample["views"])
                timing["videos"] += 1
            rec = _record(item, probs, sample["error"], int(sample["views"]))
            f.write(json.dumps(rec) + "\n")
            f.flush()
            new.append(rec)
            bar.update(1)
            t_wait = time.perf_counter()
    bar.close()
    loop_s = time.perf_counter() - t_loop

    # ---- gather, then rank 0 reports
    gathered = _gather({"records": new, "timing": timing, "loop_s": loop_s}, d.rank, d.world)
    if not d.main:
        d.barrier()
        return EvalResult(None, rank=d.rank, world_size=d.world)
    for g in gathered:
        for rec in g["records"]:
            done[rec["video"]] = rec
    records = [done[it.key] for it in items if it.key in done]
    _write_records(final, header, records)
    for r in range(d.world if d.world > 1 else 0):
        _part_path(final, r).unlink(missing_ok=True)
    if len(records) != len(items):  # cannot happen: every video is in exactly one shard
        raise RuntimeError(f"{len(items) - len(records)} videos lost while gathering")
    d.barrier()

    ok = [r for r in records if "scores" in r]
    bad = [{"video": r["video"], "error": r["error"]} for r in records if "scores" not in r]
    scores = np.asarray([r["scores"] for r in ok], dtype=np.float32).reshape(len(ok), len(model_labels))
    targets = np.asarray([r["target"] for r in ok], dtype=np.int64)
    metrics = compute_metrics(scores, targets, model_labels)
    png = out.with_name(out.stem + ".confusion.png")
    plot_confusion(metrics["confusion"], png, title=f"{weights_info['model']} on {dataset}")

    total = {k: sum(g["timing"][k] for g in gathered) for k in timing}
    wall = max(g["loop_s"] for g in gathered)
    report: dict[str, Any] = {
        "top1": metrics["top1"], "top5": metrics["top5"], "mean_class_accuracy": metrics["mean_class_accuracy"],
        "num_videos": len(ok),
        "dataset": dataset, "annotations": str(annotations) if annotations is not None else None,
        "data_root": str(data_root) if data_root is not None else None,
        "weights": weights_info, "protocol": protocol_info,
        "counts": {"listed": len(items) + len(missing), "evaluated": len(ok), "missing": len(missing),
                   "undecodable": len(bad), "classes": len(metrics["per_class"]),
                   "clips": crops * sum(r["views"] for r in ok)},  # model inputs (short videos have fewer views)
        "missing": missing, "undecodable": bad,
        "per_class": metrics["per_class"], "top_confusions": metrics["top_confusions"],
        "confusion": metrics["confusion"],
        "files": {"scores": final.name, "confusion_png": png.name},  # beside the report
        "throughput": {
            "videos_per_s": round(total["videos"] / wall, 4) if wall > 0 else None,
            "clips_per_s": round(total["views"] * crops / wall, 4) if wall > 0 else None,
            "wall_s": round(wall, 3), "total_s": round(time.perf_counter() - t_start, 3),
            "forward_s": round(total["forward_s"], 3), "wait_for_data_s": round(total["wait_s"], 3),
            "decode_s_in_workers": round(total["decode_s"], 3), "videos_this_run": total["videos"],
        },
        "run": {"world_size": d.world, "workers": n_workers, "batch_size": int(batch_size),
                "device": str(d.device), "bf16": bool(bf16),
                "resumed_videos": len(records) - sum(len(g["records"]) for g in gathered)},
    }
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    problems = len(missing) + len(bad)
    line = ""
    if problems:
        line = (f"{len(missing)} video(s) missing, {len(bad)} undecodable, not counted in the accuracy "
                f"(listed in {out})")
    return EvalResult(report, problems, line, d.rank, d.world, [out, final, png])


def format_report(report: dict[str, Any], path: str | os.PathLike | None = None) -> str:
    """The short stdout table of a report (``path``: where the report was written, named last)."""
    p, c, t = report["protocol"], report["counts"], report["throughput"]
    lines = [
        f"{report['weights']['model']} on {report['dataset']}  ({report['num_videos']} videos, protocol "
        f"{p['name']}: {p['clips'] if p['sampling'] == 'rate' else 1} clip(s) x {p['crops']} crop(s), "
        f"{p['num_frames']}x{p['sampling_rate']} frames, {p['crop_size']} px)",
        f"  top-1        {100 * report['top1']:6.2f} %",
        f"  top-5        {100 * report['top5']:6.2f} %",
        f"  mean class   {100 * report['mean_class_accuracy']:6.2f} %",
        f"  videos       {c['evaluated']} evaluated, {c['missing']} missing, {c['undecodable']} undecodable",
    ]
    if t.get("videos_per_s") is not None:
        lines.append(f"  throughput   {t['videos_per_s']:.2f} videos/s, {t['clips_per_s']:.2f} clips/s")
    if report["top_confusions"]:
        conf = ", ".join(f"{x['true']} -> {x['predicted']} ({x['count']})" for x in report["top_confusions"][:3])
        lines.append(f"  confusions   {conf}")
    if path is not None:
        f = report["files"]
        lines.append(f"  report       {path} (beside it: {f['scores']}, {f['confusion_png']})")
    return "\n".join(lines) + "\n"


__all__ = [
    "EvalError", "EvalItem", "EvalResult", "Protocol", "compute_metrics", "default_workers", "evaluate",
    "format_report", "list_protocols", "load_protocol", "map_classes", "plot_confusion", "read_items",
    "scores_path", "sha256_file",
]
