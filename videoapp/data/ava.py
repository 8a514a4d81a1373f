"""AVA-format files: box/action CSVs, JSON box files, label maps, exclusions, keyframes.

Everything AVA v2.x distributes (and every tool in its ecosystem reads) is a
header-less CSV, one box and one action per row, coordinates normalised to
``[0, 1]`` of the frame's width/height:

=============  ==========================================================================
kind           columns
=============  ==========================================================================
groundtruth    ``video_id,timestamp`` (a listed keyframe without any box, the current
               official files), or ``video_id,timestamp,x1,y1,x2,y2,action_id`` with an
               optional ``person_id`` (the train/val CSVs as distributed: 8 columns).
detections     ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` (the official result
               format, what ``videoapp detect`` writes), or 9 columns with ``person_id``
               before the score (``detect --person-ids``).
boxes          person boxes for ``videoapp detect --boxes``: 6 to 9 columns
               ``video_id,timestamp,x1,y1,x2,y2[,action_id[,8th[,score]]]``. 6: a bare
               box; 7: a ground-truth row without person id; 9: a detection row with
               person id. **8 columns are ambiguous** (AVA ground truth has
               ``action_id,person_id``; SlowFast's ``ava_*_predicted_boxes.csv`` person
               proposals and the official detection format have ``action_id,score``), so
               the file decides: when the 8th column of *every* 8-column row of the file
               is an integer literal (digits only: ``0``, ``12``) it is the
               ``person_id``, as in the ground-truth CSVs; otherwise (``0.998``,
               ``1.0``, ``9e-1``) it is the ``score``, as in proposal and detection
               files. An empty ``action_id`` or ``-1`` (proposal files) means "no
               action" (``None``). Coordinates outside ``[0, 1]`` are kept as written
               here (``detect`` clips them to the frame with a warning); everywhere
               else they are an error. 2-column rows (a keyframe without people, as in
               the ground-truth files) are accepted too (``box=None``).
=============  ==========================================================================

Timestamps are kept exactly as written (``"0902"``, ``"1.5"``), so a file read
and written again is unchanged, but they are *compared by value* everywhere:
``"0902"`` and ``"902"`` are the same keyframe. :func:`canonical_timestamp`
gives the one spelling used for comparisons and dictionary keys; like the
official evaluation (``"%.6f"`` of a ``Decimal``) it resolves microseconds.

Bad input raises :class:`AVAFormatError` (a ``ValueError``) whose message is one
line, ``"FILE:LINE: what is wrong"``.

The JSON box format (:func:`read_boxes_json`, :func:`write_boxes_json`; also
what ``videoapp detect --format json`` writes) is a list of boxes, or an object
whose ``"boxes"`` key holds that list::

    [{"video_id": "clip1", "timestamp": "0902", "box": [0.1, 0.2, 0.5, 0.9],
      "person_id": 0, "score": 0.98,
      "actions": [{"action_id": 12, "name": "stand", "score": 0.91}]}]

``box`` (``x1, y1, x2, y2`` normalised) and ``video_id`` are required;
``timestamp`` is a string or a number (seconds); ``person_id`` and ``score`` (the
person detector's confidence) are optional; ``actions`` is optional and ignored
when the file is read as person boxes.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from videoapp.files import atomic_write_text

__all__ = [
    "AVAFormatError",
    "AVARow",
    "AVA_KEYFRAME_START_S",
    "AVA_KEYFRAME_END_S",
    "canonical_timestamp",
    "format_timestamp",
    "keyframe_key",
    "read_ava_csv",
    "read_boxes_json",
    "write_ava_csv",
    "write_boxes_json",
    "read_label_map",
    "write_label_map",
    "read_exclusions",
    "keyframe_times",
    "unique_boxes",
]

#: First and last keyframe (seconds) of the official 15-minute AVA clips, 1 fps.
AVA_KEYFRAME_START_S = 902
AVA_KEYFRAME_END_S = 1798

_KINDS = ("groundtruth", "detections", "boxes")
_INT_RE = re.compile(r"[+-]?\d+\Z")
# The official evaluation keys keyframes by "%.6f" % Decimal(timestamp).
_MICRO = Decimal("0.000001")


class AVAFormatError(ValueError):
    """A malformed AVA file; ``str()`` is one line ``"FILE:LINE: what is wrong"``."""


@dataclass(frozen=True, slots=True)
class AVARow:
    """One row of an AVA file: a box on a keyframe with (optionally) one action.

    ``timestamp`` is the keyframe time exactly as written (``"0902"``, ``"1.5"``);
    compare keyframes with :attr:`key` (by value), never by the raw string.
    ``box`` is ``(x1, y1, x2, y2)`` normalised to ``[0, 1]`` of the frame width
    (x) and height (y), or ``None`` for a 2-column "listed keyframe without
    boxes" row. ``action_id`` is the official 1-based AVA id, ``person_id`` the
    per-video person track id, ``score`` a confidence (detections, proposals).
    """

    video_id: str
    timestamp: str
    box: tuple[float, float, float, float] | None = None
    action_id: int | None = None
    person_id: int | None = None
    score: float | None = None

    @property
    def seconds(self) -> float:
        """The keyframe time in seconds, ``float(timestamp)``."""
        return float(self.timestamp)

    @property
    def key(self) -> tuple[str, str]:
        """``(video_id, canonical timestamp)``: equal for the same keyframe however it is spelled."""
        return keyframe_key(self.video_id, self.timestamp)


def canonical_timestamp(timestamp: str | float | int | Decimal) -> str:
    """One spelling per keyframe time: ``"0902"``, ``"902"``, ``902.0`` -> ``"902"``; ``"1.50"`` -> ``"1.5"``.

    Times are resolved to the microsecond, as the official evaluation does
    (``"%.6f"`` of a ``Decimal``). Raises ``ValueError`` for a non-numeric,
    negative or non-finite time.
    """
    if isinstance(timestamp, float):
        timestamp = repr(timestamp)
    return _canonical(str(timestamp).strip())


@lru_cache(maxsize=1 << 16)
def _canonical(text: str) -> str:
    # Cached: a file repeats each keyframe's timestamp once per box and action.
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"timestamp {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"timestamp {text!r} is not a time (seconds >= 0)")
    out = format(value.quantize(_MICRO), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out


def keyframe_key(video_id: str, timestamp: str | float | int) -> tuple[str, str]:
    """``(video_id, canonical_timestamp(timestamp))``: the key keyframes are compared by."""
    return (video_id, canonical_timestamp(timestamp))


def format_timestamp(seconds: float) -> str:
    """A keyframe time as AVA writes it: whole seconds zero-padded to 4 digits (``902`` -> ``"0902"``), else ``repr``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timestamp {seconds!r} is not a time (seconds >= 0)")
    if float(seconds).is_integer():
        return f"{int(seconds):04d}"
    return repr(float(seconds))


