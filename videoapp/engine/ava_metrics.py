"""AVA frame-mAP@0.5: the official AVA action-detection metric.

Computes what ActivityNet's ``Evaluation/get_ava_performance.py`` computes with
the Pascal VOC evaluator of the TF object-detection API (our own code, no
TensorFlow). The tests compare it with SlowFast's copy of that evaluator
(``pyslowfast``) on random files; run against ActivityNet's own scripts it gave
the same per-class APs (to 1e-16) on 2000 random cases, tied scores and exact
IoU ties included. It:

1. Only actions of the label map count; rows of other actions are dropped on
   both sides (the official "class whitelist").
2. Per keyframe, only the 50 highest-scoring detections over all classes
   count. Rows are taken in file order into a pool of 50; a later row enters
   only with a score strictly above the lowest in the pool and then replaces
   it (among tied lowest scores the smallest ``(score, action_id, y1, x1, y2,
   x2)`` leaves): the official reader's heap, so ties at the cut agree too.
3. Detections with no area (``x2 <= x1`` or ``y2 <= y1``) are then dropped.
4. Per keyframe and class, detections in descending score order are each
   compared with the ground-truth box of that class they overlap most (the
   first such box on a tie): a true positive if that IoU >= 0.5 and the box is
   not yet taken, otherwise a false positive. There is no falling back to the
   next-best box, and a keyframe without ground truth of the class makes every
   detection of it a false positive. IoU is computed on the normalised
   coordinates with no ``+1`` (area ``(x2 - x1) * (y2 - y1)``), as the official
   ``np_box_ops.iou``.
5. Per class, all keyframes' detections are ranked by score; precision and
   recall (over the number of ground-truth rows of the class) at each rank;
   precision made non-increasing from the right (VOC); AP = sum over the ranks
   where recall grows of (recall step x precision): all-point interpolation,
   with the curve padded by (recall 0, precision 0) and (recall 1, precision
   0). A class with ground truth and no detections has AP 0.
6. mAP = mean AP over the label-map classes that have ground truth; a class
   without ground truth has no AP (``None``) and is left out of the mean.

Which keyframes count (the two official conventions):

* ``keyframes="all"`` (AVA v2.1/v2.2 with ``ava_val_excluded_timestamps``,
  SlowFast): every keyframe with detections counts, so detections on a
  keyframe without ground truth are false positives; keyframes in the
  exclusions are dropped on both sides.
* ``keyframes="listed"`` (the current official script, whose ground truth
  lists empty keyframes as 2-column ``video_id,timestamp`` rows): detections on
  keyframes the ground-truth file does not list are ignored.
* ``"auto"`` (the default) picks ``"listed"`` when the ground truth has a
  2-column row and ``"all"`` otherwise. Exclusions apply in every mode.

Keyframes are compared by value (``"0902"`` is ``"902"``), to the microsecond.

Tied scores: the official code ranks a class's detections with numpy's default
(unstable) ``argsort`` of the scores, reversed, over the keyframes in the order
they first appear in the detection file; we build the same array and sort it
the same way, so even tied scores give the official numbers (the order among
ties is numpy's and may differ between numpy builds, for both).
"""
from __future__ import annotations

import heapq
import os
from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np

from videoapp.data.ava import AVARow, keyframe_key, read_ava_csv, read_exclusions, read_label_map
from videoapp.labels import load_ava_labels

__all__ = ["evaluate_ava", "format_ava_table", "average_precision_voc", "MAX_DETECTIONS_PER_KEYFRAME"]

#: The official evaluation keeps this many detections per keyframe.
MAX_DETECTIONS_PER_KEYFRAME = 50

_Box = tuple[float, float, float, float]


