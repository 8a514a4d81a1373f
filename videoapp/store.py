"""Label store: uploaded clips and their labels in a data directory (SQLite in WAL mode).

Layout of a data directory (``videoapp serve --data-dir DIR``; default
:func:`default_data_dir`)::

    DIR/labels.db            SQLite database (WAL journal: labels.db-wal, labels.db-shm)
    DIR/clips/ab/<sha256>.mp4  uploaded clips, content-addressed (the first two hex digits fan out)
    DIR/exports/<stamp>/     exports (Kinetics CSV + clips, class-per-folder trees)
    DIR/models/              weights fine-tuned on the labels (see videoapp.ui.finetune)
    DIR/tmp/                 uploads being checked (removed when done)

Clips are stored by the SHA-256 of their bytes: the same video uploaded twice is
one clip, and an uploaded file's name is kept only as text (``original_name``),
never used to build a path. A file is accepted only when it decodes
(:class:`~videoapp.data.video.VideoReader` opens it and returns its first and
last frames); anything else raises :class:`UploadRefused` and leaves nothing
behind.

Tables: ``clips`` (one row per stored video, with its metadata), ``labels``
(one row per labelling act: clip, label, optional segment ``start_s``/``end_s``,
``source`` "model" or "person", who, when, model score) and ``label_sets``
(named lists of class names). Labels are never updated in place: saving a label
adds a row, and a clip's *current* label is its newest person label (else its
newest model suggestion), so two browser sessions that label at the same time
both keep their rows and the later commit wins. Every write is one
transaction (``BEGIN IMMEDIATE``; ``synchronous=FULL``), so a process killed at
any instant leaves every committed label in place and the database readable.

Person boxes (AVA-style action detection labels): ``boxes`` holds one row per
box on a keyframe (clip, ``timestamp_s``, ``x1, y1, x2, y2`` normalised to
``[0, 1]`` of the frame, optional ``person_id``, provenance ``source`` --
"person", "hog", "file" or "model:NAME" -- with an optional detector ``score``,
who, when) and ``box_actions`` its action names, one row each (a box holds
several actions; a child table keeps "which boxes have action A" a plain
query and lets SQLite enforce one row per (box, action)). Like labels, boxes
are never edited in place: :meth:`LabelStore.replace_box` adds the new version
(``replaces`` = the old id) and marks the old row deleted in the same
transaction, :meth:`LabelStore.delete_box` only marks a row deleted, so
:meth:`LabelStore.box_history` shows every version. A box and its actions are
written in one transaction, so no box is ever seen without its actions.
:meth:`LabelStore.export_ava` writes them as an AVA ground-truth CSV with its
``.pbtxt`` label map; :meth:`LabelStore.import_ava` reads that back.

Schema versions: 1 = clips, labels, label_sets; 2 adds ``boxes`` and
``box_actions``. Opening an older store adds the new tables (every statement is
``CREATE ... IF NOT EXISTS``); a store written by a newer version is refused.

Exports: Kinetics-style CSV (``label,youtube_id,time_start,time_end,split`` plus
``sha256,start_s,end_s,source,labeled_by,labeled_at``) with the clips cut to their
segments and named ``<youtube_id>_<start:06d>_<end:06d>.mp4`` (what
:func:`videoapp.data.datasets.read_kinetics_csv` looks for), and class-per-folder
trees (``<label>/<clip>.mp4``, what :func:`videoapp.data.datasets.read_folder`
reads). Both import back (:meth:`LabelStore.import_kinetics_csv`,
:meth:`LabelStore.import_folder`); clips exported whole are byte copies, so they
keep their SHA-256 through the round trip.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import operator
import os
import shutil
import sqlite3
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from videoapp.files import atomic_path, first_line

logger = logging.getLogger("videoapp")

DB_NAME = "labels.db"
SOURCES = ("model", "person")
# Where a box came from; "model:<weights name>" is allowed too.
BOX_SOURCES = ("person", "hog", "file")
AVA_CSV_NAME = "boxes.csv"
AVA_LABEL_MAP_NAME = "label_map.pbtxt"
EXTRA_COLUMNS = ("sha256", "start_s", "end_s", "source", "labeled_by", "labeled_at")
MAX_LABEL_LEN = 100
_COPY_CHUNK = 1 << 20
_SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    ext TEXT NOT NULL,
    original_name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    num_frames INTEGER NOT NULL,
    fps REAL NOT NULL,
    duration_s REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    codec TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id INTEGER NOT NULL REFERENCES clips(id),
    label TEXT NOT NULL,
    start_s REAL,
    end_s REAL,
    source TEXT NOT NULL CHECK (source IN ('model', 'person')),
    labeled_by TEXT NOT NULL,
    labeled_at TEXT NOT NULL,
    score REAL,
    model TEXT,
    label_set TEXT
);
CREATE INDEX IF NOT EXISTS labels_clip ON labels (clip_id, source, id);
CREATE TABLE IF NOT EXISTS label_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    source TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS boxes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id INTEGER NOT NULL REFERENCES clips(id),
    timestamp_s REAL NOT NULL CHECK (timestamp_s >= 0),
    x1 REAL NOT NULL,
    y1 REAL NOT NULL,
    x2 REAL NOT NULL,
    y2 REAL NOT NULL,
    person_id INTEGER CHECK (person_id IS NULL OR person_id >= 0),
    source TEXT NOT NULL CHECK (source IN ('person', 'hog', 'file') OR source GLOB 'model:?*'),
    score REAL,
    labeled_by TEXT NOT NULL,
    labeled_at TEXT NOT NULL,
    replaces INTEGER REFERENCES boxes(id),
    deleted_at TEXT,
    deleted_by TEXT,
    CHECK (0 <= x1 AND x1 < x2 AND x2 <= 1 AND 0 <= y1 AND y1 < y2 AND y2 <= 1)
);
CREATE INDEX IF NOT EXISTS boxes_clip ON boxes (clip_id, timestamp_s);
CREATE UNIQUE INDEX IF NOT EXISTS boxes_replaces ON boxes (replaces) WHERE replaces IS NOT NULL;
CREATE TABLE IF NOT EXISTS box_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    box_id INTEGER NOT NULL REFERENCES boxes(id),
    action TEXT NOT NULL,
    UNIQUE (box_id, action)
);
"""


class StoreError(ValueError):
    """A request the store cannot carry out (bad label, unknown clip, unreadable CSV); ``str()`` is one line."""


class UploadRefused(StoreError):
    """An uploaded file that is not stored: not a decodable video, or over the size limit."""