def keyframe_times(start_s: float = AVA_KEYFRAME_START_S, end_s: float = AVA_KEYFRAME_END_S, fps: float = 1) -> list[float]:
    """Keyframe times in seconds from ``start_s`` to ``end_s`` inclusive, ``fps`` per second.

    The defaults are the official AVA keyframes (seconds 902-1798 of each
    15-minute clip at 1 fps: 897 keyframes); any range works for other videos.
    Times are ``start_s + i / fps`` (no accumulated rounding).
    """
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0:
        raise ValueError(f"keyframe range {start_s!r}-{end_s!r} is not a range of times (seconds >= 0)")
    if end_s < start_s:
        raise ValueError(f"keyframe range ends ({end_s!r}) before it starts ({start_s!r})")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"keyframe rate must be > 0 per second, got {fps!r}")
    # The 1e-9 absorbs (end - start) * fps landing a hair below a whole number.
    count = int(math.floor((end_s - start_s) * fps + 1e-9)) + 1
    return [start_s + i / fps for i in range(count)]


# ----------------------------------------------------------------------------- CSV


def _where(path: str, line: int) -> str:
    return f"{path}:{line}"


def _parse_int(text: str, what: str, where: str) -> int:
    if not _INT_RE.match(text):
        raise AVAFormatError(f"{where}: {what} {text!r} is not an integer")
    return int(text)