def average_precision_voc(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """VOC all-point AP of one class from detection ``scores`` ``[N]`` and their ``is_tp`` flags ``[N]``.

    ``num_gt`` (> 0) is the number of ground-truth boxes of the class. Ranks by
    descending score (numpy's default argsort reversed: see the module docstring on ties),
    makes precision non-increasing from the right and sums precision x recall
    step over the ranks where recall grows. Returns 0.0 without detections.
    """
    if num_gt <= 0:
        raise ValueError("AP needs at least one ground-truth box")
    scores = np.asarray(scores, dtype=np.float64)
    is_tp = np.asarray(is_tp, dtype=bool)
    if scores.size == 0:
        return 0.0
    # numpy's default (unstable) sort reversed, as the official code: tied scores rank identically.
    order = np.argsort(scores)[::-1]
    tp = is_tp[order].astype(np.int64)
    cum_tp = np.cumsum(tp)
    cum_fp = np.cumsum(1 - tp)
    precision = cum_tp.astype(np.float64) / (cum_tp + cum_fp)
    recall = cum_tp.astype(np.float64) / num_gt
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _iou(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` of boxes ``[N, 4]`` and ``[M, 4]`` (``x1, y1, x2, y2``), no ``+1``.

    The operations run in the official order (heights x widths, areas summed
    before the intersection is subtracted), so the values agree to the bit.
    """
    x1, y1, x2, y2 = (dets[:, i : i + 1] for i in range(4))
    gx1, gy1, gx2, gy2 = (gts[None, :, i] for i in range(4))
    heights = np.maximum(0.0, np.minimum(y2, gy2) - np.maximum(y1, gy1))
    widths = np.maximum(0.0, np.minimum(x2, gx2) - np.maximum(x1, gx1))
    inter = heights * widths
    area_d = (y2 - y1) * (x2 - x1)
    area_g = (gy2 - gy1) * (gx2 - gx1)
    return inter / (area_d + area_g - inter)


def _match(det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """TP flags ``[N]`` of detections ``[N, 4]`` (descending score) against one class's GT ``[M, 4]``."""
    is_tp = np.zeros(len(det_boxes), dtype=bool)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return is_tp
    iou = _iou(det_boxes, gt_boxes)
    best = np.argmax(iou, axis=1)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i, j in enumerate(best):
        # No falling back: a detection whose best box is taken is a false positive.
        if iou[i, j] >= iou_threshold and not taken[j]:
            is_tp[i] = True
            taken[j] = True
    return is_tp


def _load_rows(src: str | os.PathLike | Iterable[AVARow], kind: str) -> list[AVARow]:
    if isinstance(src, (str, os.PathLike)):
        return read_ava_csv(src, kind)
    return list(src)


def _load_exclusions(src: str | os.PathLike | Iterable[tuple[str, str]] | None) -> set[tuple[str, str]]:
    if src is None:
        return set()
    if isinstance(src, (str, os.PathLike)):
        return read_exclusions(src)
    return {keyframe_key(v, t) for v, t in src}


def evaluate_ava(
    groundtruth: str | os.PathLike | Iterable[AVARow],
    detections: str | os.PathLike | Iterable[AVARow],
    label_map: str | os.PathLike | Mapping[int, str] | None = None,
    exclusions: str | os.PathLike | Iterable[tuple[str, str]] | None = None,
    *,
    keyframes: str = "auto",
    iou_threshold: float = 0.5,
    max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
) -> dict[str, Any]:
    """Frame-mAP of AVA ``detections`` against ``groundtruth`` (files or :class:`AVARow` lists).

    ``label_map`` is a ``.pbtxt``/plain label map path or ``{action_id: name}``
    (default: the 60 evaluated AVA v2.2 actions shipped in ``videoapp.labels``);
    ``exclusions`` a ``video_id,timestamp`` CSV path or a set of
    ``(video_id, timestamp)``. ``keyframes`` is ``"auto"``, ``"all"`` or
    ``"listed"`` (module docstring). Detection rows need a score.

    Returns a JSON-ready report: ``map`` (0-1), ``per_class_ap``
    (``{name: AP or None}`` for every label-map class, ``None`` without ground
    truth), ``per_class`` (list of ``{action_id, name, ap, num_groundtruth,
    num_detections, num_true_positives}``), ``num_classes_evaluated``,
    ``num_keyframes`` (keyframes evaluated: those the ground truth lists, less
    the excluded ones, plus those with scored detections), ``num_groundtruth`` (boxes x actions), ``num_detections``
    (scored), ``num_detections_ignored`` (on unlisted or excluded keyframes,
    over the 50-per-keyframe cap, outside the label map, or without area),
    ``keyframes`` (the convention used), ``iou_threshold``.

    Raises :class:`~videoapp.data.ava.AVAFormatError` for malformed files and
    ``ValueError`` when no label-map class has ground truth.
    """
    if keyframes not in ("auto", "all", "listed"):
        raise ValueError(f"keyframes must be 'auto', 'all' or 'listed', got {keyframes!r}")
    if label_map is None:
        labels = dict(load_ava_labels())
    elif isinstance(label_map, (str, os.PathLike)):
        labels = read_label_map(label_map)
    else:
        labels = dict(label_map)
    if not labels:
        raise ValueError("the label map is empty")
    if min(labels) < 1:
        raise ValueError(f"label map ids must be 1 or more (AVA action ids), got {min(labels)}")
    gt_rows = _load_rows(groundtruth, "groundtruth")
    det_rows = _load_rows(detections, "detections")
    excluded = _load_exclusions(exclusions)
    mode = keyframes
    if mode == "auto":
        mode = "listed" if any(r.box is None for r in gt_rows) else "all"

    # Ground truth per keyframe and class. The order decides which box wins an exact IoU
    # tie, so it is the official one: its reader takes a ground-truth 8th column (AVA's
    # person_id) as a score and sorts each keyframe's boxes by it, descending (heap order
    # among equals).
    listed: set[tuple[str, str]] = set()
    gt_heaps: dict[tuple[str, str], list[tuple]] = {}
    num_gt: dict[int, int] = defaultdict(int)
    for r in gt_rows:
        k = r.key
        listed.add(k)
        if r.box is None or r.action_id not in labels or k in excluded:
            continue
        rank = r.score if r.score is not None else float(r.person_id) if r.person_id is not None else 1.0
        x1, y1, x2, y2 = r.box
        heapq.heappush(gt_heaps.setdefault(k, []), (rank, r.action_id, y1, x1, y2, x2))
        num_gt[r.action_id] += 1
    gt: dict[tuple[str, str], dict[int, list[_Box]]] = {}
    for k, heap in gt_heaps.items():
        by_class: dict[int, list[_Box]] = defaultdict(list)
        for _, c, y1, x1, y2, x2 in sorted(heap, key=lambda t: -t[0]):
            by_class[c].append((x1, y1, x2, y2))
        gt[k] = by_class

    # The official reader's 50-per-keyframe pool (see the module docstring), keyframes in first-row order.
    ignored = 0
    pools: dict[tuple[str, str], list[tuple]] = {}
    for r in det_rows:
        if r.box is None:
            continue
        if r.score is None:
            raise ValueError(f"detection {r.video_id},{r.timestamp},{r.action_id} has no score")
        if r.action_id not in labels:
            ignored += 1
            continue
        x1, y1, x2, y2 = r.box
        item = (r.score, r.action_id, y1, x1, y2, x2)
        pool = pools.setdefault(r.key, [])
        if len(pool) < max_detections_per_keyframe:
            heapq.heappush(pool, item)
        else:
            ignored += 1
            if r.score > pool[0][0]:
                heapq.heapreplace(pool, item)

    scores: dict[int, list[np.ndarray]] = defaultdict(list)
    tps: dict[int, list[np.ndarray]] = defaultdict(list)
    num_det = 0
    det_keys: set[tuple[str, str]] = set()
    for k, pool in pools.items():
        if k in excluded or (mode == "listed" and k not in listed):
            ignored += len(pool)
            continue
        items = sorted(pool, key=lambda t: -t[0])
        arr = np.array([t[2:] for t in items], dtype=np.float64)  # y1, x1, y2, x2
        valid = (arr[:, 0] < arr[:, 2]) & (arr[:, 1] < arr[:, 3])
        ignored += int((~valid).sum())
        items = [t for t, ok in zip(items, valid) if ok]
        if not items:
            continue
        det_keys.add(k)
        num_det += len(items)
        cls = np.array([t[1] for t in items])
        sc = np.array([t[0] for t in items], dtype=np.float64)
        boxes = np.array([(t[3], t[2], t[5], t[4]) for t in items], dtype=np.float64)  # x1, y1, x2, y2
        key_gt = gt.get(k, {})
        for c in np.unique(cls):
            sel = cls == c
            g = np.array(key_gt.get(int(c), []), dtype=np.float64).reshape(-1, 4)
            scores[int(c)].append(sc[sel])
            tps[int(c)].append(_match(boxes[sel], g, iou_threshold))

    per_class = []
    per_class_ap: dict[str, float | None] = {}
    aps = []
    for cid, name in labels.items():
        n = num_gt.get(cid, 0)
        s = np.concatenate(scores[cid]) if scores.get(cid) else np.zeros(0)
        t = np.concatenate(tps[cid]) if tps.get(cid) else np.zeros(0, dtype=bool)
        ap = average_precision_voc(s, t, n) if n > 0 else None
        if ap is not None:
            aps.append(ap)
        per_class_ap[name] = ap
        per_class.append(
            {"action_id": cid, "name": name, "ap": ap, "num_groundtruth": n, "num_detections": int(s.size), "num_true_positives": int(t.sum())}
        )
    if not aps:
        raise ValueError("the ground truth holds no box of any label-map action: nothing to evaluate")
    return {
        "map": float(np.mean(aps)),
        "per_class_ap": per_class_ap,
        "per_class": per_class,
        "num_classes_evaluated": len(aps),
        "num_keyframes": len({k for k in listed if k not in excluded} | det_keys),
        "num_groundtruth": int(sum(num_gt.values())),
        "num_detections": num_det,
        "num_detections_ignored": ignored,
        "keyframes": mode,
        "iou_threshold": iou_threshold,
    }


def format_ava_table(report: Mapping[str, Any]) -> str:
    """A short text table of an :func:`evaluate_ava` report: per-class AP (%) then the mAP line."""
    rows = report.get("per_class") or [{"name": n, "ap": a, "num_groundtruth": None} for n, a in report["per_class_ap"].items()]
    width = max([len("action")] + [len(str(r["name"])) for r in rows])
    lines = [f"{'action':<{width}}  {'AP':>6}  {'GT':>6}"]
    for r in rows:
        ap = "-" if r["ap"] is None else f"{100 * r['ap']:.2f}"
        n = "" if r.get("num_groundtruth") is None else str(r["num_groundtruth"])
        lines.append(f"{str(r['name']):<{width}}  {ap:>6}  {n:>6}")
    lines.append(
        f"frame-mAP@{report.get('iou_threshold', 0.5):g}: {100 * report['map']:.2f}  "
        f"({report.get('num_classes_evaluated', '?')} classes, {report.get('num_keyframes', '?')} keyframes, "
        f"{report.get('num_detections', '?')} detections, keyframes: {report.get('keyframes', '?')})"
    )
    return "\n".join(lines) + "\n"