def default_data_dir() -> Path:
    """``$VIDEOAPP_DATA_DIR``, else ``$XDG_DATA_HOME/videoapp``, else ``~/.local/share/videoapp``."""
    env = os.environ.get("VIDEOAPP_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "videoapp"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds (``2025-01-31T12:00:00.000+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def display_name(name: str | None, default: str = "upload") -> str:
    """A file name fit to show and store as text: last path component, no control characters, <= 120 chars."""
    if not name:
        return default
    base = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if base in ("", ".", ".."):
        return default
    return base[:120]


def check_label(label: Any) -> str:
    """A label name as stored: stripped text of 1..100 characters without slashes or control characters.

    Labels become folder names in class-per-folder exports, so they can never be
    ``.``/``..`` or contain a path separator. Raises :class:`StoreError`.
    """
    if not isinstance(label, str):
        raise StoreError(f"a label must be text, got {type(label).__name__}")
    text = label.strip()
    if not text:
        raise StoreError("a label cannot be empty")
    if len(text) > MAX_LABEL_LEN:
        raise StoreError(f"label too long ({len(text)} characters, at most {MAX_LABEL_LEN})")
    if text in (".", "..") or "/" in text or "\\" in text or any(unicodedata.category(c)[0] == "C" for c in text):
        raise StoreError(f"label {text[:40]!r}: no slashes, control characters, '.' or '..'")
    return text


def check_who(who: Any) -> str:
    """The name of whoever acts, as stored (``anonymous`` when empty)."""
    text = "".join(c for c in str(who or "") if unicodedata.category(c)[0] != "C").strip()
    return text[:64] or "anonymous"


def parse_label_list(text: str) -> list[str]:
    """Class names from text: one per line, or comma-separated; duplicates dropped, order kept."""
    parts = []
    for line in str(text or "").splitlines():
        parts.extend(line.split(",") if "," in line else [line])
    out: list[str] = []
    for p in parts:
        if p.strip():
            name = check_label(p)
            if name not in out:
                out.append(name)
    return out


def check_box(box: Any) -> tuple[float, float, float, float]:
    """A box as stored: ``(x1, y1, x2, y2)`` floats in ``[0, 1]`` with ``x1 < x2``, ``y1 < y2``. Raises :class:`StoreError`."""
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4:
        raise StoreError("a box is 4 numbers (x1, y1, x2, y2), normalised to [0, 1] of the frame")
    out = []
    for name, v in zip(("x1", "y1", "x2", "y2"), box):
        if isinstance(v, bool):
            raise StoreError(f"box {name} must be a number, got {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise StoreError(f"box {name} must be a number, got {str(v)[:20]!r}") from None
        if not 0.0 <= x <= 1.0:  # also refuses NaN
            raise StoreError(f"box {name}={x!r} is outside [0, 1] (coordinates are normalised to the frame)")
        out.append(x)
    x1, y1, x2, y2 = out
    if not x1 < x2:
        raise StoreError(f"box x2={x2!r} must be right of x1={x1!r} (a box has a width)")
    if not y1 < y2:
        raise StoreError(f"box y2={y2!r} must be below y1={y1!r} (a box has a height)")
    return (x1, y1, x2, y2)


def check_actions(actions: Any) -> tuple[str, ...]:
    """A box's action names as stored: each through :func:`check_label`, duplicates dropped, order kept."""
    if isinstance(actions, (str, bytes)) or not isinstance(actions, (list, tuple)):
        raise StoreError("actions must be a list of action names")
    out: list[str] = []
    for a in actions:
        name = check_label(a)
        if name not in out:
            out.append(name)
    return tuple(out)


def check_person_id(person_id: Any) -> int | None:
    """``None`` or an integer >= 0 (a person's track id within its clip)."""
    if person_id is None:
        return None
    try:
        value = None if isinstance(person_id, bool) else operator.index(person_id)  # numpy integers too
    except TypeError:
        value = None
    if value is None or value < 0:
        raise StoreError(f"person_id must be an integer >= 0, got {str(person_id)[:20]!r}")
    return int(value)


def check_box_source(source: Any) -> str:
    """A box's provenance: "person", "hog", "file" or "model:<name>"."""
    text = str(source)
    if text in BOX_SOURCES or (text.startswith("model:") and len(text) > 6
                               and not any(unicodedata.category(c)[0] == "C" for c in text)):
        return text
    raise StoreError(f"box source must be person, hog, file or model:NAME, not {text[:40]!r}")


def check_timestamp(timestamp_s: Any, duration_s: float) -> float:
    """A keyframe time in seconds, ``0 <= t <= duration_s`` (kept exactly). Raises :class:`StoreError`."""
    if isinstance(timestamp_s, bool):
        raise StoreError(f"keyframe time must be a number of seconds, got {timestamp_s!r}")
    try:
        t = float(timestamp_s)
    except (TypeError, ValueError):
        raise StoreError(f"keyframe time must be a number of seconds, got {str(timestamp_s)[:20]!r}") from None
    if not math.isfinite(t) or t < 0:
        raise StoreError(f"keyframe time {t!r} is not a time (seconds >= 0)")
    if t > duration_s:
        raise StoreError(f"keyframe time {t!r} s is after the clip's end ({duration_s:.3f} s)")
    return t


def _check_score(score: Any) -> float | None:
    if score is None:
        return None
    try:
        x = float(score)
    except (TypeError, ValueError):
        raise StoreError(f"score must be a number, got {str(score)[:20]!r}") from None
    if not math.isfinite(x):
        raise StoreError("score must be a finite number")
    return x


def _first_line(exc: BaseException, path: Path) -> str:
    """``exc``'s message on one line, with the server path shortened to the file's name."""
    return first_line(exc).replace(os.fspath(path), display_name(path.name))


@dataclass
class ClipRecord:
    """A stored clip. ``path`` is the stored file (content-addressed); ``original_name`` is text only."""

    id: int
    sha256: str
    ext: str
    original_name: str
    size_bytes: int
    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    added_by: str
    added_at: str
    path: Path = field(default=Path(), repr=False)

    @property
    def short_id(self) -> str:
        """The first 16 hex digits of the SHA-256 (the clip's name in exports)."""
        return self.sha256[:16]


@dataclass
class LabelRecord:
    """One labelling act: ``source`` "person" or "model"; ``start_s``/``end_s`` ``None`` = the whole clip."""

    id: int
    clip_id: int
    sha256: str
    label: str
    start_s: float | None
    end_s: float | None
    source: str
    labeled_by: str
    labeled_at: str
    score: float | None = None
    model: str | None = None
    label_set: str | None = None


@dataclass
class LabelSet:
    """A named list of class names (``source``: "person", "import", "model:<weights>")."""

    name: str
    labels: list[str]
    source: str
    created_by: str
    created_at: str


@dataclass
class QueueItem:
    """A clip with its current person label and newest model suggestion (either may be ``None``)."""

    clip: ClipRecord
    person: LabelRecord | None
    model: LabelRecord | None

    @property
    def done(self) -> bool:
        return self.person is not None


@dataclass
class ImportReport:
    """What an import did: clips added (new files), labels added, rows skipped as duplicates,
    rows whose video was not found, videos refused (not decodable), and label names seen."""

    clips_added: int = 0
    labels_added: int = 0
    duplicates: int = 0
    missing: int = 0
    refused: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    boxes_added: int = 0

    def summary(self) -> str:
        parts = [f"{self.labels_added} labels imported", f"{self.clips_added} new clips"]
        if self.boxes_added:
            parts.insert(0, f"{self.boxes_added} boxes imported")
        if self.duplicates:
            parts.append(f"{self.duplicates} already present")
        if self.missing:
            parts.append(f"{self.missing} rows without their video")
        if self.refused:
            parts.append(f"{len(self.refused)} files refused")
        return ", ".join(parts)


@dataclass
class BoxRecord:
    """One version of a person box on a keyframe.

    ``timestamp_s``: the keyframe time in seconds from the clip's start.
    ``box``: ``(x1, y1, x2, y2)`` normalised to ``[0, 1]`` of the frame width
    (x) and height (y), ``x1 < x2``, ``y1 < y2``. ``actions``: action names,
    in the order given (no duplicates; may be empty for a bare person box).
    ``source``: "person", "hog", "file" or "model:<name>"; ``score``: the
    detector's confidence, if any. ``replaces``: the id of the version this
    one replaced; ``replaced_by``: the version that replaced this one;
    ``deleted_at``/``deleted_by``: set once the box was deleted or replaced.
    """

    id: int
    clip_id: int
    sha256: str
    timestamp_s: float
    box: tuple[float, float, float, float]
    actions: tuple[str, ...]
    person_id: int | None
    source: str
    score: float | None
    labeled_by: str
    labeled_at: str
    replaces: int | None = None
    replaced_by: int | None = None
    deleted_at: str | None = None
    deleted_by: str | None = None

    @property
    def current(self) -> bool:
        """``True`` while the box is neither deleted nor replaced."""
        return self.deleted_at is None


_KEEP: Any = object()  # replace_box: "keep the old value" (None is a value: no person id, no score)


def _clip_from_row(row: sqlite3.Row, clips_dir: Path) -> ClipRecord:
    d = dict(row)
    rec = ClipRecord(**{k: d[k] for k in ClipRecord.__dataclass_fields__ if k != "path"})
    rec.path = clips_dir / rec.sha256[:2] / f"{rec.sha256}{rec.ext}"
    return rec


def _label_from_row(row: sqlite3.Row) -> LabelRecord:
    d = dict(row)
    return LabelRecord(**{k: d[k] for k in LabelRecord.__dataclass_fields__})


def _fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


class LabelStore:
    """Clips, labels and label sets in ``data_dir`` (see the module docstring).

    Safe to share between threads and processes: every call opens its own
    SQLite connection (``busy_timeout`` 30 s), and every write is one
    transaction. ``max_clip_bytes``: uploads larger than this are refused.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, max_clip_bytes: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self.max_clip_bytes = max_clip_bytes
        for sub in ("clips", "exports", "models", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            with self._write(conn):
                statements = [stmt for stmt in _SCHEMA.strip().split(";") if stmt.strip()]
                conn.execute(statements[0])  # meta, to read the version before touching anything else
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and int(row[0]) > _SCHEMA_VERSION:
                    raise StoreError(f"{DB_NAME} was written by a newer videoapp (schema {row[0]}, this one reads "
                                     f"up to {_SCHEMA_VERSION}); upgrade videoapp")
                for stmt in statements[1:]:
                    conn.execute(stmt)
                # Older stores gained the new tables above; record that they now have this version's schema.
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                             " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(_SCHEMA_VERSION),))

    # ------------------------------------------------------------------ paths
    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def clips_dir(self) -> Path:
        return self.data_dir / "clips"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def _clean_tmp(self, older_than_s: float = 3600.0) -> None:
        # Leftovers of uploads interrupted by a crash (recent ones may belong to a live process).
        cutoff = time.time() - older_than_s
        for p in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()

    # ------------------------------------------------------------------ connections
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    @staticmethod
    @contextlib.contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` for a sound database)."""
        with self._connect() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    # ------------------------------------------------------------------ clips
    def add_clip(self, src: str | os.PathLike, original_name: str | None = None,
                 added_by: str | None = None) -> tuple[ClipRecord, bool]:
        """Copy the video at ``src`` into the store; returns ``(clip, created)``.

        ``created`` is ``False`` when the same bytes were stored before (that
        clip is returned). Raises :class:`UploadRefused` (nothing stored) for a
        file over the size limit or one that does not decode.
        """
        from videoapp.data.video import VIDEO_EXTENSIONS, VideoError, VideoReader

        name = display_name(original_name or Path(src).name)
        suffix = os.path.splitext(name)[1].lower()
        # Extensions we keep for stored clips (from the uploaded name, lower-cased); anything else is stored as .video.
        ext = suffix if suffix in VIDEO_EXTENSIONS else ".video"
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}{ext}"
        try:
            digest, size = self._copy_hashing(Path(src), tmp, name)
            try:
                with VideoReader(tmp) as reader:
                    info = reader.info
                    reader.get_frames([0, info.num_frames - 1])
            except VideoError as exc:
                raise UploadRefused(f"{name}: not a video this app can decode ({exc.problem})") from None
            except Exception as exc:  # a decoder failing in a way VideoReader did not anticipate
                reason = first_line(exc)[:200]
                raise UploadRefused(f"{name}: not a video this app can decode ({reason})") from None
            existing = self.get_clip(digest)
            if existing is not None:
                return existing, False
            final = self.clips_dir / digest[:2] / f"{digest}{ext}"
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists():
                os.replace(tmp, final)
            with self._connect() as conn, self._write(conn):
                cur = conn.execute(
                    "INSERT OR IGNORE INTO clips (sha256, ext, original_name, size_bytes, num_frames, fps, duration_s,"
                    " width, height, codec, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (digest, ext, name, size, int(info.num_frames), float(info.fps), float(info.duration_s),
                     int(info.width), int(info.height), str(info.codec), check_who(added_by), now_iso()))
                created = cur.rowcount == 1
            clip = self.get_clip(digest)
            assert clip is not None
            return clip, created
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _copy_hashing(self, src: Path, dst: Path, name: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        limit = self.max_clip_bytes
        try:
            with open(src, "rb") as fin, open(dst, "wb") as fout:
                while True:
                    chunk = fin.read(_COPY_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise UploadRefused(f"{name}: larger than the upload limit of {limit / 2**20:g} MB")
                    h.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
        except IsADirectoryError:
            raise UploadRefused(f"{name}: is a folder, not a video file") from None
        except FileNotFoundError:
            raise UploadRefused(f"{name}: the uploaded file is gone (upload it again)") from None
        except PermissionError:
            raise UploadRefused(f"{name}: cannot read the file (permission denied)") from None
        if size == 0:
            raise UploadRefused(f"{name}: empty file (0 bytes)")
        return h.hexdigest(), size

    def get_clip(self, key: int | str) -> ClipRecord | None:
        """The clip with this row id, full SHA-256, or unique SHA-256 prefix (>= 8 hex digits); else ``None``."""
        with self._connect() as conn:
            if isinstance(key, int):
                row = conn.execute("SELECT * FROM clips WHERE id = ?", (key,)).fetchone()
            else:
                key = str(key).lower()
                if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
                    return None
                rows = conn.execute("SELECT * FROM clips WHERE sha256 >= ? AND sha256 < ? LIMIT 2",
                                    (key, key + "g")).fetchall()
                row = rows[0] if len(rows) == 1 else None
        return _clip_from_row(row, self.clips_dir) if row is not None else None

    def require_clip(self, key: int | str) -> ClipRecord:
        clip = self.get_clip(key)
        if clip is None:
            raise StoreError(f"no clip {key!s:.20} in the store")
        return clip

    def clips(self) -> list[ClipRecord]:
        """All clips, oldest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM clips ORDER BY id").fetchall()
        return [_clip_from_row(r, self.clips_dir) for r in rows]

    # ------------------------------------------------------------------ labels
    def add_label(self, clip: ClipRecord | int | str, label: str, *, source: str = "person",
                  labeled_by: str | None = None, start_s: float | None = None, end_s: float | None = None,
                  score: float | None = None, model: str | None = None, label_set: str | None = None,
                  labeled_at: str | None = None) -> LabelRecord:
        """Record one label for ``clip`` (one transaction) and return it.

        ``start_s``/``end_s``: the segment in seconds (``None``: from the start /
        to the end); they are clamped to the clip and must leave a non-empty span.
        """
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        label = check_label(label)
        if source not in SOURCES:
            raise StoreError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        start_s, end_s = self._check_segment(rec, start_s, end_s)
        row = (rec.id, label, start_s, end_s, source, check_who(labeled_by), labeled_at or now_iso(),
               None if score is None else float(score), model, label_set)
        with self._connect() as conn, self._write(conn):
            cur = conn.execute(
                "INSERT INTO labels (clip_id, label, start_s, end_s, source, labeled_by, labeled_at, score, model,"
                " label_set) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            label_id = int(cur.lastrowid)
        return LabelRecord(label_id, rec.id, rec.sha256, label, start_s, end_s, source, row[5], row[6],
                           row[7], model, label_set)

    @staticmethod
    def _check_segment(clip: ClipRecord, start_s: float | None, end_s: float | None) -> tuple[float | None, float | None]:
        def num(v: Any, what: str) -> float | None:
            if v is None or v == "":
                return None
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise StoreError(f"{what} must be a number of seconds, got {v!r}") from None
            if not math.isfinite(x):
                raise StoreError(f"{what} must be a finite number of seconds")
            return x

        s, e = num(start_s, "start"), num(end_s, "end")
        dur = clip.duration_s
        if s is not None:
            s = min(max(s, 0.0), dur)
            if s <= 1e-3:
                s = None
        if e is not None:
            e = min(max(e, 0.0), dur)
            if e >= dur - 1e-3:
                e = None
        lo, hi = (s or 0.0), (dur if e is None else e)
        if hi - lo <= 0:
            raise StoreError(f"the segment {lo:.2f}-{hi:.2f} s is empty (the clip is {dur:.2f} s long)")
        return (None if s is None else round(s, 3)), (None if e is None else round(e, 3))

    def labels_of(self, clip: ClipRecord | int | str) -> list[LabelRecord]:
        """Every label row of ``clip``, newest first."""
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT labels.*, clips.sha256 FROM labels JOIN clips ON clips.id = labels.clip_id"
                " WHERE clip_id = ? ORDER BY labels.id DESC", (rec.id,)).fetchall()
        return [_label_from_row(r) for r in rows]

    def all_labels(self) -> list[LabelRecord]:
        """Every label row, oldest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT labels.*, clips.sha256 FROM labels JOIN clips ON clips.id = labels.clip_id"
                                " ORDER BY labels.id").fetchall()
        return [_label_from_row(r) for r in rows]

    def _latest(self, source: str) -> dict[int, LabelRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT labels.*, clips.sha256 FROM labels JOIN clips ON clips.id = labels.clip_id"
                " WHERE labels.id IN (SELECT MAX(id) FROM labels WHERE source = ? GROUP BY clip_id)",
                (source,)).fetchall()
        return {r["clip_id"]: _label_from_row(r) for r in rows}

    def current_label(self, clip: ClipRecord | int | str, include_model: bool = True) -> LabelRecord | None:
        """The newest person label of ``clip``, else (with ``include_model``) its newest model suggestion."""
        rows = self.labels_of(clip)
        for r in rows:
            if r.source == "person":
                return r
        if include_model:
            for r in rows:
                if r.source == "model":
                    return r
        return None

    def model_suggestion(self, clip: ClipRecord | int | str, model: str | None = None) -> LabelRecord | None:
        """The newest model label of ``clip`` (made by ``model`` when given)."""
        for r in self.labels_of(clip):
            if r.source == "model" and (model is None or r.model == model):
                return r
        return None

    def current_labels(self, include_model: bool = False) -> dict[int, LabelRecord]:
        """``{clip id: current label}`` for every labelled clip (see :meth:`current_label`)."""
        out = self._latest("person")
        if include_model:
            for cid, rec in self._latest("model").items():
                out.setdefault(cid, rec)
        return out

    def queue(self) -> list[QueueItem]:
        """Every clip (oldest first) with its current person label and newest model suggestion."""
        person, model = self._latest("person"), self._latest("model")
        return [QueueItem(c, person.get(c.id), model.get(c.id)) for c in self.clips()]

    def counts(self) -> dict[str, Any]:
        """``{"clips", "labeled", "per_label": {label: {"person": n, "model": n}}, "per_source": {...}}``.

        Counted over each clip's current labels: its newest person label, and
        its newest model suggestion for clips no person has labelled yet.
        """
        person, model = self._latest("person"), self._latest("model")
        per_label: dict[str, dict[str, int]] = {}
        for rec in person.values():
            per_label.setdefault(rec.label, {"person": 0, "model": 0})["person"] += 1
        model_only = {cid: r for cid, r in model.items() if cid not in person}
        for rec in model_only.values():
            per_label.setdefault(rec.label, {"person": 0, "model": 0})["model"] += 1
        with self._connect() as conn:
            n_clips = int(conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0])
            rows = conn.execute("SELECT source, COUNT(*) FROM labels GROUP BY source").fetchall()
        return {
            "clips": n_clips,
            "labeled": len(person),
            "suggested_only": len(model_only),
            "per_label": dict(sorted(per_label.items())),
            "per_source": {"person": len(person), "model": len(model_only)},
            "rows_per_source": {r[0]: int(r[1]) for r in rows},
        }

    # ------------------------------------------------------------------ label sets
    def save_label_set(self, name: str, labels: Sequence[str], *, source: str = "person",
                       created_by: str | None = None) -> LabelSet:
        """Create or replace the label set ``name`` (one transaction)."""
        name = check_label(name)
        clean: list[str] = []
        for lab in labels:
            lab = check_label(lab)
            if lab not in clean:
                clean.append(lab)
        if not clean:
            raise StoreError(f"label set {name!r} needs at least one label")
        rec = LabelSet(name, clean, str(source), check_who(created_by), now_iso())
        with self._connect() as conn, self._write(conn):
            conn.execute(
                "INSERT INTO label_sets (name, labels, source, created_by, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, source = excluded.source,"
                " created_by = excluded.created_by, created_at = excluded.created_at",
                (rec.name, json.dumps(rec.labels), rec.source, rec.created_by, rec.created_at))
        return rec

    def label_sets(self) -> list[LabelSet]:
        """All label sets, by name."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM label_sets ORDER BY name").fetchall()
        return [LabelSet(r["name"], json.loads(r["labels"]), r["source"], r["created_by"], r["created_at"])
                for r in rows]

    def get_label_set(self, name: str) -> LabelSet | None:
        for s in self.label_sets():
            if s.name == name:
                return s
        return None

    # ------------------------------------------------------------------ boxes
    def _query_boxes(self, where: str, params: Sequence[Any]) -> list[BoxRecord]:
        # ``where`` may name only columns of ``boxes``: it filters the actions' query too.
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT boxes.*, clips.sha256, (SELECT n.id FROM boxes AS n WHERE n.replaces = boxes.id) AS replaced_by"
                f" FROM boxes JOIN clips ON clips.id = boxes.clip_id WHERE {where}"
                " ORDER BY boxes.clip_id, boxes.timestamp_s, boxes.id", tuple(params)).fetchall()
            acts = conn.execute(f"SELECT box_id, action FROM box_actions WHERE box_id IN"
                                f" (SELECT boxes.id FROM boxes WHERE {where}) ORDER BY id", tuple(params)).fetchall()
        actions: dict[int, list[str]] = {}
        for a in acts:
            actions.setdefault(int(a["box_id"]), []).append(a["action"])
        return [BoxRecord(int(r["id"]), int(r["clip_id"]), r["sha256"], float(r["timestamp_s"]),
                          (r["x1"], r["y1"], r["x2"], r["y2"]), tuple(actions.get(int(r["id"]), ())), r["person_id"],
                          r["source"], r["score"], r["labeled_by"], r["labeled_at"], r["replaces"], r["replaced_by"],
                          r["deleted_at"], r["deleted_by"]) for r in rows]

    def _insert_box(self, conn: sqlite3.Connection, clip: ClipRecord, timestamp_s: float,
                    box: tuple[float, float, float, float], actions: tuple[str, ...], person_id: int | None,
                    source: str, score: float | None, who: str, at: str, replaces: int | None) -> int:
        cur = conn.execute(
            "INSERT INTO boxes (clip_id, timestamp_s, x1, y1, x2, y2, person_id, source, score, labeled_by,"
            " labeled_at, replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (clip.id, timestamp_s, *box, person_id, source, score, who, at, replaces))
        box_id = int(cur.lastrowid)
        conn.executemany("INSERT INTO box_actions (box_id, action) VALUES (?, ?)", [(box_id, a) for a in actions])
        return box_id

    def add_box(self, clip: ClipRecord | int | str, timestamp_s: float, box: Sequence[float],
                actions: Sequence[str] = (), *, person_id: int | None = None, source: str = "person",
                score: float | None = None, labeled_by: str | None = None) -> BoxRecord:
        """Store a person box on the keyframe at ``timestamp_s`` seconds of ``clip`` (one transaction).

        ``box``: ``(x1, y1, x2, y2)`` normalised to ``[0, 1]`` of the frame's
        width (x) and height (y), with ``x1 < x2`` and ``y1 < y2``; kept exactly
        (no rounding). ``actions``: action names (label rules of
        :func:`check_label`; duplicates dropped, order kept; may be empty).
        ``person_id``: an integer >= 0 or ``None``; ``source``: "person",
        "hog", "file" or "model:<name>"; ``score``: the detector's confidence.
        Raises :class:`StoreError` (one line) for anything invalid; nothing is
        stored then.
        """
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        t = check_timestamp(timestamp_s, rec.duration_s)
        coords, names = check_box(box), check_actions(actions)
        pid, src, sc = check_person_id(person_id), check_box_source(source), _check_score(score)
        who, at = check_who(labeled_by), now_iso()
        with self._connect() as conn, self._write(conn):
            box_id = self._insert_box(conn, rec, t, coords, names, pid, src, sc, who, at, None)
        return BoxRecord(box_id, rec.id, rec.sha256, t, coords, names, pid, src, sc, who, at)

    def get_box(self, box_id: int) -> BoxRecord | None:
        """The box version with this id (current or not), else ``None``."""
        found = self._query_boxes("boxes.id = ?", (int(box_id),))
        return found[0] if found else None

    def boxes_of(self, clip: ClipRecord | int | str, timestamp_s: float | None = None, *,
                 include_deleted: bool = False) -> list[BoxRecord]:
        """The current boxes of ``clip`` (by keyframe time, then oldest first).

        ``timestamp_s``: only that keyframe (times equal to the microsecond, as
        AVA compares keyframes). ``include_deleted``: also deleted and replaced
        versions.
        """
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        where, params = ["boxes.clip_id = ?"], [rec.id]
        if timestamp_s is not None:
            t = check_timestamp(timestamp_s, math.inf)
            where.append("boxes.timestamp_s BETWEEN ? AND ?")  # BETWEEN, not abs(): the index serves it
            params += [t - 5e-7, t + 5e-7]
        if not include_deleted:
            where.append("boxes.deleted_at IS NULL")
        return self._query_boxes(" AND ".join(where), params)

    def all_boxes(self, *, include_deleted: bool = False) -> list[BoxRecord]:
        """Every current box of every clip (by clip, keyframe time, age); ``include_deleted``: every version."""
        return self._query_boxes("1" if include_deleted else "boxes.deleted_at IS NULL", ())

    def keyframes_of(self, clip: ClipRecord | int | str) -> list[float]:
        """The keyframe times (seconds, ascending) of ``clip`` that hold at least one current box."""
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT timestamp_s FROM boxes WHERE clip_id = ? AND deleted_at IS NULL"
                                " ORDER BY timestamp_s", (rec.id,)).fetchall()
        return [float(r[0]) for r in rows]

    def _retire(self, conn: sqlite3.Connection, box_id: int, who: str, at: str, *, idempotent: bool) -> bool:
        """Mark ``box_id`` deleted inside the caller's transaction; ``False`` if it already was (``idempotent``)."""
        row = conn.execute("SELECT deleted_at, deleted_by, (SELECT n.id FROM boxes AS n WHERE n.replaces = boxes.id)"
                           " FROM boxes WHERE id = ?", (box_id,)).fetchone()
        if row is None:
            raise StoreError(f"no box {box_id} in the store")
        if row[0] is not None:
            if row[2] is not None:
                raise StoreError(f"box {box_id} was already replaced by box {row[2]} ({row[1]}); reload the keyframe")
            if idempotent:
                return False
            raise StoreError(f"box {box_id} was already deleted ({row[1]}); reload the keyframe")
        conn.execute("UPDATE boxes SET deleted_at = ?, deleted_by = ? WHERE id = ?", (at, who, box_id))
        return True

    def replace_box(self, box_id: int, box: Sequence[float] = _KEEP, actions: Sequence[str] = _KEEP, *,
                    timestamp_s: float = _KEEP, person_id: int | None = _KEEP, source: str = "person",
                    score: float | None = None, labeled_by: str | None = None) -> BoxRecord:
        """Replace the current box ``box_id`` by a new version and return it (one transaction).

        Arguments left out keep the old version's values (``box``, ``actions``,
        ``timestamp_s``, ``person_id``); ``source``/``score``/``labeled_by``
        describe the new version (a person adjusting a HOG box makes it
        "person"). The old row stays, marked deleted, with the new one's
        ``replaces`` pointing at it (see :meth:`box_history`). Raises
        :class:`StoreError` when ``box_id`` is unknown, or was deleted or
        replaced meanwhile (two sessions editing the same box: the first wins,
        the second is told to reload).
        """
        old = self.get_box(box_id)
        if old is None:
            raise StoreError(f"no box {box_id} in the store")
        clip = self.require_clip(old.clip_id)
        t = old.timestamp_s if timestamp_s is _KEEP else check_timestamp(timestamp_s, clip.duration_s)
        coords = old.box if box is _KEEP else check_box(box)
        names = old.actions if actions is _KEEP else check_actions(actions)
        pid = old.person_id if person_id is _KEEP else check_person_id(person_id)
        src, sc = check_box_source(source), _check_score(score)
        who, at = check_who(labeled_by), now_iso()
        with self._connect() as conn, self._write(conn):
            self._retire(conn, old.id, who, at, idempotent=False)
            new_id = self._insert_box(conn, clip, t, coords, names, pid, src, sc, who, at, old.id)
        return BoxRecord(new_id, clip.id, clip.sha256, t, coords, names, pid, src, sc, who, at, replaces=old.id)

    def delete_box(self, box_id: int, *, labeled_by: str | None = None) -> BoxRecord:
        """Delete the current box ``box_id`` (its row stays, marked deleted) and return that version.

        Deleting a box that is already deleted changes nothing; one that was
        replaced meanwhile raises :class:`StoreError` (delete the new version).
        """
        with self._connect() as conn, self._write(conn):
            self._retire(conn, int(box_id), check_who(labeled_by), now_iso(), idempotent=True)
        rec = self.get_box(box_id)
        assert rec is not None
        return rec

    def box_history(self, box_id: int) -> list[BoxRecord]:
        """Every version of the box ``box_id`` belongs to, oldest first (follows ``replaces`` both ways)."""
        rec = self.get_box(box_id)
        if rec is None:
            raise StoreError(f"no box {box_id} in the store")
        chain = [rec]
        while chain[0].replaces is not None:
            chain.insert(0, self.get_box(chain[0].replaces))  # type: ignore[arg-type]
        while chain[-1].replaced_by is not None:
            chain.append(self.get_box(chain[-1].replaced_by))  # type: ignore[arg-type]
        return chain

    def resolve_label_map(self, label_map: Mapping[int, str] | str | os.PathLike | None = None,
                          names: Sequence[str] = ()) -> dict[int, str]:
        """``{action id: name}`` for AVA export/import.

        ``label_map``: a mapping; a path (``os.PathLike``) to a ``.pbtxt`` or
        ``N: name`` label map; a string naming one of the store's label sets
        (ids 1..N in the set's order); ``"ava"`` (when no label set has that
        name) for the 60 AVA v2.2 actions with their official ids; ``None``:
        the AVA list when every name in ``names`` is an AVA action, else ids
        1..N over ``sorted(names)``. Raises :class:`StoreError`.
        """
        from videoapp.data.ava import AVAFormatError, read_label_map
        from videoapp.labels import load_ava_labels

        if label_map is None:
            ava = load_ava_labels()
            if set(names) <= set(ava.values()):
                return dict(ava)
            return {i + 1: n for i, n in enumerate(sorted(set(names)))}
        if isinstance(label_map, os.PathLike):
            try:
                out = read_label_map(label_map)
            except AVAFormatError as exc:
                raise StoreError(_first_line(exc, Path(label_map))) from None
        elif isinstance(label_map, str):
            found = self.get_label_set(label_map)
            if found is not None:
                out = {i + 1: n for i, n in enumerate(found.labels)}
            elif label_map == "ava":
                out = dict(load_ava_labels())
            else:
                raise StoreError(f"no label set {label_map[:40]!r} in the store")
        elif isinstance(label_map, Mapping):
            out = {}
            for k, v in label_map.items():
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise StoreError(f"label map id {k!r} is not an AVA action id (an integer >= 1)")
                out[k] = check_label(v)
        else:
            raise StoreError(f"a label map is a mapping, a label set name or a path, not {type(label_map).__name__}")
        if len(set(out.values())) != len(out):
            dup = sorted(n for n in set(out.values()) if list(out.values()).count(n) > 1)
            raise StoreError(f"label map names {', '.join(dup[:5])} more than once")
        return out

    def export_ava(self, out_dir: str | os.PathLike | None = None,
                   label_map: Mapping[int, str] | str | os.PathLike | None = None, *, include_model: bool = False,
                   with_clips: bool = False) -> Path:
        """Write the current boxes as an AVA ground-truth CSV and its label map; returns the CSV path.

        ``out_dir/boxes.csv`` (default ``out_dir``: a fresh folder under
        ``exports/``): header-less rows ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id``,
        one per (box, action), boxes by clip, keyframe and age, actions in the
        order they were given; ``video_id`` is the clip's short id (16 hex
        digits of its SHA-256), ``timestamp`` the keyframe seconds as AVA
        writes them (``0902``, ``1.5``), coordinates as ``repr`` (exact).
        ``out_dir/label_map.pbtxt``: ``label_map`` (see
        :meth:`resolve_label_map`) as ``item { name: ".." id: N }``. Boxes
        without actions are left out (a ground-truth row needs an action);
        boxes without a ``person_id`` get, per clip, ids after the largest one
        used (one per box). ``include_model``: also boxes whose source is
        "model:...". ``with_clips``: also ``out_dir/videos/<video_id>.<ext>``
        (byte copies), the layout AVA training reads. Raises
        :class:`StoreError` for an action that the label map lacks.
        """
        from videoapp.data.ava import AVARow, format_timestamp, write_ava_csv
        from videoapp.data.ava import write_label_map

        boxes = [b for b in self.all_boxes() if b.actions and (include_model or not b.source.startswith("model:"))]
        labels = self.resolve_label_map(label_map, sorted({a for b in boxes for a in b.actions}))
        ids = {name: idx for idx, name in labels.items()}
        unknown = sorted({a for b in boxes for a in b.actions if a not in ids})
        if unknown:
            raise StoreError(f"actions not in the label map: {', '.join(unknown[:5])}"
                             + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        bad = [n for n in labels.values() if '"' in n]
        if bad:  # the .pbtxt writer does not escape quotes
            raise StoreError(f"action name {bad[0][:40]!r}: a double quote cannot go into a .pbtxt label map")
        next_person: dict[int, int] = {}
        for b in boxes:
            if b.person_id is not None:
                next_person[b.clip_id] = max(next_person.get(b.clip_id, 0), b.person_id + 1)
        rows = []
        for b in boxes:
            pid = b.person_id
            if pid is None:
                pid = next_person.get(b.clip_id, 0)
                next_person[b.clip_id] = pid + 1
            ts = format_timestamp(b.timestamp_s)
            rows += [AVARow(b.sha256[:16], ts, b.box, ids[a], pid) for a in b.actions]
        out = Path(out_dir) if out_dir is not None else self.new_export_dir("ava")
        out.mkdir(parents=True, exist_ok=True)
        if with_clips:
            for clip_id in sorted({b.clip_id for b in boxes}):
                clip = self.require_clip(clip_id)
                self.write_segment(clip, None, None, out / "videos" / clip.short_id)
        write_label_map(out / AVA_LABEL_MAP_NAME, labels)
        csv_path = out / AVA_CSV_NAME
        write_ava_csv(csv_path, rows, person_ids=True)
        return csv_path

    def import_ava(self, csv_path: str | os.PathLike,
                   label_map: Mapping[int, str] | str | os.PathLike | None = None, *,
                   videos: Mapping[str, ClipRecord | int | str] | None = None, source: str = "file",
                   labeled_by: str | None = None) -> ImportReport:
        """Import boxes from an AVA ground-truth CSV (7 or 8 columns; 2-column rows are skipped).

        The rows of one box (same keyframe by value, same coordinates and
        ``person_id``) become one box holding their actions, named through
        ``label_map`` (see :meth:`resolve_label_map`; default: the
        ``label_map.pbtxt`` beside the CSV, else the AVA list). A row's clip is
        ``videos[video_id]`` (a clip, its id or SHA-256) when given, else the
        stored clip whose SHA-256 starts with ``video_id`` (what
        :meth:`export_ava` writes); boxes of other videos are counted in
        ``missing``. A box already stored (same keyframe, coordinates,
        ``person_id`` and actions) is counted in ``duplicates``, so importing a
        file twice adds nothing. Raises :class:`StoreError` (one line, naming
        the file) for a malformed file, an id the label map lacks, or a box the
        store refuses (e.g. a keyframe after the clip's end).
        """
        from videoapp.data.ava import AVAFormatError, canonical_timestamp, read_ava_csv
        from videoapp.labels import load_ava_labels

        csv_path = Path(csv_path)
        name = display_name(csv_path.name)
        try:
            rows = read_ava_csv(csv_path, "groundtruth")
        except AVAFormatError as exc:
            raise StoreError(_first_line(exc, csv_path)) from None
        if label_map is None and (csv_path.parent / AVA_LABEL_MAP_NAME).is_file():
            label_map = csv_path.parent / AVA_LABEL_MAP_NAME
        labels = dict(load_ava_labels()) if label_map is None else self.resolve_label_map(label_map)
        grouped: dict[tuple, list[str]] = {}
        stamps: dict[tuple, str] = {}
        for r in rows:
            if r.box is None:
                continue
            if r.action_id not in labels:
                raise StoreError(f"{name}: action id {r.action_id} ({r.video_id} at {r.timestamp}) is not in the label map")
            key = (r.video_id, canonical_timestamp(r.timestamp), r.box, r.person_id)
            stamps.setdefault(key, r.timestamp)
            acts = grouped.setdefault(key, [])
            if labels[r.action_id] not in acts:
                acts.append(labels[r.action_id])
        src, who = check_box_source(source), check_who(labeled_by)
        report = ImportReport()
        clips: dict[str, ClipRecord | None] = {}
        for key, acts in grouped.items():
            video_id, _, box, person_id = key
            if video_id not in clips:
                ref = (videos or {}).get(video_id, video_id)
                clips[video_id] = ref if isinstance(ref, ClipRecord) else self.get_clip(ref)
            clip = clips[video_id]
            if clip is None:
                report.missing += 1
                continue
            ts = float(stamps[key])
            same = [b for b in self.boxes_of(clip, ts)
                    if b.box == box and b.person_id == person_id and set(b.actions) == set(acts)]
            if same:
                report.duplicates += 1
                continue
            try:
                self.add_box(clip, ts, box, acts, person_id=person_id, source=src, labeled_by=who)
            except StoreError as exc:
                raise StoreError(f"{name}: {video_id} at {stamps[key]}: {exc}") from None
            report.boxes_added += 1
            report.labels += [a for a in acts if a not in report.labels]
        return report

    # ------------------------------------------------------------------ export
    def _export_rows(self, include_model: bool) -> list[tuple[ClipRecord, LabelRecord]]:
        current = self.current_labels(include_model=include_model)
        return [(c, current[c.id]) for c in self.clips() if c.id in current]

    def new_export_dir(self, kind: str) -> Path:
        """A fresh folder ``exports/<UTC stamp>-<kind>-<random>``."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.exports_dir / f"{stamp}-{kind}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def write_segment(self, clip: ClipRecord, start_s: float | None, end_s: float | None, dst: Path) -> Path:
        """The clip's segment as a video file at ``dst`` (its extension may change: see below).

        A whole clip with a known extension is a byte copy (same SHA-256);
        otherwise the frames of ``[start_s, end_s)`` are decoded and encoded
        as H.264 MP4 (PyAV, even frame size), and ``dst`` gets ``.mp4``.
        """
        from videoapp.data.video import VIDEO_EXTENSIONS, VideoReader

        dst.parent.mkdir(parents=True, exist_ok=True)
        if start_s is None and end_s is None and clip.ext in VIDEO_EXTENSIONS:
            out = dst.with_suffix(clip.ext)
            shutil.copyfile(clip.path, out)
            return out
        from videoapp.data.synthetic import write_video

        out = dst.with_suffix(".mp4")
        with VideoReader(clip.path) as reader:
            info = reader.info
            first = 0 if start_s is None else int(round(start_s * info.fps))
            stop = info.num_frames if end_s is None else int(round(end_s * info.fps))
            first = min(max(first, 0), info.num_frames - 1)
            stop = min(max(stop, first + 1), info.num_frames)
            h, w = info.height - info.height % 2, info.width - info.width % 2
            frames = (f[:h, :w] for _, f in reader.iter_frames(first, stop))
            with atomic_path(out, keep_suffix=True) as tmp:
                write_video(tmp, frames, fps=info.fps)
        return out

    def export_kinetics(self, out_dir: str | os.PathLike | None = None, *, include_model: bool = False,
                        with_clips: bool = True, split: str = "train") -> Path:
        """Write ``labels.csv`` (Kinetics columns + provenance) and, ``with_clips``, ``videos/<stem>.mp4``.

        Returns the CSV path. ``youtube_id`` is the clip's short id;
        ``time_start``/``time_end`` are whole seconds around the segment (as in
        Kinetics) and ``start_s``/``end_s`` the exact segment. Each video is cut
        to its segment, so it starts at the segment's start.
        """
        from videoapp.data.datasets import KINETICS_FIELDS, kinetics_stem

        out = Path(out_dir) if out_dir is not None else self.new_export_dir("kinetics")
        out.mkdir(parents=True, exist_ok=True)
        rows = self._export_rows(include_model)
        csv_path = out / "labels.csv"
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(KINETICS_FIELDS + EXTRA_COLUMNS)
            for clip, lab in rows:
                s = lab.start_s or 0.0
                e = clip.duration_s if lab.end_s is None else lab.end_s
                t0, t1 = int(math.floor(s)), int(math.ceil(e))
                if with_clips:
                    self.write_segment(clip, lab.start_s, lab.end_s,
                                       out / "videos" / kinetics_stem(clip.short_id, t0, t1))
                w.writerow([lab.label, clip.short_id, t0, t1, split, clip.sha256, _fmt_seconds(lab.start_s),
                            _fmt_seconds(lab.end_s), lab.source, lab.labeled_by, lab.labeled_at])
        return csv_path

    def export_folder(self, out_dir: str | os.PathLike | None = None, *, include_model: bool = False) -> Path:
        """Write a class-per-folder tree ``<label>/<clip short id>.mp4`` (clips cut to their segments)."""
        out = Path(out_dir) if out_dir is not None else self.new_export_dir("folders")
        out.mkdir(parents=True, exist_ok=True)
        for clip, lab in self._export_rows(include_model):
            folder = out / check_label(lab.label)
            if folder.resolve().parent != out.resolve():  # belt and braces: labels never leave the tree
                raise StoreError(f"label {lab.label!r} cannot be a folder name")
            self.write_segment(clip, lab.start_s, lab.end_s, folder / clip.short_id)
        return out

    # ------------------------------------------------------------------ import
    def _has_label(self, clip: ClipRecord, label: str, source: str, labeled_by: str, labeled_at: str | None,
                   start_s: float | None, end_s: float | None) -> bool:
        for r in self.labels_of(clip):
            if (r.label, r.source, r.labeled_by, r.start_s, r.end_s) == (label, source, labeled_by, start_s, end_s) \
                    and (labeled_at is None or r.labeled_at == labeled_at):
                return True
        return False

    def _import_label(self, report: ImportReport, clip: ClipRecord, label: str, *, source: str, labeled_by: str,
                      labeled_at: str | None, start_s: float | None, end_s: float | None,
                      label_set: str | None) -> None:
        start_s, end_s = self._check_segment(clip, start_s, end_s)
        if self._has_label(clip, label, source, labeled_by, labeled_at, start_s, end_s):
            report.duplicates += 1
            return
        self.add_label(clip, label, source=source, labeled_by=labeled_by, labeled_at=labeled_at, start_s=start_s,
                       end_s=end_s, label_set=label_set)
        report.labels_added += 1
        if label not in report.labels:
            report.labels.append(label)

    def import_kinetics_csv(self, csv_path: str | os.PathLike, *, video_root: str | os.PathLike | None = None,
                            videos: Mapping[str, str | os.PathLike] | None = None, labeled_by: str | None = None,
                            label_set: str | None = None) -> ImportReport:
        """Import labels from a Kinetics-style CSV (ours or the official lists).

        A row's video is found, in this order: a clip already stored with the
        row's ``sha256`` (then ``start_s``/``end_s`` are its segment); a file
        whose stem is ``<youtube_id>_<time_start:06d>_<time_end:06d>`` among
        ``videos`` (``{file stem: path}``, e.g. uploaded files) or under
        ``video_root`` (default: the CSV's folder), labelled as a whole. Rows
        keep their ``source``/``labeled_by``/``labeled_at`` when the CSV has
        them (else "person", ``labeled_by``, now); a row already in the store
        is skipped, so importing the same file twice adds nothing.
        """
        from videoapp.data.datasets import VIDEO_EXTENSIONS, kinetics_stem

        csv_path = Path(csv_path)
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                need = [k for k in ("label", "youtube_id", "time_start", "time_end") if k not in fields]
                if need:
                    raise StoreError(f"{display_name(csv_path.name)}: not a Kinetics CSV "
                                     f"(missing columns: {', '.join(need)})")
                rows = list(reader)
        except UnicodeDecodeError:
            raise StoreError(f"{display_name(csv_path.name)}: not a text CSV file") from None
        except csv.Error as exc:
            raise StoreError(f"{display_name(csv_path.name)}: unreadable CSV ({exc})") from None
        index: dict[str, Path] = {}
        root = Path(video_root) if video_root is not None else (None if videos is not None else csv_path.parent)
        if root is not None and root.is_dir():
            for dirpath, _, filenames in os.walk(root):
                for fn in sorted(filenames):
                    stem, ext = os.path.splitext(fn)
                    if ext.lower() in VIDEO_EXTENSIONS:
                        index.setdefault(stem, Path(dirpath) / fn)
        for stem, p in (videos or {}).items():
            index[stem] = Path(p)
        who = check_who(labeled_by)
        report = ImportReport()
        stored: dict[str, ClipRecord] = {}
        for line, r in enumerate(rows, start=2):
            try:
                label = check_label(r.get("label") or "")
            except StoreError as exc:
                raise StoreError(f"{display_name(csv_path.name)}:{line}: {exc}") from None
            source = (r.get("source") or "person").strip()
            if source not in SOURCES:
                raise StoreError(f"{display_name(csv_path.name)}:{line}: source {source!r} is not model or person")
            row_who = check_who(r.get("labeled_by") or who)
            row_at = (r.get("labeled_at") or "").strip() or None
            clip = None
            start_s = end_s = None
            sha = (r.get("sha256") or "").strip().lower()
            if len(sha) == 64:
                clip = self.get_clip(sha)
                if clip is not None:
                    start_s, end_s = r.get("start_s") or None, r.get("end_s") or None
            if clip is None:
                try:
                    stem = kinetics_stem(r["youtube_id"], r["time_start"], r["time_end"])
                except (TypeError, ValueError):
                    raise StoreError(f"{display_name(csv_path.name)}:{line}: bad time_start/time_end") from None
                path = index.get(stem)
                if path is None:
                    report.missing += 1
                    continue
                if stem not in stored:
                    try:
                        stored[stem], created = self.add_clip(path, original_name=path.name, added_by=who)
                    except UploadRefused as exc:
                        report.refused.append(str(exc))
                        continue
                    report.clips_added += int(created)
                clip = stored[stem]
            self._import_label(report, clip, label, source=source, labeled_by=row_who, labeled_at=row_at,
                               start_s=start_s, end_s=end_s, label_set=label_set)
        if label_set and report.labels:
            existing = self.get_label_set(label_set)
            merged = list(existing.labels) if existing else []
            merged += [lab for lab in report.labels if lab not in merged]
            self.save_label_set(label_set, merged, source="import", created_by=who)
        return report

    def import_folder(self, root: str | os.PathLike, *, labeled_by: str | None = None,
                      label_set: str | None = None) -> ImportReport:
        """Import a class-per-folder tree: every video under ``root/<label>/`` gets that label (whole clip)."""
        from videoapp.data.datasets import VIDEO_EXTENSIONS

        root = Path(root)
        if not root.is_dir():
            raise StoreError(f"{root}: no such folder")
        who = check_who(labeled_by)
        report = ImportReport()
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = check_label(folder.name)
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                for fn in sorted(filenames):
                    if os.path.splitext(fn)[1].lower() not in VIDEO_EXTENSIONS:
                        continue
                    try:
                        clip, created = self.add_clip(Path(dirpath) / fn, original_name=fn, added_by=who)
                    except UploadRefused as exc:
                        report.refused.append(str(exc))
                        continue
                    report.clips_added += int(created)
                    self._import_label(report, clip, label, source="person", labeled_by=who, labeled_at=None,
                                       start_s=None, end_s=None, label_set=label_set)
        if label_set and report.labels:
            self.save_label_set(label_set, report.labels, source="import", created_by=who)
        return report


__all__ = [
    "LabelStore", "ClipRecord", "LabelRecord", "LabelSet", "QueueItem", "ImportReport", "StoreError",
    "UploadRefused", "default_data_dir", "check_label", "check_who", "parse_label_list", "display_name", "now_iso",
    "BoxRecord", "BOX_SOURCES", "check_box", "check_actions", "check_person_id", "check_box_source", "check_timestamp",
]