def _parse_float(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AVAFormatError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AVAFormatError(f"{where}: {what} {text!r} is not a finite number")
    return value


def _parse_box(fields: Sequence[str], where: str, check_range: bool) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = map(float, fields)
    except ValueError:
        x1 = y1 = x2 = y2 = math.nan  # the slow path below names the bad field
    # Fast path for the millions of rows of a real file; NaN fails every comparison.
    if check_range:
        if 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0:
            return (x1, y1, x2, y2)
    elif x1 <= x2 and y1 <= y2 and math.isfinite(x1 + y1 + x2 + y2):
        return (x1, y1, x2, y2)
    x1, y1, x2, y2 = (_parse_float(t, n, where) for t, n in zip(fields, ("x1", "y1", "x2", "y2")))
    if check_range:
        for name, v in (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)):
            if not 0.0 <= v <= 1.0:
                raise AVAFormatError(f"{where}: {name}={v!r} is outside [0, 1] (coordinates are normalised to the frame)")
    if x2 < x1:
        raise AVAFormatError(f"{where}: x2={x2!r} is left of x1={x1!r}")
    if y2 < y1:
        raise AVAFormatError(f"{where}: y2={y2!r} is above y1={y1!r}")
    return (x1, y1, x2, y2)


def _keyframe(fields: Sequence[str], where: str) -> tuple[str, str]:
    video_id, timestamp = fields[0], fields[1]
    if not video_id:
        raise AVAFormatError(f"{where}: empty video_id")
    try:
        canonical_timestamp(timestamp)
    except ValueError as exc:
        raise AVAFormatError(f"{where}: {exc}") from None
    return video_id, timestamp


def _numbered_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """``(line number, stripped fields)`` of each non-blank row, streamed (detection files run to millions)."""
    name = os.fspath(path)
    try:
        with open(name, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for fields in reader:
                fields = list(map(str.strip, fields))
                if len(fields) > 1 or (fields and fields[0]):  # skip blank lines
                    yield reader.line_num, fields
    except FileNotFoundError:
        raise AVAFormatError(f"{name}:0: no such file") from None
    except IsADirectoryError:
        raise AVAFormatError(f"{name}:0: is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise AVAFormatError(f"{name}:0: not a text (UTF-8) file ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise AVAFormatError(f"{name}:0: not a CSV file ({exc})") from None


def read_ava_csv(path: str | os.PathLike, kind: str) -> list[AVARow]:
    """Read an AVA-format CSV of ``kind`` ``"groundtruth"``, ``"detections"`` or ``"boxes"``.

    The columns of each kind are in the module docstring. Rows come back in
    file order, one :class:`AVARow` per row (a 2-column ground-truth row has
    ``box=None``); blank lines are skipped. Raises :class:`AVAFormatError`
    (``"FILE:LINE: ..."``) on a wrong column count, a non-numeric field, a
    coordinate outside ``[0, 1]`` (except for ``"boxes"``) or a box whose
    ``x2 < x1`` / ``y2 < y1``.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown AVA CSV kind {kind!r} (one of {', '.join(_KINDS)})")
    name = os.fspath(path)
    numbered: Iterable[tuple[int, list[str]]] = _numbered_rows(path)
    eighth_is_person = False
    if kind == "boxes":
        numbered = list(numbered)  # the 8th column's meaning is decided over the whole file
        eights = [f[7] for _, f in numbered if len(f) == 8]
        eighth_is_person = bool(eights) and all(_INT_RE.match(x) for x in eights)
    rows: list[AVARow] = []
    for line, f in numbered:
        where = _where(name, line)
        n = len(f)
        if kind == "groundtruth":
            if n not in (2, 7, 8):
                raise AVAFormatError(
                    f"{where}: {n} columns; ground truth has 2 (video_id,timestamp), 7 "
                    "(video_id,timestamp,x1,y1,x2,y2,action_id) or 8 (...,action_id,person_id)"
                )
        elif kind == "detections":
            if n not in (8, 9):
                raise AVAFormatError(
                    f"{where}: {n} columns; detections have 8 (video_id,timestamp,x1,y1,x2,y2,action_id,score) "
                    "or 9 (...,action_id,person_id,score)"
                )
        elif not (6 <= n <= 9 or n == 2):
            raise AVAFormatError(f"{where}: {n} columns; person boxes have 6 to 9 (video_id,timestamp,x1,y1,x2,y2[,action_id[,person_id|score[,score]]]) or 2 (a keyframe without boxes)")
        video_id, timestamp = _keyframe(f, where)
        if n == 2:
            rows.append(AVARow(video_id, timestamp))
            continue
        box = _parse_box(f[2:6], where, check_range=kind != "boxes")
        action_id = person_id = None
        score = None
        if n >= 7:
            if kind == "boxes" and f[6] in ("", "-1"):
                action_id = None
            else:
                action_id = _parse_int(f[6], "action_id", where)
                if action_id < 1:
                    raise AVAFormatError(f"{where}: action_id {action_id} is not an AVA action id (1 or more)")
        if n == 8:
            if kind == "groundtruth" or (kind == "boxes" and eighth_is_person):
                person_id = _parse_int(f[7], "person_id", where)
            else:
                score = _parse_float(f[7], "score", where)
        elif n == 9:
            person_id = _parse_int(f[7], "person_id", where)
            score = _parse_float(f[8], "score", where)
        rows.append(AVARow(video_id, timestamp, box, action_id, person_id, score))
    return rows


def _fmt_float(v: float) -> str:
    # repr is the shortest text that reads back to the same double.
    return repr(float(v))


def write_ava_csv(file_or_path: str | os.PathLike | IO[str], rows: Iterable[AVARow], person_ids: bool = False) -> None:
    """Write ``rows`` as an AVA CSV that :func:`read_ava_csv` reads back to equal rows.

    Rows with a score are detections: 8 columns
    ``video_id,timestamp,x1,y1,x2,y2,action_id,score``, or 9 with ``person_id``
    before the score when ``person_ids``. Rows without a score are ground
    truth: 7 columns, or 8 with ``person_id`` when ``person_ids``; a row
    without a box is written as ``video_id,timestamp``. Timestamps are written
    exactly as held; coordinates and scores as ``repr`` (they round-trip
    exactly). A path is written atomically (beside it, then renamed).
    Raises ``ValueError`` for a row that cannot be written that way (no
    action, no person id when ``person_ids``, scored and unscored rows mixed).
    """
    rows = list(rows)
    boxed = [r for r in rows if r.box is not None]
    scored = {r.score is not None for r in boxed}
    if len(scored) > 1:
        raise ValueError("rows mix detections (with a score) and ground truth (without): write them to separate files")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in rows:
        if r.box is None:
            writer.writerow([r.video_id, r.timestamp])
            continue
        if r.action_id is None:
            raise ValueError(f"row {r.video_id},{r.timestamp} has a box but no action_id")
        out = [r.video_id, r.timestamp, *(_fmt_float(v) for v in r.box), str(r.action_id)]
        if person_ids:
            if r.person_id is None:
                raise ValueError(f"row {r.video_id},{r.timestamp} has no person_id (person_ids=True)")
            out.append(str(r.person_id))
        if r.score is not None:
            out.append(_fmt_float(r.score))
        writer.writerow(out)
    _write_text(file_or_path, buf.getvalue())


def _write_text(file_or_path: str | os.PathLike | IO[str], text: str) -> None:
    if hasattr(file_or_path, "write"):
        file_or_path.write(text)  # type: ignore[union-attr]
        return
    atomic_write_text(file_or_path, text)  # type: ignore[arg-type]


def unique_boxes(rows: Iterable[AVARow]) -> list[AVARow]:
    """One row per distinct box of each keyframe (first appearance order), ``action_id=None``.

    AVA CSVs repeat a person's box once per action; this collapses them. A
    box's ``person_id`` is the first one seen, its ``score`` the highest one
    seen (``None`` if none has one). Keyframes compare by value; rows without
    a box are dropped.
    """
    seen: dict[tuple[str, str, tuple[float, float, float, float]], AVARow] = {}
    for r in rows:
        if r.box is None:
            continue
        k = (*r.key, r.box)
        prev = seen.get(k)
        if prev is None:
            seen[k] = AVARow(r.video_id, r.timestamp, r.box, None, r.person_id, r.score)
            continue
        scores = [s for s in (prev.score, r.score) if s is not None]
        person = prev.person_id if prev.person_id is not None else r.person_id
        seen[k] = AVARow(prev.video_id, prev.timestamp, prev.box, None, person, max(scores) if scores else None)
    return list(seen.values())


# ----------------------------------------------------------------------------- JSON


def _read_text(name: str, kind: str) -> str:
    """The UTF-8 text of file ``name``; :class:`AVAFormatError` (line 0) when it cannot be read as ``kind``."""
    try:
        return Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AVAFormatError(f"{name}:0: no such file") from None
    except IsADirectoryError:
        raise AVAFormatError(f"{name}:0: is a directory, not {kind}") from None
    except UnicodeDecodeError:
        raise AVAFormatError(f"{name}:0: not a text (UTF-8) file") from None


def read_boxes_json(path: str | os.PathLike) -> list[AVARow]:
    """Person boxes from the JSON box format (module docstring), one :class:`AVARow` per box.

    ``action_id`` is ``None`` (``actions`` are not read as boxes). A numeric
    ``timestamp`` keeps its JSON spelling (``902`` -> ``"902"``, ``1.50`` ->
    ``"1.50"``). Coordinates outside ``[0, 1]`` are kept (``detect`` clips them);
    ``x2 < x1`` is an error. Raises :class:`AVAFormatError` naming the file and
    the line (of the JSON syntax error) or the entry (``entry N``, 0-based).
    """
    name = os.fspath(path)
    text = _read_text(name, "a JSON file")
    try:
        # Decimal keeps a numeric timestamp's spelling; float(Decimal(s)) == float(s) exactly.
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise AVAFormatError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        if "boxes" not in data:
            raise AVAFormatError(f"{name}:1: a JSON object here needs a 'boxes' list")
        data = data["boxes"]
    if not isinstance(data, list):
        raise AVAFormatError(f"{name}:1: expected a list of boxes")
    rows: list[AVARow] = []
    for i, entry in enumerate(data):
        where = f"{name}: entry {i}"
        if not isinstance(entry, dict):
            raise AVAFormatError(f"{where}: expected an object with video_id, timestamp and box")
        for k in ("video_id", "timestamp", "box"):
            if k not in entry:
                raise AVAFormatError(f"{where}: missing {k!r}")
        video_id = entry["video_id"]
        if not isinstance(video_id, str) or not video_id:
            raise AVAFormatError(f"{where}: video_id must be a non-empty string")
        ts = entry["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, (str, int, Decimal)):
            raise AVAFormatError(f"{where}: timestamp must be a string or a number")
        ts = str(ts)
        _keyframe([video_id, ts], where)
        box = entry["box"]
        if not isinstance(box, list) or len(box) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, Decimal)) for v in box):
            raise AVAFormatError(f"{where}: box must be a list of 4 numbers [x1, y1, x2, y2]")
        box = _parse_box([str(v) for v in box], where, check_range=False)
        person_id = entry.get("person_id")
        if person_id is not None and (isinstance(person_id, bool) or not isinstance(person_id, int)):
            raise AVAFormatError(f"{where}: person_id must be an integer")
        score = entry.get("score")
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, (int, Decimal)):
                raise AVAFormatError(f"{where}: score must be a number")
            score = _parse_float(str(score), "score", where)
        rows.append(AVARow(video_id, ts, box, None, person_id, score))
    return rows


def write_boxes_json(
    file_or_path: str | os.PathLike | IO[str],
    rows: Iterable[AVARow],
    label_map: dict[int, str] | None = None,
    box_scores: dict[tuple[str, str, tuple[float, float, float, float]], float] | None = None,
) -> None:
    """Write rows in the JSON box format: one entry per box, its actions (rows with ``action_id``) nested.

    Rows of one box (same keyframe by value, same ``box`` and ``person_id``)
    are grouped in first-appearance order; each action row becomes
    ``{"action_id", "name" (from ``label_map``, if given), "score"}``. The
    entry's own ``score`` is the person detector's confidence, taken from
    ``box_scores[(video_id, canonical timestamp, box)]`` when given, else the
    row's score for a row without an action. :func:`read_boxes_json` reads the
    boxes back exactly (timestamps and coordinates unchanged).
    """
    entries: dict[tuple, dict] = {}
    for r in rows:
        if r.box is None:
            continue
        k = (*r.key, r.box, r.person_id)
        e = entries.get(k)
        if e is None:
            e = {"video_id": r.video_id, "timestamp": r.timestamp, "box": list(r.box)}
            if r.person_id is not None:
                e["person_id"] = r.person_id
            if box_scores is not None and (r.key + (r.box,)) in box_scores:
                e["score"] = box_scores[r.key + (r.box,)]
            e["actions"] = []
            entries[k] = e
        if r.action_id is None:
            if r.score is not None and "score" not in e:
                e["score"] = r.score
            continue
        action: dict = {"action_id": r.action_id}
        if label_map is not None and r.action_id in label_map:
            action["name"] = label_map[r.action_id]
        if r.score is not None:
            action["score"] = r.score
        e["actions"].append(action)
    # One box per line; json writes floats with repr: exact round trip.
    body = ",\n".join(" " + json.dumps(e) for e in entries.values())
    _write_text(file_or_path, '{"boxes": [\n' + body + ("\n" if body else "") + "]}\n")


# ----------------------------------------------------------------------------- label map, exclusions

_ITEM_RE = re.compile(r"\b(?:item|label)\s*\{(.*?)\}", re.S)
_NAME_RE = re.compile(r"""\b(?:display_)?name\s*:\s*"((?:[^"\\]|\\.)*)\"""")
_ID_RE = re.compile(r"\b(?:label_)?id\s*:\s*(-?\d+)")
_PLAIN_RE = re.compile(r"\s*(\d+)\s*:\s*(.+?)\s*\Z")


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """``{action_id: name}`` from an AVA label map, in file order.

    Reads the ``.pbtxt`` files AVA distributes: ``item { name: "..." id: N }``
    (the 60-class evaluation subset) and ``label { name: "..." label_id: N
    label_type: ... }`` (the 80-class list), on one line or several, and the plain ``N: name`` list
    that ``videoapp/labels/ava_v2.2_eval60.txt`` uses. Raises
    :class:`AVAFormatError` for a file that is neither, an item without a name
    or an id, or a repeated id.
    """
    name = os.fspath(path)
    text = _read_text(name, "a label map")
    out: dict[int, str] = {}

    def add(idx: int, label: str, line: int) -> None:
        if idx in out:
            raise AVAFormatError(f"{name}:{line}: action id {idx} appears twice")
        out[idx] = label

    if "{" in text:
        for m in _ITEM_RE.finditer(text):
            body = m.group(1)
            line = text.count("\n", 0, m.start()) + 1
            nm, im = _NAME_RE.search(body), _ID_RE.search(body)
            if nm is None or im is None:
                raise AVAFormatError(f"{name}:{line}: label map item without {'a name' if nm is None else 'an id'}")
            add(int(im.group(1)), re.sub(r"\\(.)", r"\1", nm.group(1)), line)
        if not out:
            raise AVAFormatError(f"{name}:1: no 'item {{ name: ... id: ... }}' entries")
        return out
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        m = _PLAIN_RE.match(raw)
        if m is None:
            raise AVAFormatError(f"{name}:{line}: expected 'item {{ ... }}' (pbtxt) or 'ID: name', got {raw.strip()[:60]!r}")
        add(int(m.group(1)), m.group(2), line)
    if not out:
        raise AVAFormatError(f"{name}:1: empty label map")
    return out


def write_label_map(path: str | os.PathLike, labels: dict[int, str]) -> Path:
    """Write ``labels`` (``{action id: name}``) as an AVA ``.pbtxt`` label map, atomically.

    One ``item { name: "..." id: N }`` per action in the given order; ``"`` and
    ``\\`` in names are escaped so :func:`read_label_map` returns the names unchanged.
    """
    def quoted(name: str) -> str:
        return name.replace("\\", "\\\\").replace('"', '\\"')

    text = "".join(f'item {{\n  name: "{quoted(name)}"\n  id: {idx}\n}}\n' for idx, name in labels.items())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_text(out, text)
    return out


def read_exclusions(path: str | os.PathLike) -> set[tuple[str, str]]:
    """Excluded keyframes (``ava_val_excluded_timestamps_v2.x.csv``: ``video_id,timestamp`` rows).

    Returns ``{(video_id, canonical_timestamp)}`` (see :func:`keyframe_key`), so
    ``"0902"`` in the file matches ``"902"`` anywhere else. Raises
    :class:`AVAFormatError` for rows that are not 2 columns or whose timestamp
    is not a number.
    """
    name = os.fspath(path)
    out: set[tuple[str, str]] = set()
    for line, f in _numbered_rows(path):
        where = _where(name, line)
        if len(f) != 2:
            raise AVAFormatError(f"{where}: {len(f)} columns; excluded timestamps have 2 (video_id,timestamp)")
        video_id, ts = _keyframe(f, where)
        out.add(keyframe_key(video_id, ts))
    return out
